package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"reflect"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	hello := Hello{Version: Version, EdgeName: "site-a", EdgeSession: 7, CoreEpoch: 9, PubCursor: 1 << 40, Pending: 3, Conn: 2}
	pub := Pub{Seq: 42, Frames: [][]byte{[]byte("broadcast"), {}, bytes.Repeat([]byte{0xab}, 70000)}}
	req := Request{ID: 1<<63 + 5, Frames: [][]byte{[]byte("payload")}, MaxQueueAge: 29*time.Second + 250*time.Millisecond}
	ref := Refused{ID: 3, Code: RefusedBusy, Reason: "table full"}
	for _, r := range []struct {
		t Type
		b []byte
	}{{THello, hello.Encode()}, {TPub, pub.Encode()}, {TRequest, req.Encode()}, {TRefused, ref.Encode()}, {TAck, U64Body(11)}} {
		if err := Write(&buf, r.t, r.b); err != nil {
			t.Fatal(err)
		}
	}
	rd := NewReader(&buf, 1<<20)
	b, err := rd.Expect(THello)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeHello(b); err != nil || got != hello {
		t.Fatalf("hello: %+v %v", got, err)
	}
	b, _ = rd.Expect(TPub)
	if got, err := DecodePub(b); err != nil || got.Seq != 42 || !reflect.DeepEqual(got.Frames, pub.Frames) {
		t.Fatalf("pub: %v %v", got.Seq, err)
	}
	b, _ = rd.Expect(TRequest)
	if got, err := DecodeRequest(b); err != nil || got.ID != req.ID || !reflect.DeepEqual(got.Frames, req.Frames) || got.MaxQueueAge != req.MaxQueueAge {
		t.Fatalf("request: %+v %v", got, err)
	}
	b, _ = rd.Expect(TRefused)
	if got, err := DecodeRefused(b); err != nil || got != ref {
		t.Fatalf("refused: %+v %v", got, err)
	}
	b, _ = rd.Expect(TAck)
	if v, err := DecodeU64(b); err != nil || v != 11 {
		t.Fatalf("ack: %v %v", v, err)
	}
	if _, _, err := rd.Next(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
}

func TestReaderSkipsOversizeRecords(t *testing.T) {
	var buf bytes.Buffer
	_ = Write(&buf, TReply, Reply{ID: 77, Frames: [][]byte{bytes.Repeat([]byte("x"), 5000)}}.Encode())
	_ = Write(&buf, TAck, U64Body(5))
	rd := NewReader(&buf, 1000)
	typ, prefix, err := rd.Next()
	if !errors.Is(err, ErrTooLarge) || typ != TReply {
		t.Fatalf("want ErrTooLarge for the reply, got %s %v", typ, err)
	}
	if id := NewDecoder(prefix).U64(); id != 77 {
		t.Fatalf("prefix should hold the ID, got %d", id)
	}
	if b, err := rd.Expect(TAck); err != nil || len(b) != 8 {
		t.Fatalf("stream unusable after a skipped record: %v", err)
	}
	// A header claiming 4 GiB with no body behind it ends the stream, allocating nothing big.
	_, _, err = NewReader(bytes.NewReader([]byte{byte(TPub), 0xff, 0xff, 0xff, 0xff}), 1<<20).Next()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("want unexpected EOF, got %v", err)
	}
}

func TestTruncatedRecord(t *testing.T) {
	rec := Append(nil, TPub, Pub{Seq: 1, Frames: [][]byte{[]byte("abc")}}.Encode())
	_, _, err := NewReader(bytes.NewReader(rec[:len(rec)-1]), 1<<20).Next()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("want unexpected EOF, got %v", err)
	}
}

func TestMalformedBodies(t *testing.T) {
	cases := map[string][]byte{
		"empty":            {},
		"short seq":        {1, 2, 3},
		"huge frame count": append(U64Body(1), 0xff, 0xff, 0xff, 0xff, 0x0f),
		"frame past end":   append(U64Body(1), 1, 10, 'a'),
		"trailing":         append(Pub{Seq: 1, Frames: nil}.Encode(), 0),
	}
	for name, b := range cases {
		if _, err := DecodePub(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: want ErrMalformed, got %v", name, err)
		}
	}
}

// MaxQueueAge travels in whole milliseconds: a positive budget never rounds to 0
// (which says "none"), and what 32 bits cannot hold is clamped, not wrapped.
func TestRequestMaxQueueAge(t *testing.T) {
	for _, c := range []struct{ in, want time.Duration }{
		{0, 0},
		{-time.Second, 0},
		{time.Nanosecond, time.Millisecond},
		{1500 * time.Microsecond, 2 * time.Millisecond},
		{15 * time.Minute, 15 * time.Minute},
		{100 * 24 * time.Hour, math.MaxUint32 * time.Millisecond},
	} {
		got, err := DecodeRequest(Request{ID: 1, Frames: [][]byte{[]byte("x")}, MaxQueueAge: c.in}.Encode())
		if err != nil || got.MaxQueueAge != c.want {
			t.Errorf("MaxQueueAge %v: decoded %v %v, want %v", c.in, got.MaxQueueAge, err, c.want)
		}
	}
	// A version 1 request (no MaxQueueAge) does not decode: the reason the version
	// went to 2, and a core refuses an edge of another version at the hello.
	var e Encoder
	v1 := e.U64(1).Multipart([][]byte{[]byte("x")}).Body()
	if _, err := DecodeRequest(v1); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a version 1 request decoded: %v", err)
	}
}

func TestCloneFramesDetaches(t *testing.T) {
	body := Pub{Seq: 1, Frames: [][]byte{[]byte("a"), []byte("bc")}}.Encode()
	p, _ := DecodePub(body)
	c := CloneFrames(p.Frames)
	for i := range body {
		body[i] = 0
	}
	if string(c[0]) != "a" || string(c[1]) != "bc" {
		t.Fatalf("clone aliases the body: %q", c)
	}
	c[0] = append(c[0], 'x') // capped: must not overwrite c[1]
	if string(c[1]) != "bc" {
		t.Fatalf("append through a clone overwrote its neighbour: %q", c)
	}
}

// FuzzDecode feeds arbitrary streams to the reader and every body decoder: nothing
// may panic, and what decodes must survive encoding and decoding again.
func FuzzDecode(f *testing.F) {
	f.Add(Append(nil, TPub, Pub{Seq: 1, Frames: [][]byte{[]byte("t"), []byte("p")}}.Encode()))
	f.Add(Append(nil, THello, Hello{Version: 1, EdgeName: "e"}.Encode()))
	f.Add(Append(nil, THello, Hello{Version: Version, EdgeName: "e", EdgeSession: 5, Conn: 7}.Encode()))
	f.Add(Append(nil, TRequest, Request{ID: 2, Frames: [][]byte{{}}}.Encode()))
	f.Add(Append(nil, TRequest, Request{ID: 3, Frames: [][]byte{[]byte("x")}, MaxQueueAge: 30 * time.Second}.Encode()))
	f.Add(Append(nil, TRefused, Refused{ID: 2, Code: 1, Reason: "x"}.Encode()))
	f.Add([]byte{byte(TPub), 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := NewReader(bytes.NewReader(data), 1<<16)
		for i := 0; i < 64; i++ {
			typ, body, err := rd.Next()
			if err != nil {
				return
			}
			switch typ {
			case TPub:
				if m, err := DecodePub(body); err == nil {
					again, err := DecodePub(m.Encode())
					if err != nil || again.Seq != m.Seq || !reflect.DeepEqual(again.Frames, m.Frames) {
						t.Fatalf("pub does not survive re-encoding: %v", err)
					}
				}
			case TRequest:
				if m, err := DecodeRequest(body); err == nil {
					again, err := DecodeRequest(m.Encode())
					if err != nil || again.ID != m.ID || !reflect.DeepEqual(again.Frames, m.Frames) || again.MaxQueueAge != m.MaxQueueAge {
						t.Fatalf("request does not survive re-encoding: %v", err)
					}
				}
			case TReply:
				_, _ = DecodeReply(body)
			case THello:
				if m, err := DecodeHello(body); err == nil {
					if again, err := DecodeHello(m.Encode()); err != nil || again != m {
						t.Fatalf("hello does not survive re-encoding: %v", err)
					}
				}
			case THelloAck:
				_, _ = DecodeHelloAck(body)
			case TSubscribe:
				_, _ = DecodeSubscribe(body)
			case TGap:
				_, _ = DecodeGap(body)
			case TRefused:
				_, _ = DecodeRefused(body)
			case TCancelReply:
				_, _ = DecodeCancelReply(body)
			default:
				_, _ = DecodeU64(body)
			}
		}
	})
}

// The hello names the connection's slot in its edge session's pool, so the core
// replaces only the connection of that slot. A hello without it (this morning's
// version 2, unreleased) does not decode: the field is part of version 2.
func TestHelloConnSlot(t *testing.T) {
	h := Hello{Version: Version, EdgeName: "e", EdgeSession: 9, Conn: 3}
	if got, err := DecodeHello(h.Encode()); err != nil || got.Conn != 3 {
		t.Fatalf("hello slot: %+v %v", got, err)
	}
	var e Encoder
	old := e.U32(Version).String("e").U64(9).U64(0).U64(0).U32(0).Body()
	if _, err := DecodeHello(old); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a hello without a slot decoded: %v", err)
	}
}

// trickle yields the header of a record declaring size bytes, then the first bytes
// of its body, then blocks on more (io.ErrNoProgress after that, as a stalled peer).
type trickle struct{ data []byte }

func (t *trickle) Read(p []byte) (int, error) {
	if len(t.data) == 0 {
		return 0, io.ErrNoProgress
	}
	n := copy(p, t.data)
	t.data = t.data[n:]
	return n, nil
}

// A header declaring the maximum does not make the reader allocate it before the
// bytes arrive: what a stalled peer pins follows what it sent.
func TestReaderBufferFollowsWhatArrived(t *testing.T) {
	const declared = 64 << 20
	hdr := Append(nil, TRequest, nil)
	binary.BigEndian.PutUint32(hdr[1:], declared)
	rd := NewReader(&trickle{data: append(hdr, make([]byte, 100)...)}, declared)
	if _, _, err := rd.Next(); !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("a stalled body: %v", err)
	}
	if c := cap(rd.buf); c > growStep {
		t.Errorf("buffer of %d bytes for 100 received: want at most %d", c, growStep)
	}
	// A whole large record still reads, and its buffer is kept for the next.
	body := bytes.Repeat([]byte{7}, 3<<20)
	rd = NewReader(bytes.NewReader(Append(Append(nil, TReply, body), TReply, []byte("x"))), declared)
	if _, got, err := rd.Next(); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("3 MiB record: %v, %d bytes", err, len(got))
	}
	if _, got, err := rd.Next(); err != nil || string(got) != "x" {
		t.Fatalf("after it: %q %v", got, err)
	}
}
