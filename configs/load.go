package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize bounds the size of a configuration file.
const MaxFileSize = 1 << 20

// LookupFunc looks up an environment variable for ${NAME} expansion, like
// os.LookupEnv.
type LookupFunc func(name string) (value string, ok bool)

// Load reads the configuration file at path, decodes it strictly on top of
// Defaults(), expands ${NAME} references from the process environment and
// validates the result. An empty path means the embedded defaults only.
// Relative file names in the file are resolved against the file's
// directory (ResolvePaths).
//
// The returned error lists every problem found, one per line (errors.Join):
// unknown or duplicate keys and values of the wrong type are reported with
// their line; rule violations come from Validate. Load reads only path; it
// never opens the files the configuration refers to.
func Load(path string) (*Config, error) { return LoadWith(path, os.LookupEnv) }

// LoadWith is Load with lookup in place of os.LookupEnv.
func LoadWith(path string, lookup LookupFunc) (*Config, error) {
	if path == "" {
		cfg := Defaults()
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("configs: embedded defaults: %w", err)
		}
		return cfg, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("configs: read %s: %w (pass --config FILE or set PASSGATE_CONFIG to a readable file)", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("configs: read %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("configs: read %s: larger than %d bytes; is this the configuration file?", path, MaxFileSize)
	}
	cfg, err := Parse(data, lookup)
	if err != nil {
		return nil, fmt.Errorf("configs: %s: %w", path, err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("configs: %s: directory: %w", path, err)
	}
	cfg.ResolvePaths(dir)
	return cfg, nil
}

// Parse decodes one YAML document on top of Defaults(), strictly, expands
// ${NAME} references with lookup (nil: no variable is set) and validates the
// result. Empty input yields the defaults.
func Parse(data []byte, lookup LookupFunc) (*Config, error) {
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // no effect on a Node; the walk below enforces it
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			cfg := Defaults()
			if err := cfg.Validate(); err != nil {
				return nil, err
			}
			return cfg, nil
		}
		if line, col, ok := firstTab(data); ok {
			return nil, errors.Join(fmt.Errorf("line %d, column %d: a tab: YAML does not allow tabs for indentation; indent with spaces", line, col))
		}
		return nil, errors.Join(fmt.Errorf("not valid YAML: %w", err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.Join(errors.New("more than one YAML document (a second \"---\"): keep one document per file"))
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return Defaults(), nil
		}
		doc = doc.Content[0]
	}
	if isNull(doc) {
		cfg := Defaults()
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		return cfg, nil
	}
	if doc.Kind != yaml.MappingNode {
		return nil, errors.Join(fmt.Errorf("line %d: the file must be a mapping of keys such as \"store:\" and \"imap:\"", doc.Line))
	}
	w := &walker{lookup: lookup}
	w.walk(doc, reflect.TypeFor[Config](), "")
	if len(w.errs) > 0 {
		return nil, errors.Join(w.errs...)
	}
	cfg := Defaults()
	if err := doc.Decode(cfg); err != nil {
		return nil, errors.Join(fmt.Errorf("decode: %w", err))
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// firstTab finds the first tab that begins a line or follows the
// indentation (where YAML refuses it) and returns its line and column,
// both counted from 1.
func firstTab(data []byte) (line, col int, ok bool) {
	for i, l := range strings.Split(string(data), "\n") {
		for j, r := range l {
			if r == '\t' {
				return i + 1, j + 1, true
			}
			if r != ' ' && r != '-' {
				break
			}
		}
	}
	return 0, 0, false
}

// walker checks a YAML tree against the Config type before it is decoded:
// unknown keys, duplicate keys and values of the wrong shape or type are
// collected with their full key and line, and ${NAME} references in values
// are expanded in place.
type walker struct {
	lookup LookupFunc
	errs   []error
}

func (w *walker) errorf(n *yaml.Node, path, format string, args ...any) {
	w.errs = append(w.errs, fmt.Errorf("line %d: %s: %s", n.Line, path, fmt.Sprintf(format, args...)))
}

var durationType = reflect.TypeFor[Duration]()

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		w.errorf(n, path, "YAML anchors and aliases are not supported; write the value out")
		return
	}
	if isNull(n) {
		return // an empty value keeps the default
	}
	switch {
	case t == durationType:
		if w.scalar(n, path) {
			w.check(n, t, path, "must be a duration such as 2s, 10m or 7d")
		}
	case t.Kind() == reflect.Struct:
		w.mapping(n, t, path)
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.errorf(n, path, "must be a list, e.g. [a, b]")
			return
		}
		for i, item := range n.Content {
			w.walk(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	case t.Kind() == reflect.String:
		if w.scalar(n, path) {
			w.check(n, t, path, "must be a text value")
		}
	case t.Kind() == reflect.Bool:
		if w.scalar(n, path) {
			w.check(n, t, path, "must be true or false")
		}
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		if w.scalar(n, path) {
			w.check(n, t, path, "must be a whole number")
		}
	default:
		w.errorf(n, path, "configs cannot read a %s (a bug in passgate)", t)
	}
}

// scalar reports whether n is a single value and expands ${NAME} in it.
func (w *walker) scalar(n *yaml.Node, path string) bool {
	if n.Kind != yaml.ScalarNode {
		w.errorf(n, path, "must be a single value, not a list or mapping")
		return false
	}
	if !strings.Contains(n.Value, "$") || n.Tag == "!!binary" {
		return true
	}
	v, err := expand(n.Value, w.lookup)
	if err != nil {
		w.errorf(n, path, "%v", err)
		return false
	}
	if v != n.Value {
		n.Value = v
		// Let the expanded text resolve again ("40" becomes a number),
		// unless it was quoted on purpose.
		if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 {
			n.Tag = ""
		}
	}
	return true
}

// check decodes n alone into a new value of type t.
func (w *walker) check(n *yaml.Node, t reflect.Type, path, expected string) {
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		w.errorf(n, fmt.Sprintf("%s (%q)", path, n.Value), "%s", expected)
	}
}

func (w *walker) mapping(n *yaml.Node, t reflect.Type, path string) {
	what := path
	if what == "" {
		what = "the file"
	}
	if n.Kind != yaml.MappingNode {
		w.errorf(n, what, "must be a mapping of keys (key: value)")
		return
	}
	fields := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			fields[name] = f
		}
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Anchor != "" {
			w.errorf(k, what, "keys must be plain names")
			continue
		}
		key := k.Value
		full := join(path, key)
		if key == "<<" {
			w.errorf(k, full, "merge keys (<<) are not supported; write the keys out")
			continue
		}
		if first, dup := seen[key]; dup {
			w.errorf(k, full, "duplicate key (first at line %d); keep one", first)
			continue
		}
		seen[key] = k.Line
		f, ok := fields[key]
		if !ok {
			w.errorf(k, full, "unknown key%s", suggest(key, fields))
			continue
		}
		w.walk(v, f.Type, full)
	}
}

// suggest names the closest known key, or lists them all.
func suggest(key string, fields map[string]reflect.StructField) string {
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	best, bestDist := "", 3
	for _, name := range names {
		if d := distance(strings.ToLower(key), name); d < bestDist {
			best, bestDist = name, d
		}
	}
	if best != "" {
		return fmt.Sprintf("; did you mean %s?", best)
	}
	return "; known keys here: " + strings.Join(names, ", ")
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// expand replaces ${NAME} with the value of the environment variable NAME.
// "$${" stands for a literal "${"; any other "$" is kept as it is. A
// reference to a variable that is not set is an error, so that a typo does
// not silently become an empty value.
func expand(s string, lookup LookupFunc) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$${"):
			b.WriteString("${")
			i += 3
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", errors.New("unterminated ${: write ${NAME}, or $${ for a literal ${")
			}
			name := s[i+2 : i+2+end]
			if !validEnvName(name) {
				return "", fmt.Errorf("${%s}: not a variable name (letters, digits and _)", name)
			}
			v, ok := lookup(name)
			if !ok {
				return "", fmt.Errorf("${%s}: environment variable %s is not set; set it or write the value out", name, name)
			}
			b.WriteString(v)
			i += 3 + end
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String(), nil
}

func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
