package passgate

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/passgate/passgate"

// TestLayout checks that dependencies point one way, as design.md says:
// cmd → proxy → policy → backends; a protocol front never imports another
// front; a backend imports no other backend (but the app-password
// primitives, the secret type and the upstream dialler), nor proxy, policy or configs; only cmd reads configs; no
// production package imports integration/. A wire package (backends/*wire)
// holds a protocol's framing, the same at both ends of a session: any
// front or backend may import it, and it imports no passgate package. It
// also checks that every package has a doc comment.
func TestLayout(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	type pkg struct {
		ImportPath string
		Name       string
		Imports    []string
		Doc        string
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	rel := func(path string) string { return strings.TrimPrefix(strings.TrimPrefix(path, module), "/") }
	top := func(r string) string { return strings.SplitN(r, "/", 2)[0] }
	for _, p := range pkgs {
		from := rel(p.ImportPath)
		if p.Doc == "" && p.Name != "main" {
			t.Errorf("%s has no package doc comment", from)
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			to := rel(imp)
			bad := ""
			switch {
			case strings.HasSuffix(from, "wire"):
				bad = "a wire package imports no passgate package"
			case strings.HasPrefix(to, "backends/") && strings.HasSuffix(to, "wire") && top(from) != "integration":
				// shared framing: allowed from fronts and backends
			case top(to) == "integration" && top(from) != "integration":
				bad = "production code imports the test harness"
			case top(to) == "cmd" && top(from) != "cmd":
				bad = "only cmd may import cmd"
			case to == "configs" && top(from) != "cmd":
				bad = "only cmd translates configs into Options"
			case top(from) == "proxy" && (top(to) == "backends" || top(to) == "cmd"):
				bad = "a listener reaches backends only through interfaces that cmd wires"
			case top(from) == "proxy" && strings.HasSuffix(from, "front") && strings.HasSuffix(to, "front"):
				bad = "a protocol front never imports another front"
			case from == "policy" && top(to) != "backends":
				bad = "policy imports only backends"
			case top(from) == "backends" && (top(to) == "proxy" || top(to) == "policy" || to == "configs"):
				bad = "backends import nothing above them"
			case from == "backends/dial" && top(to) != "":
				bad = "backends/dial imports no passgate package"
			case top(from) == "backends" && top(to) == "backends" && to != "backends/apppass" && to != "backends/secret" && to != "backends/dial":
				// backends/secret is a leaf (the one redacting password
				// type, shared by the upstreams' options and policy's
				// Attempt), like the app-password primitives; so is
				// backends/dial (the upstream connection: addresses,
				// PROXY header, TLS), written once for the IMAP and SMTP
				// upstreams and the portal's IMAP verifier.
				bad = "a backend imports no other backend"
			}
			if bad != "" {
				t.Errorf("%s imports %s: %s", from, to, bad)
			}
		}
	}
}
