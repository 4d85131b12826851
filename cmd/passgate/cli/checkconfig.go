package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/passgate/passgate/configs"
)

// checkReadable adds to Load's checks what serve would find at start: a
// configuration file with nothing in it (most likely the wrong file, or
// one emptied by accident) and files named by the configuration that
// cannot be read.
func checkReadable(cfg *configs.Config, file string) error {
	var probs []error
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("cli: read %s: %w", file, err)
		}
		if onlyComments(string(data)) {
			probs = append(probs, errors.New("the file is empty (no key is set): is it the right file? Start from passgate.example.yaml"))
		}
	}
	if err := cfg.CheckFiles(); err != nil {
		var multi interface{ Unwrap() []error }
		if errors.As(err, &multi) {
			probs = append(probs, multi.Unwrap()...)
		} else {
			probs = append(probs, err)
		}
	}
	return errors.Join(probs...)
}

// onlyComments reports whether a YAML text sets nothing: blank lines,
// comments and document markers only.
func onlyComments(text string) bool {
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") && l != "---" && l != "..." {
			return false
		}
	}
	return true
}

// cmdCheckConfig runs "passgate check-config": it loads and validates a
// configuration file and prints every problem, one per line.
func cmdCheckConfig(ctx context.Context, e *env, args []string) int {
	f := newFlags("check-config", "--config FILE",
		"Load and validate a configuration file without starting anything, and read the files serve reads at start\n"+
			"(certificate and key, CA files, master and service password files; never printing a secret). Every problem\n"+
			"is listed, one per line, on stderr; the exit code is 1 if there is any. An empty file is a problem too.")
	config := f.configFlag()
	if _, code, ok := e.parse(f, args, 0, 0); !ok {
		return code
	}
	cfg, file, err := e.loadConfig(*config)
	name := file
	if name == "" {
		name = "built-in defaults"
	}
	if err == nil {
		err = checkReadable(cfg, file)
	}
	if err != nil {
		var multi interface{ Unwrap() []error }
		if !errors.As(err, &multi) {
			return e.fail(f.path, err)
		}
		probs := multi.Unwrap()
		for _, p := range probs {
			fmt.Fprintf(e.Stderr, "%s: %v\n", name, p)
		}
		summary := fmt.Sprintf("%d problems; fix them", len(probs))
		if len(probs) == 1 {
			summary = "1 problem; fix it"
		}
		fmt.Fprintf(e.Stderr, "passgate: check-config: %s: %s and run check-config again\n", name, summary)
		return exitFailure
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(e.Stderr, "%s: warning: %s\n", name, w)
	}
	fmt.Fprintf(e.Stdout, "configuration OK: %s\n", name)
	return exitOK
}
