package smtpfront

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/emersion/go-smtp"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/lifecycle"
)

// TestTrackAfterClose: a connection accepted while Close or Shutdown
// waits for the sessions is refused, never added to the wait group.
func TestTrackAfterClose(t *testing.T) {
	type nopDecider struct{ lifecycle.Decider }
	type nopUpstream struct{ Upstream }
	s := New(Options{Decider: nopDecider{}, Upstream: nopUpstream{}})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer b.Close()
	if tc := s.track(a); tc != nil {
		t.Fatal("track accepted a connection after Close")
	}
	if n := len(s.set.Live()); n != 0 {
		t.Fatalf("%d connections tracked after Close", len(s.set.Live()))
	}
}

// TestSecretsNotFormatted: credentials and a LoginRequest print no
// secret with any fmt verb or slog handler.
func TestSecretsNotFormatted(t *testing.T) {
	const secret = "s3cret-Value"
	c := credentials{authzid: "alice", user: "alice", pass: secret}
	req := LoginRequest{User: "alice", Password: secret, Helo: "client.test"}
	var buf bytes.Buffer
	for _, v := range []any{c, &c, req, &req} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			fmt.Fprintf(&buf, verb+"\n", v)
		}
		slog.New(slog.NewTextHandler(&buf, nil)).Info("x", slog.Any("v", v))
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", slog.Any("v", v))
	}
	if strings.Contains(buf.String(), secret) {
		t.Fatalf("a secret was printed:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "alice") {
		t.Fatalf("the user is missing:\n%s", buf.String())
	}
}

// TestRepliesAreFresh: a reply or the mechanism list changed by one
// caller does not change what the next one gets.
func TestRepliesAreFresh(t *testing.T) {
	for _, f := range []func() error{errAuthInvalid, errAuthTemp, errAuthNeeded, errNeedTLS, errTooMany, errUpstreamGone, errMessageRead} {
		e := f().(*smtp.SMTPError)
		want := e.Message
		e.Message = "changed"
		if got := f().(*smtp.SMTPError).Message; got != want {
			t.Fatalf("reply changed to %q", got)
		}
	}
	m := mechanisms()
	m[0] = "CRAM-MD5"
	if mechanisms()[0] != "PLAIN" {
		t.Fatal("mechanisms changed")
	}
	_ = policy.SMTP
}

// TestPrefixed: the byte read ahead comes back in the same Read as the
// next bytes (a short message is one read, not a byte and the rest), and
// alone when only one byte is asked for.
func TestPrefixed(t *testing.T) {
	errUntouched := errors.New("read the underlying reader")
	tests := []struct {
		name    string
		r       io.Reader
		size    int
		want    string
		wantErr error
	}{
		{"with-rest", iotest.DataErrReader(strings.NewReader("bc")), 16, "abc", io.EOF},
		{"rest-later", strings.NewReader("bc"), 16, "abc", nil},
		{"one-byte-buffer", iotest.ErrReader(errUntouched), 1, "a", nil},
		{"underlying-fails", iotest.ErrReader(errUntouched), 16, "a", errUntouched},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &prefixed{b: 'a', pending: true, r: tc.r}
			b := make([]byte, tc.size)
			n, err := p.Read(b)
			if string(b[:n]) != tc.want || err != tc.wantErr {
				t.Fatalf("Read = %q, %v; want %q, %v", b[:n], err, tc.want, tc.wantErr)
			}
		})
	}
}
