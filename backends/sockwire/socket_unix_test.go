//go:build unix

package sockwire

import (
	"io"
	"sync/atomic"
	"testing"
	"time"
)

func TestSocketIsRaw(t *testing.T) {
	s, _ := socketPair(t, nil)
	if _, ok := s.(*Socket); !ok {
		t.Fatalf("NewSocket returned %T, want *Socket", s)
	}
}

// TestSocketWaitCalledOnlyWhenEmpty checks that wait runs before a read
// waits, and not when data is there.
func TestSocketWaitCalledOnlyWhenEmpty(t *testing.T) {
	var waits atomic.Int64
	s, peer := socketPair(t, func() { waits.Add(1) })
	if _, err := peer.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	// Wait until the bytes are there to read, without reading them.
	buf := make([]byte, 3)
	if _, err := io.ReadFull(s, buf); err != nil {
		t.Fatal(err)
	}
	w := waits.Load()
	read := make(chan error, 1)
	go func() {
		_, err := s.Read(buf)
		read <- err
	}()
	for deadline := time.Now().Add(time.Minute); waits.Load() == w; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("wait not called while the read waits")
		}
	}
	if _, err := peer.Write([]byte("d")); err != nil {
		t.Fatal(err)
	}
	if err := <-read; err != nil || buf[0] != 'd' {
		t.Fatalf("read %q, %v; want d", buf[:1], err)
	}
}
