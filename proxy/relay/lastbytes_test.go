package relay

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestRunSeesCloseWithLastBytes: a side that sends its last bytes and
// closes at once (the FIN in the same readiness as the data) ends the
// relay in that direction: the client's command and close end Run, and
// the upstream's BYE and close reach the client followed by the end of
// its connection (RFC 3501 §6.1.3: a client may wait for the server to
// close after LOGOUT). A relay that took a short read for a drained
// socket waited for a readiness that never came. Each case runs a few
// rounds, with the relay parked in its wait before the bytes come, which
// is when the bug showed; a failing round hangs until patience runs out.
func TestRunSeesCloseWithLastBytes(t *testing.T) {
	const rounds = 10
	t.Run("client", func(t *testing.T) {
		for i := range rounds {
			cl, relayClient := pipePair(t)
			upApp, relayUp := pipePair(t)
			done := make(chan Stats, 1)
			go func() { done <- Run(context.Background(), relayClient, relayUp, Options{}) }()
			go io.Copy(io.Discard, upApp)
			time.Sleep(20 * time.Millisecond) // let the relay park (not needed to pass)
			if _, err := cl.Write([]byte("a1 NOOP")); err != nil {
				t.Fatal(err)
			}
			cl.Close()
			select {
			case <-done:
			case <-time.After(patience):
				t.Fatalf("round %d: Run has not ended %v after the client sent its last bytes and closed", i, patience)
			}
			upApp.Close()
		}
	})
	t.Run("upstream", func(t *testing.T) {
		for i := range rounds {
			cl, relayClient := pipePair(t)
			upApp, relayUp := pipePair(t)
			done := make(chan Stats, 1)
			go func() { done <- Run(context.Background(), relayClient, relayUp, Options{}) }()
			time.Sleep(20 * time.Millisecond)
			const bye = "* BYE Logging out\r\na1 OK Logout completed.\r\n"
			if _, err := upApp.Write([]byte(bye)); err != nil {
				t.Fatal(err)
			}
			upApp.Close()
			cl.SetReadDeadline(time.Now().Add(patience))
			got, err := io.ReadAll(cl)
			if err != nil {
				t.Fatalf("round %d: the client's connection was not closed after the upstream's BYE and close: read %q, %v", i, got, err)
			}
			if string(got) != bye {
				t.Fatalf("round %d: the client read %q, want %q", i, got, bye)
			}
			<-done
			cl.Close()
		}
	})
}
