package cli

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
)

// buildInfo is what "passgate version" reports of the binary.
type buildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Modified  bool   `json:"modified"`
	Date      string `json:"date"`
	GoVersion string `json:"go_version"`
}

// readBuildInfo reads the version Go's toolchain stamped into the binary:
// the module version (a tag when built with "go install …@vX"; "(devel)"
// from a checkout) and, when built inside a git checkout, the commit
// (vcs.revision), its date (vcs.time) and whether the tree had
// uncommitted changes (vcs.modified).
func readBuildInfo(bi *debug.BuildInfo, ok bool) buildInfo {
	b := buildInfo{Version: "unknown", Commit: "unknown", Date: "unknown", GoVersion: "unknown"}
	if !ok || bi == nil {
		return b
	}
	if bi.Main.Version != "" {
		b.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		b.GoVersion = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Commit = s.Value
		case "vcs.time":
			b.Date = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// String is the one line a bug report quotes.
func (b buildInfo) String() string {
	commit := b.Commit
	if b.Modified {
		commit += " (modified)"
	}
	return fmt.Sprintf("passgate %s\ncommit: %s\ndate:   %s\ngo:     %s\n", b.Version, commit, b.Date, b.GoVersion)
}

// cmdVersion runs "passgate version" (and "passgate --version").
func cmdVersion(_ context.Context, e *env, args []string) int {
	f := newFlags("version", "[--json]",
		"Print passgate's version, the commit it was built from (with \"(modified)\" when the tree had uncommitted\n"+
			"changes), the commit's date and the Go version, from the build information Go stamps into the binary.\n"+
			"Quote it in a bug report.")
	asJSON := f.Bool("json", false, "print JSON for scripts")
	if _, code, ok := e.parse(f, args, 0, 0); !ok {
		return code
	}
	b := readBuildInfo(debug.ReadBuildInfo())
	if *asJSON {
		if err := writeJSON(e.Stdout, b); err != nil {
			return e.fail(f.path, err)
		}
		return exitOK
	}
	fmt.Fprint(e.Stdout, strings.TrimRight(b.String(), "\n")+"\n")
	return exitOK
}
