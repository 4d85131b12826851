package lifecycle

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
)

// flaky is a listener whose first Accepts fail with the given errors.
type flaky struct {
	net.Listener
	errs []error
}

func (f *flaky) Accept() (net.Conn, error) {
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		return nil, err
	}
	return f.Listener.Accept()
}

func TestAccept(t *testing.T) {
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	other := errors.New("use of closed network connection")
	tests := []struct {
		name    string
		errs    []error
		stop    bool
		retries int
		wantErr error
	}{
		{"ok/retries-passing-errors", []error{emfile, emfile}, false, 2, nil},
		{"fail/permanent-error", []error{other}, false, 0, other},
		{"fail/stopping-does-not-retry", []error{emfile}, true, 0, emfile},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			// The kernel completes the handshake: Accept finds it queued.
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var retries int
			nc, err := acceptConn(&flaky{Listener: ln, errs: tc.errs}, func() bool { return tc.stop }, func(error) { retries++ })
			if nc != nil {
				nc.Close()
			}
			if !errors.Is(err, tc.wantErr) || retries != tc.retries {
				t.Errorf("Accept: err %v, %d retries; want %v, %d", err, retries, tc.wantErr, tc.retries)
			}
		})
	}
}
