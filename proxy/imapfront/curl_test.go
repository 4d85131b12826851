package imapfront

import (
	"context"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCurl logs in with curl over STARTTLS: curl remembers LOGINDISABLED
// from before TLS and logs in only if AUTH=PLAIN is advertised after it.
func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is needed for this test (apt-get install curl): %v", err)
	}
	var certDER []byte
	ts := startServer(t, func(o *Options) { certDER = o.TLSConfig.Certificates[0].Certificate[0] })
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, "-sS", "--ssl-reqd", "--cacert", ca,
		"-u", primaryUser+":"+primaryPass, "-X", "NOOP", "imap://"+ts.addr+"/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	reqs, lines := ts.up.snapshot()
	if len(reqs) != 1 || reqs[0].User != primaryUser || !strings.Contains(strings.Join(lines, "\n"), "NOOP") {
		t.Fatalf("upstream logins %+v, lines %q", reqs, lines)
	}
}
