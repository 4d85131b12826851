package integration

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// smtpBenchSession opens a logged-in submission session: directly to
// Postfix (dave's primary password through Dovecot SASL) or through
// passgate (alice's app password, XCLIENT upstream).
func smtpBenchSession(tb testing.TB, via string, p *passgateSMTP) (*smtp.Client, string) {
	tb.Helper()
	e := smtpEnv(tb)
	addr, user, pw := e.postfix.SubmissionAddr, "dave", e.dovecot.Users["dave"]
	if via == "passgate" {
		addr, user, pw = p.Addr, "alice", p.Secrets.aliceApp
	}
	c, err := smtp.DialStartTLS(addr, e.certs.ClientTLS())
	if err != nil {
		tb.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", user, pw)); err != nil {
		tb.Fatal(err)
	}
	return c, user + "@example.test"
}

// sendOne submits one message of body from r to dave.
func sendOne(tb testing.TB, c *smtp.Client, from string, r io.Reader) {
	if err := c.Mail(from, nil); err != nil {
		tb.Fatal(err)
	}
	if err := c.Rcpt("dave@example.test", nil); err != nil {
		tb.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(w, r); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkSMTPSubmit sends messages on one logged-in session, directly to
// Postfix and through passgate to the same Postfix, side by side.
// Reported: msgs/s and MB/s (from SetBytes).
func BenchmarkSMTPSubmit(b *testing.B) {
	e := smtpEnv(b)
	p := startPassgateSMTP(b, smtpOpts{upstream: xclientUpstream(e)})
	for _, size := range []int{2 << 10, 1 << 20} {
		msg := testMessage("x@example.test", "dave@example.test", "bench", size)
		for _, via := range []string{"direct", "passgate"} {
			b.Run(fmt.Sprintf("size=%dKiB/%s", size>>10, via), func(b *testing.B) {
				c, from := smtpBenchSession(b, via, p)
				defer c.Close()
				b.SetBytes(int64(len(msg)))
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					sendOne(b, c, from, bytes.NewReader(msg))
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
				b.StopTimer()
				_ = c.Quit()
			})
		}
	}
}

// relayPeak relays one message of size bytes through passgate and returns
// the peak growth of the process's in-use heap while it streamed, the
// growth of the memory obtained from the OS, and the time it took.
func relayPeak(tb testing.TB, size int64) (heapPeak, sysGrowth uint64, took time.Duration) {
	e := smtpEnv(tb)
	p := startPassgateSMTP(tb, smtpOpts{upstream: xclientUpstream(e)})
	c, from := smtpBenchSession(tb, "passgate", p)
	defer c.Close()
	header := []byte("From: <alice@example.test>\r\nTo: <dave@example.test>\r\nSubject: relay 50MB\r\n\r\n")
	body := &genReader{n: size - size%78}

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				runtime.ReadMemStats(&m)
				if m.HeapInuse > peak.Load() {
					peak.Store(m.HeapInuse)
				}
			}
		}
	}()
	start := time.Now()
	sendOne(tb, c, from, io.MultiReader(bytes.NewReader(header), body))
	took = time.Since(start)
	close(stop)
	wg.Wait()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	_ = c.Quit()
	if pk := peak.Load(); pk > base.HeapInuse {
		heapPeak = pk - base.HeapInuse
	}
	if after.Sys > base.Sys {
		sysGrowth = after.Sys - base.Sys
	}
	return heapPeak, sysGrowth, took
}

// TestSMTPRelay50MBMemory relays a 50 MB message through passgate to
// Postfix and checks that the message is streamed: the heap grows by less
// than 16 MiB while it passes.
func TestSMTPRelay50MBMemory(t *testing.T) {
	const size = 50 << 20
	heap, sys, took := relayPeak(t, size)
	t.Logf("50 MiB relayed in %v (%.0f MB/s); peak heap growth %.2f MiB, Sys growth %.2f MiB",
		took, float64(size)/took.Seconds()/1e6, float64(heap)/(1<<20), float64(sys)/(1<<20))
	if heap >= 16<<20 {
		t.Fatalf("peak heap growth %.2f MiB while relaying 50 MiB: the message is not streamed", float64(heap)/(1<<20))
	}
}

// BenchmarkSMTPRelay50MB reports the same as TestSMTPRelay50MBMemory as
// benchmark metrics.
func BenchmarkSMTPRelay50MB(b *testing.B) {
	const size = 50 << 20
	b.SetBytes(size)
	var maxHeap uint64
	for i := 0; i < b.N; i++ {
		heap, _, _ := relayPeak(b, size)
		maxHeap = max(maxHeap, heap)
	}
	b.ReportMetric(float64(maxHeap)/(1<<20), "peak-heap-MiB")
}
