package saltmsg

import (
	"os"
	"testing"
)

// The testdata bodies were packed by Python's msgpack (the library Salt uses), shaped
// as salt-wire-facts.md §2 describes.
func TestParseSaltShapes(t *testing.T) {
	cases := []struct {
		file  string
		class Class
		id    string
		cmd   string
	}{
		{"auth.msgpack", ClassAuth, "m1", "_auth"},
		{"aes.msgpack", ClassAES, "minion-7", ""},
		{"clear.msgpack", ClassClear, "", "_pillar"},
	}
	for _, c := range cases {
		b, err := os.ReadFile("testdata/" + c.file)
		if err != nil {
			t.Fatal(err)
		}
		env, err := Parse(b)
		if err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		if env.Class != c.class || env.ID != c.id || env.Cmd != c.cmd {
			t.Errorf("%s: got %+v", c.file, env)
		}
		if c.class == ClassAES && env.LoadLen != 300+3 { // bin8 header: 0xc5 + 2-byte length for 300 bytes
			t.Errorf("%s: load length %d", c.file, env.LoadLen)
		}
	}
}

func TestParseRejectsNonMaps(t *testing.T) {
	for _, b := range [][]byte{nil, {0x01}, {0x91, 0x01}, {0xdf, 0xff, 0xff, 0xff, 0xff}, {0x81, 0xa3, 'e', 'n', 'c'}} {
		if env, err := Parse(b); err == nil {
			t.Errorf("%x: want an error, got %+v", b, env)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, n := range []string{"auth", "aes", "clear"} {
		b, err := os.ReadFile("testdata/" + n + ".msgpack")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := Parse(b)
		if err == nil && env.LoadLen > len(b) {
			t.Fatalf("load length %d beyond body %d", env.LoadLen, len(b))
		}
	})
}
