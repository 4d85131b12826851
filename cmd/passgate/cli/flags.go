package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// cmdFlags is the flag set of one subcommand with what its usage shows.
type cmdFlags struct {
	*flag.FlagSet
	path     string // "user add"
	synopsis string // "NAME [--mfa STATE]"
	help     string // one paragraph
}

// newFlags returns an empty flag set for the command path.
func newFlags(path, synopsis, help string) *cmdFlags {
	fs := flag.NewFlagSet("passgate "+path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &cmdFlags{FlagSet: fs, path: path, synopsis: synopsis, help: help}
}

// configFlag adds the --config flag that every command reading the store has.
func (f *cmdFlags) configFlag() *string {
	return f.String("config", "", "configuration `FILE` (default $PASSGATE_CONFIG, then ./passgate.yaml, then built-in defaults)")
}

func (f *cmdFlags) usage(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: passgate %s %s\n\n%s\n", f.path, f.synopsis, f.help)
	first := true
	f.VisitAll(func(fl *flag.Flag) {
		if first {
			b.WriteString("\nFlags:\n")
			first = false
		}
		name, usage := flag.UnquoteUsage(fl)
		if name == "" {
			fmt.Fprintf(&b, "  --%s\n", fl.Name)
		} else {
			fmt.Fprintf(&b, "  --%s %s\n", fl.Name, name)
		}
		fmt.Fprintf(&b, "        %s\n", usage)
	})
	io.WriteString(w, b.String())
}

// parse parses args, with flags before, between or after the positional
// arguments ("--" ends the flags), and checks that between min and max
// positional arguments (max < 0: any number) were given. When ok is false
// the command must return code: 0 after --help, 2 after a usage error.
func (e *env) parse(f *cmdFlags, args []string, min, max int) (pos []string, code int, ok bool) {
	f.VisitAll(func(fl *flag.Flag) { fl.Value = &once{Value: fl.Value, name: fl.Name} })
	for {
		err := f.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			f.usage(e.Stdout)
			return nil, exitOK, false
		}
		if err != nil {
			return nil, e.usageError(f.path, strings.TrimPrefix(err.Error(), "flag: ")), false
		}
		rest := f.Args()
		if len(rest) == 0 {
			break
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	switch {
	case len(pos) < min:
		return nil, e.usageError(f.path, "missing "+missingArg(f.synopsis, len(pos))), false
	case max >= 0 && len(pos) > max:
		return nil, e.usageError(f.path, fmt.Sprintf("unexpected argument %q", pos[max])), false
	}
	return pos, exitOK, true
}

// missingArg names the n-th positional argument of a synopsis.
func missingArg(synopsis string, n int) string {
	i := 0
	for _, w := range strings.Fields(synopsis) {
		if strings.HasPrefix(w, "[") || strings.HasPrefix(w, "-") {
			continue
		}
		if i == n {
			return w
		}
		i++
	}
	return "an argument"
}

// once makes a flag an error when it is given twice.
type once struct {
	flag.Value
	name string
	set  bool
}

func (o *once) Set(s string) error {
	if o.set {
		return fmt.Errorf("--%s given twice: give it once", o.name)
	}
	o.set = true
	return o.Value.Set(s)
}

// IsBoolFlag lets "--json" stand without a value when the wrapped flag is
// a bool.
func (o *once) IsBoolFlag() bool {
	b, ok := o.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}
