package main

// Typed configuration of a role (edge, core): one struct per role whose fields carry
// the setting's YAML key (which is also its flag name and, in capitals, its
// BROKER_* environment variable), its help category and usage. From it come the
// flags, the YAML decoding, the environment, `broker config check` and the required
// check, so a setting is declared once.
//
// Merge order, lowest first: the role package's defaults, the --config file, the
// environment, the command line. Required settings are checked after all four,
// with one error naming every missing one.

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/salt-broker/salt-broker/internal/setting"
)

// Help categories (urfave/cli's flag categories), in the order --help shows them.
const (
	catConnection = "Connection"
	catTLS        = "TLS"
	catLimits     = "Limits"
	catAdmin      = "Admin"
	catLogging    = "Logging"
)

// source says where a setting's effective value came from, lowest precedence first.
type source int

const (
	fromDefault source = iota
	fromFile
	fromEnv
	fromFlag
)

func (s source) String() string {
	return [...]string{"default", "file", "env", "flag"}[s]
}

// field is one setting of a role: a field of its settings struct.
type field struct {
	key      string // YAML key and flag name
	category string
	usage    string
	required bool
	credPath bool // a path resolved against $CREDENTIALS_DIRECTORY (credentials.go)
	index    int
	typ      reflect.Type
}

func (f field) env() string { return envName(f.key) }

func envName(key string) string {
	return "BROKER_" + strings.ToUpper(strings.ReplaceAll(key, "-", "_"))
}

// fieldsOf reads the settings struct's tags:
//
//	yaml:"key"  cat:"category"  usage:"help text"  required:""  cred:""
func fieldsOf(t reflect.Type) []field {
	var fs []field
	for i := range t.NumField() {
		sf := t.Field(i)
		key := strings.Split(sf.Tag.Get("yaml"), ",")[0]
		if key == "" || key == "-" {
			continue
		}
		_, req := sf.Tag.Lookup("required")
		_, cred := sf.Tag.Lookup("cred")
		fs = append(fs, field{key: key, category: sf.Tag.Get("cat"), usage: sf.Tag.Get("usage"),
			required: req, credPath: cred, index: i, typ: sf.Type})
	}
	return fs
}

var durationType = reflect.TypeFor[time.Duration]()

// flagsFor makes the command-line flags of a role's settings, each showing the
// default the code uses. They have no EnvVars: the environment is read by load,
// which must tell it apart from the command line to report each value's source;
// the help still names each variable (envHint).
func flagsFor(fields []field, defaults reflect.Value) []cli.Flag {
	var flags []cli.Flag
	for _, f := range fields {
		d := defaults.Field(f.index)
		usage := f.usage
		if f.required {
			usage += " (required)"
		}
		usage += " [$" + f.env() + "]"
		var fl cli.Flag
		switch {
		case f.typ == durationType:
			fl = &cli.DurationFlag{Name: f.key, Value: time.Duration(d.Int()), Usage: usage, Category: f.category}
		case f.typ.Kind() == reflect.String:
			fl = &cli.StringFlag{Name: f.key, Value: d.String(), Usage: usage, Category: f.category, TakesFile: f.credPath}
		case f.typ.Kind() == reflect.Int:
			fl = &cli.IntFlag{Name: f.key, Value: int(d.Int()), Usage: usage, Category: f.category}
		case f.typ.Kind() == reflect.Int64:
			fl = &cli.Int64Flag{Name: f.key, Value: d.Int(), Usage: usage, Category: f.category}
		case f.typ.Kind() == reflect.Bool:
			fl = &cli.BoolFlag{Name: f.key, Value: d.Bool(), Usage: usage, Category: f.category}
		case f.typ.Kind() == reflect.Slice && f.typ.Elem().Kind() == reflect.String:
			var v *cli.StringSlice
			if d.Len() > 0 {
				v = cli.NewStringSlice(d.Interface().(nameList)...)
			}
			fl = &cli.StringSliceFlag{Name: f.key, Value: v, Usage: usage + " (repeat or comma-separate)", Category: f.category}
		default:
			panic("config: no flag for " + f.typ.String()) // a programming error, caught by every test
		}
		flags = append(flags, fl)
	}
	return flags
}

// nameList is a list of names: a YAML list, or one comma-separated string.
type nameList []string

func (l *nameList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*l = splitList(n.Value)
		return nil
	case yaml.SequenceNode:
		var s []string
		if err := n.Decode(&s); err != nil {
			return err
		}
		*l = s
		return nil
	}
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: cannot unmarshal %s into a list of names", n.Line, kindName(n))}}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// role is what load needs to know about edge or core.
type role struct {
	name     string
	defaults func() reflect.Value // a settings struct holding the role package's defaults
	legacy   map[string]legacyRule
	finish   func(*loaded) // role-specific fixes once merged (the edge's core port)
}

func (r role) fields() []field { return fieldsOf(r.defaults().Type()) }

func (r role) flags() []cli.Flag { return flagsFor(r.fields(), r.defaults()) }

// loaded is a role's merged configuration.
type loaded struct {
	role     role
	path     string        // --config, "" if none
	settings reflect.Value // the settings struct (addressable)
	src      map[string]source
	line     map[string]int    // file line of each key from the file
	how      map[string]string // how a value was rewritten ("relative to $CREDENTIALS_DIRECTORY")
	notes    []note            // said at info once the logger is set up
	warns    []note            // said at warn
}

// note is a log line for later: the logger's level and format are settings too.
type note struct {
	msg  string
	args []any
}

// problems is a configuration refused for one or more reasons, all reported at
// once: the operator fixes the file in one go instead of one key per restart.
type problems struct {
	where string // "--config /etc/salt-broker/edge.yaml"
	list  []string
}

func (p *problems) add(format string, args ...any) {
	p.list = append(p.list, fmt.Sprintf(format, args...))
}

func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	return usageError{p}
}

func (p *problems) Error() string {
	prefix := ""
	if p.where != "" {
		prefix = p.where + ": "
	}
	if len(p.list) == 1 {
		return prefix + p.list[0]
	}
	return fmt.Sprintf("%s%d problems:\n  %s", prefix, len(p.list), strings.Join(p.list, "\n  "))
}

// multiLine reports whether err is a list the operator reads one line each.
func multiLine(err error) bool {
	var p *problems
	return errors.As(err, &p) && len(p.list) > 1
}

// load merges defaults, --config, environment and command line for r.
func load(c *cli.Context, r role) (*loaded, error) {
	l := &loaded{role: r, path: c.String("config"), settings: r.defaults(),
		src: map[string]source{}, line: map[string]int{}, how: map[string]string{}}
	if l.path == "" {
		l.path = os.Getenv("BROKER_CONFIG")
	}
	// reflect.Value of a struct from a function is not addressable: copy it into one that is.
	v := reflect.New(l.settings.Type()).Elem()
	v.Set(l.settings)
	l.settings = v
	fields := r.fields()
	var fileProbs, envProbs problems
	if l.path != "" {
		fileProbs.where = "--config " + l.path
		l.loadFile(fields, &fileProbs)
	}
	for _, f := range fields {
		raw, ok := os.LookupEnv(f.env())
		if !ok || raw == "" {
			continue
		}
		if err := setFromString(l.settings.Field(f.index), raw); err != nil {
			envProbs.add("%s=%s: %s (the environment's --%s)", f.env(), raw, err, f.key)
			continue
		}
		l.src[f.key] = fromEnv
	}
	for _, f := range fields {
		// The command's own flag, else the same flag before the command
		// (`broker --log-level debug edge`).
		for _, ctx := range c.Lineage() {
			if ctx.IsSet(f.key) {
				setFromFlag(l.settings.Field(f.index), ctx, f.key)
				l.src[f.key] = fromFlag
				break
			}
		}
	}
	// One error for everything: the file's problems (in line order), the
	// environment's, then what is still missing once all are merged.
	sort.SliceStable(fileProbs.list, func(i, j int) bool { return lineOf(fileProbs.list[i]) < lineOf(fileProbs.list[j]) })
	all := problems{list: append(append([]string{}, prefixed(fileProbs)...), envProbs.list...)}
	if len(envProbs.list) == 0 {
		all = fileProbs // the file's name once, in front
	}
	if len(all.list) == 0 {
		if m := l.missing(fields); m != "" {
			all.where = ""
			all.add("%s", m)
		}
	}
	if err := all.err(); err != nil {
		return nil, err
	}
	l.resolvePaths(fields)
	if r.finish != nil {
		r.finish(l)
	}
	if a := l.get("admin").String(); a != "" && !isLoopback(a) {
		l.warns = append(l.warns, note{"admin endpoint is not on loopback: /metrics, /status and /readyz answer anyone who reaches it, without authentication (debug endpoints stay off)",
			[]any{"admin", a, "set_by", l.sourceOf("admin")}})
	}
	return l, nil
}

func lineOf(problem string) int {
	if m := reLine.FindStringSubmatch(problem); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

func prefixed(p problems) []string {
	out := make([]string, len(p.list))
	for i, s := range p.list {
		out[i] = p.where + ": " + s
	}
	return out
}

// missing names every required setting still unset, and where each can come from.
func (l *loaded) missing(fields []field) string {
	var m []string
	for _, f := range fields {
		if f.required && l.settings.Field(f.index).IsZero() {
			m = append(m, fmt.Sprintf("%s (--%s, $%s or %q in the --config file)", f.key, f.key, f.env(), f.key+":"))
		}
	}
	switch len(m) {
	case 0:
		return ""
	case 1:
		return "missing required setting " + m[0]
	}
	return "missing required settings " + strings.Join(m, ", ")
}

var (
	reUnknownKey = regexp.MustCompile(`^line (\d+): field (.+) not found in type .*$`)
	reWrongType  = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+)(?: `(.*)`)? into (.+)$")
	reLine       = regexp.MustCompile(`^line (\d+): (.*)$`)
)

// loadFile decodes the --config file into l.settings: unknown keys refused
// (KnownFields), the old salt-broker's keys mapped or refused, every problem kept.
func (l *loaded) loadFile(fields []field, probs *problems) {
	b, err := os.ReadFile(l.path)
	if err != nil {
		probs.add("%v", unwrapPathError(err))
		return
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		probs.add("%s", strings.TrimPrefix(err.Error(), "yaml: "))
		return
	}
	if doc.Kind == 0 || len(doc.Content) == 0 || doc.Content[0].Tag == "!!null" {
		return // an empty file: every value from elsewhere
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		probs.add("line %d: want a mapping of key: value, not %s", top.Line, kindName(top))
		return
	}
	keyAt := map[int]string{} // line of each key, to name the key of a type error
	var keyLines []int
	for i := 0; i+1 < len(top.Content); i += 2 {
		k := top.Content[i]
		l.line[k.Value] = k.Line
		keyAt[k.Line] = k.Value
		keyLines = append(keyLines, k.Line)
	}
	sort.Ints(keyLines)
	keyOfLine := func(line int) string {
		i := sort.SearchInts(keyLines, line+1) - 1
		if i < 0 {
			return ""
		}
		return keyAt[keyLines[i]]
	}

	// Decode into the settings plus one yaml.Node per old key, so KnownFields
	// refuses only keys that are neither.
	legacyNames := make([]string, 0, len(l.role.legacy))
	for k := range l.role.legacy {
		legacyNames = append(legacyNames, k)
	}
	sort.Strings(legacyNames)
	lf := make([]reflect.StructField, len(legacyNames))
	for i, k := range legacyNames {
		lf[i] = reflect.StructField{Name: fmt.Sprintf("L%d", i), Type: reflect.TypeFor[yaml.Node](), Tag: reflect.StructTag(`yaml:"` + k + `"`)}
	}
	wrapT := reflect.StructOf([]reflect.StructField{
		{Name: "S", Type: l.settings.Type(), Tag: `yaml:",inline"`},
		{Name: "L", Type: reflect.StructOf(lf), Tag: `yaml:",inline"`},
	})
	wrap := reflect.New(wrapT)
	wrap.Elem().Field(0).Set(l.settings)
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(wrap.Interface()); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			probs.add("%s", strings.TrimPrefix(err.Error(), "yaml: "))
			return
		}
		for _, e := range te.Errors {
			probs.add("%s", l.explainYAML(e, keyOfLine))
		}
	}
	l.settings.Set(wrap.Elem().Field(0))
	for _, f := range fields {
		if _, ok := l.line[f.key]; ok {
			l.src[f.key] = fromFile
		}
	}
	for i, k := range legacyNames {
		n := wrap.Elem().Field(1).Field(i).Addr().Interface().(*yaml.Node)
		if n.Kind == 0 {
			continue
		}
		l.applyLegacy(fields, k, l.role.legacy[k], n, probs)
	}
}

// explainYAML rewrites yaml.v3's wording into the key, the value and the type wanted.
func (l *loaded) explainYAML(e string, keyOfLine func(int) string) string {
	if m := reUnknownKey.FindStringSubmatch(e); m != nil {
		key := m[2]
		for _, other := range []role{edgeRole(), coreRole()} {
			if other.name == l.role.name {
				continue
			}
			for _, f := range other.fields() {
				if f.key == key {
					return fmt.Sprintf("line %s: %q is a setting of %s, not of %s (see 'broker config example %s')", m[1], key, article(other.name), article(l.role.name), l.role.name)
				}
			}
		}
		return fmt.Sprintf("line %s: unknown key %q (see 'broker config example %s' for every key)", m[1], key, l.role.name)
	}
	if m := reWrongType.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		if m[3] == "" { // a list or a mapping: yaml.v3 does not quote it
			return fmt.Sprintf("line %s: %s: %s; want %s", m[1], keyOfLine(line), yamlTypeName(m[2]), wantType(m[4]))
		}
		return fmt.Sprintf("line %s: %s: %q is %s; want %s", m[1], keyOfLine(line), m[3], yamlTypeName(m[2]), wantType(m[4]))
	}
	if m := reLine.FindStringSubmatch(e); m != nil {
		return fmt.Sprintf("line %s: %s", m[1], m[2])
	}
	return e
}

func yamlTypeName(tag string) string {
	switch tag {
	case "str":
		return "a string"
	case "int":
		return "a whole number"
	case "float":
		return "a decimal number"
	case "bool":
		return "true or false"
	case "seq":
		return "a list"
	case "map":
		return "a mapping"
	case "null":
		return "empty"
	}
	return "!!" + tag
}

func wantType(goType string) string {
	switch goType {
	case "int", "int64":
		return "a whole number (bytes or a count, no unit)"
	case "time.Duration":
		return "a duration such as 500ms, 30s, 5m or 1h"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "[]string", "main.nameList":
		return "a list of names"
	}
	return goType
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	return "a single value"
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}

func (l *loaded) field(fields []field, key string) (field, bool) {
	for _, f := range fields {
		if f.key == key {
			return f, true
		}
	}
	return field{}, false
}

// setFromString parses an environment variable the way its flag would be.
func setFromString(v reflect.Value, raw string) error {
	switch {
	case v.Type() == durationType:
		d, err := time.ParseDuration(raw)
		if err != nil {
			return errors.New("want a duration such as 500ms, 30s, 5m or 1h")
		}
		v.SetInt(int64(d))
	case v.Kind() == reflect.String:
		v.SetString(raw)
	case v.Kind() == reflect.Int, v.Kind() == reflect.Int64:
		n, err := strconv.ParseInt(raw, 0, 64)
		if err != nil || (v.Kind() == reflect.Int && (n > math.MaxInt || n < math.MinInt)) {
			if errors.Is(err, strconv.ErrRange) {
				return errors.New("out of range")
			}
			return errors.New("want a whole number")
		}
		v.SetInt(n)
	case v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return errors.New("want true or false")
		}
		v.SetBool(b)
	case v.Kind() == reflect.Slice:
		v.Set(reflect.ValueOf(nameList(splitList(raw))))
	default:
		return fmt.Errorf("cannot set %s", v.Type())
	}
	return nil
}

func setFromFlag(v reflect.Value, c *cli.Context, name string) {
	switch {
	case v.Type() == durationType:
		v.SetInt(int64(c.Duration(name)))
	case v.Kind() == reflect.String:
		v.SetString(c.String(name))
	case v.Kind() == reflect.Int:
		v.SetInt(int64(c.Int(name)))
	case v.Kind() == reflect.Int64:
		v.SetInt(c.Int64(name))
	case v.Kind() == reflect.Bool:
		v.SetBool(c.Bool(name))
	case v.Kind() == reflect.Slice:
		var out []string
		for _, s := range c.StringSlice(name) {
			out = append(out, splitList(s)...)
		}
		v.Set(reflect.ValueOf(nameList(out)))
	}
}

// resolvePaths makes relative certificate and key paths absolute. Under systemd
// with LoadCredential=, $CREDENTIALS_DIRECTORY holds the files the unit passed in,
// so a relative name (ca.crt) is looked up there: the same config file works in a
// hardened unit whose user cannot read /etc/salt-broker/*.key. Without it, a
// relative path from the file is relative to the file's directory (so
// `broker edge --config /etc/salt-broker/edge.yaml` finds /etc/salt-broker/ca.crt),
// and one from a flag or the environment to the working directory, as usual.
func (l *loaded) resolvePaths(fields []field) {
	creds := os.Getenv("CREDENTIALS_DIRECTORY")
	for _, f := range fields {
		if !f.credPath {
			continue
		}
		v := l.settings.Field(f.index)
		p := v.String()
		if p == "" || filepath.IsAbs(p) {
			continue
		}
		switch {
		case creds != "":
			v.SetString(filepath.Join(creds, p))
			l.how[f.key] = p + " in $CREDENTIALS_DIRECTORY"
		case l.src[f.key] == fromFile:
			dir, err := filepath.Abs(filepath.Dir(l.path))
			if err != nil {
				dir = filepath.Dir(l.path)
			}
			v.SetString(filepath.Join(dir, p))
			l.how[f.key] = p + " beside the config file"
		}
	}
}

// isLoopback reports whether an admin address listens on loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// get returns the value of a setting by key.
func (l *loaded) get(key string) reflect.Value {
	f, ok := l.field(l.role.fields(), key)
	if !ok {
		panic("config: no setting " + key)
	}
	return l.settings.Field(f.index)
}

// sourceOf says where key's value came from, for `config check` and errors.
func (l *loaded) sourceOf(key string) string {
	s := l.src[key]
	switch s {
	case fromFile:
		if n, ok := l.line[key]; ok {
			return fmt.Sprintf("file (line %d)", n)
		}
		return "file"
	case fromEnv:
		return "env ($" + envName(key) + ")"
	case fromFlag:
		return "flag (--" + key + ")"
	}
	return s.String()
}

// from says where a refused value came from, for the error line: the flag's name
// alone does not tell an operator which of file, environment or command line to fix.
func (l *loaded) from(key string) string {
	switch l.src[key] {
	case fromFile:
		if n, ok := l.line[key]; ok {
			return fmt.Sprintf(" (from --config %s, line %d)", l.path, n)
		}
		return " (from --config " + l.path + ")"
	case fromEnv:
		return " (from $" + envName(key) + ")"
	}
	return ""
}

// explain adds to a refused setting (a *setting.Error naming its flag) where its
// value came from.
func (l *loaded) explain(err error) error {
	var se *setting.Error
	if !errors.As(err, &se) || !strings.HasPrefix(se.Name, "--") {
		return err
	}
	if w := l.from(strings.TrimPrefix(se.Name, "--")); w != "" {
		return fmt.Errorf("%w%s", err, w)
	}
	return err
}

// hasPort reports whether addr is host:port (an IPv6 literal alone is not).
func hasPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port != ""
}

func trimBrackets(h string) string { return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]") }

func article(roleName string) string {
	if roleName == "edge" {
		return "an edge"
	}
	return "a core"
}
