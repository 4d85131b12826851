package smtpupstream

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/textproto"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// stdlibData is what go-smtp's client sends for msg: net/textproto's
// DotWriter, given the whole message, then closed.
func stdlibData(msg []byte) []byte {
	var b bytes.Buffer
	w := textproto.NewWriter(bufio.NewWriter(&b)).DotWriter()
	w.Write(msg)
	w.Close()
	return b.Bytes()
}

// ourData is what Session.Data sends for msg read in chunks of step
// bytes: stuffMessage's direct writes, then the DotWriter for the kept
// line end and its Close, on one connection. With hold, the reader
// returns io.EOF with the last bytes (as go-smtp's DATA reader does) and
// the connection is a holder, as Session.Data's is. It also returns the
// number of writes.
func ourData(t testing.TB, msg []byte, step int, hold bool) ([]byte, int) {
	var b bytes.Buffer
	w := &countingWriter{w: &b}
	var raw io.Writer = w
	if hold {
		raw = &holdingWriter{countingWriter: w}
	}
	dot := textproto.NewWriter(bufio.NewWriter(raw)).DotWriter()
	r := iotest.OneByteReader(bytes.NewReader(msg))
	if step > 1 || hold {
		r = &chunkReader{b: msg, step: step, eofWithLast: hold}
	}
	var out []byte
	n, err := stuffMessage(r, raw, dot, make([]byte, 64), &out, nil, nil)
	if err != nil || n != int64(len(msg)) {
		t.Fatalf("stuffMessage = %d, %v", n, err)
	}
	dot.Close()
	return b.Bytes(), w.writes
}

// countingWriter counts the writes to w.
type countingWriter struct {
	w      io.Writer
	writes int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	return c.w.Write(p)
}

// holdingWriter is a holder as replayConn is.
type holdingWriter struct {
	*countingWriter
	held []byte
}

func (h *holdingWriter) hold(p []byte) { h.held = p }

func (h *holdingWriter) Write(p []byte) (int, error) {
	w := append(h.held, p...)
	h.held = nil
	n, err := h.countingWriter.Write(w)
	return n - (len(w) - len(p)), err
}

type chunkReader struct {
	b           []byte
	step        int
	eofWithLast bool // return io.EOF with the last bytes
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.b[:min(c.step, len(c.b))])
	c.b = c.b[n:]
	if c.eofWithLast && len(c.b) == 0 {
		return n, io.EOF
	}
	return n, nil
}

func TestStuffMessageMatchesDotWriter(t *testing.T) {
	msgs := []string{
		"",
		"Subject: x\r\n\r\nhello\r\n",
		"no final line end",
		".starts with a dot\r\n..two\r\n.\r\nend\r\n",
		"bare\nLF\nlines\n.dot after LF\n",
		"bare\rCR\r.not a line start\r",
		"\r\r\n.\r\n\n\n.",
		"CRLF at the end of a chunk\r\n" + strings.Repeat("x", 62) + "\r\n.",
		strings.Repeat("line of text.\r\n.", 100),
	}
	for _, m := range msgs {
		want := stdlibData([]byte(m))
		for _, step := range []int{1, 2, 3, 7, 64, 1000} {
			for _, hold := range []bool{false, true} {
				if got, _ := ourData(t, []byte(m), step, hold); !bytes.Equal(got, want) {
					t.Errorf("message %q in chunks of %d (hold %v):\n got %q\nwant %q", m, step, hold, got, want)
				}
			}
		}
	}
}

// FuzzStuffMessage: for any message and any chunking, what Session.Data
// sends is byte for byte what go-smtp's own DATA writer would send, also
// when the message comes from a StuffedReader.
func FuzzStuffMessage(f *testing.F) {
	f.Add([]byte(".a\r\n.\n\r.\r"), uint8(1))
	f.Add([]byte("Subject: hi\r\n\r\nbody\r\n"), uint8(5))
	f.Fuzz(func(t *testing.T, msg []byte, step uint8) {
		want := stdlibData(msg)
		hold := step >= 128
		if got, _ := ourData(t, msg, int(step%70)+1, hold); !bytes.Equal(got, want) {
			t.Fatalf("message %q in chunks of %d (hold %v):\n got %q\nwant %q", msg, int(step%70)+1, hold, got, want)
		}
		if got, _ := stuffedData(t, msg, int(step%70)+1, hold); !bytes.Equal(got, want) {
			t.Fatalf("message %q from a StuffedReader in chunks of %d (hold %v):\n got %q\nwant %q", msg, int(step%70)+1, hold, got, want)
		}
	})
}

// stuffedSource is a StuffedReader over msg that keeps the interface's
// promises: at a line start of msg, ReadStuffed hands out up to step
// bytes of the lines that follow which end with CRLF and hold no other
// CR or LF, stuffed, with io.EOF when they end msg; a line that ends
// msg without CRLF, or holds a bare CR or LF, is left to Read, which
// reads step bytes at a time, up to a line end, and returns io.EOF with
// the last ones.
type stuffedSource struct {
	chunkReader
	msg         []byte
	pos         int
	runs, reads int
}

func (s *stuffedSource) Read(p []byte) (int, error) {
	s.reads++
	s.chunkReader.b = s.msg[s.pos:]
	if i := bytes.IndexByte(s.msg[s.pos:], '\n'); i >= 0 && i+1 < len(s.msg)-s.pos {
		s.chunkReader.b = s.msg[s.pos : s.pos+i+1]
		s.chunkReader.eofWithLast = false
	}
	n, err := s.chunkReader.Read(p)
	s.pos += n
	return n, err
}

func (s *stuffedSource) ReadStuffed() ([]byte, int, error) {
	if s.pos > 0 && s.msg[s.pos-1] != '\n' {
		return nil, 0, nil
	}
	var out []byte
	q := s.pos
	for q-s.pos < s.step {
		l := s.msg[q:]
		i := bytes.IndexByte(l, '\n')
		if i < 1 || l[i-1] != '\r' || bytes.ContainsAny(l[:i-1], "\r\n") {
			break
		}
		if l[0] == '.' {
			out = append(out, '.')
		}
		out = append(out, l[:i+1]...)
		q += i + 1
	}
	if q == s.pos {
		return nil, 0, nil
	}
	n := q - s.pos
	s.pos = q
	s.runs++
	if q == len(s.msg) {
		return out, n, io.EOF
	}
	return out, n, nil
}

// TestStuffedReaderSentAsIs: with a StuffedReader, what Session.Data
// sends is byte for byte what go-smtp's DATA writer would send, and the
// runs of lines are used.
func TestStuffedReaderSentAsIs(t *testing.T) {
	msgs := []string{
		"Subject: x\r\n\r\nhello\r\n",
		"..two\r\n.one\r\nend\r\n",
		"a\r\nb\nc\r\nd\re\r\n.\r\n..\r\nno end",
		"\r\n\r\n.\r\n",
		strings.Repeat("line of text\r\n.dot\r\n", 100),
	}
	for _, m := range msgs {
		want := stdlibData([]byte(m))
		for _, step := range []int{1, 2, 3, 7, 64, 1000} {
			for _, hold := range []bool{false, true} {
				got, runs := stuffedData(t, []byte(m), step, hold)
				if !bytes.Equal(got, want) {
					t.Errorf("message %q in chunks of %d (hold %v):\n got %q\nwant %q", m, step, hold, got, want)
				}
				if runs == 0 {
					t.Errorf("message %q in chunks of %d: no run of lines used", m, step)
				}
			}
		}
	}
}

// stuffedData is ourData with a stuffedSource; it also returns the
// number of runs of lines used.
func stuffedData(t testing.TB, msg []byte, step int, hold bool) ([]byte, int) {
	var b bytes.Buffer
	var raw io.Writer = &countingWriter{w: &b}
	if hold {
		raw = &holdingWriter{countingWriter: raw.(*countingWriter)}
	}
	dot := textproto.NewWriter(bufio.NewWriter(raw)).DotWriter()
	src := &stuffedSource{chunkReader: chunkReader{step: step}, msg: msg}
	var out []byte
	n, err := stuffMessage(&eofWithLast{src, hold}, raw, dot, make([]byte, 64), &out, nil, nil)
	if err != nil || n != int64(len(msg)) {
		t.Fatalf("stuffMessage = %d, %v", n, err)
	}
	dot.Close()
	return b.Bytes(), src.runs
}

// eofWithLast is a stuffedSource whose Read returns io.EOF with the last
// bytes, when on.
type eofWithLast struct {
	*stuffedSource
	on bool
}

func (e *eofWithLast) Read(p []byte) (int, error) {
	n, err := e.stuffedSource.Read(p)
	if e.on && err == nil && e.pos == len(e.msg) {
		err = io.EOF
	}
	return n, err
}

// TestStuffedReaderAfterRead: once a Read has left the message at a line
// start, the runs of lines go on, also while what Read gave is pending.
func TestStuffedReaderAfterRead(t *testing.T) {
	msg := []byte("x\ny\r\n" + strings.Repeat("abc\r\n", 100))
	src := &stuffedSource{chunkReader: chunkReader{step: 64}, msg: msg}
	var b bytes.Buffer
	dot := textproto.NewWriter(bufio.NewWriter(&b)).DotWriter()
	var out []byte
	if _, err := stuffMessage(src, &b, dot, make([]byte, 64), &out, nil, nil); err != nil {
		t.Fatal(err)
	}
	dot.Close()
	if want := stdlibData(msg); !bytes.Equal(b.Bytes(), want) {
		t.Fatalf("sent %q, want %q", b.Bytes(), want)
	}
	if src.reads != 1 || src.runs != 8 {
		t.Fatalf("%d reads and %d runs, want 1 read (the bare LF) and 8 runs", src.reads, src.runs)
	}
}

// TestShortMessageOneWrite: a short message leaves, with the end of
// data, in one write, also when it is read in pieces; without a holder
// its last line end and the end of data are a write of their own.
func TestShortMessageOneWrite(t *testing.T) {
	msg := []byte("Subject: x\r\n\r\nshort\r\n")
	tests := []struct {
		name   string
		step   int
		hold   bool
		writes int
	}{
		{"held", 64, true, 1},
		{"held/two-reads", 16, true, 1},
		{"not-held", 64, false, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, writes := ourData(t, msg, tc.step, tc.hold)
			if want := stdlibData(msg); !bytes.Equal(got, want) {
				t.Fatalf("sent %q, want %q", got, want)
			}
			if writes != tc.writes {
				t.Fatalf("%d writes, want %d", writes, tc.writes)
			}
		})
	}
}

// TestIndexLineEnd: indexLineEnd finds what bytes.IndexAny(p, "\r\n")
// finds.
func TestIndexLineEnd(t *testing.T) {
	for _, p := range []string{"", "x", "\r", "\n", "ab\r\ncd", "ab\ncd\r", "ab\rcd\n", "\n\r", strings.Repeat("y", 100) + "\r\n"} {
		if got, want := indexLineEnd([]byte(p)), bytes.IndexAny([]byte(p), "\r\n"); got != want {
			t.Errorf("indexLineEnd(%q) = %d, want %d", p, got, want)
		}
	}
}

// BenchmarkStuffMessage encodes 10 MiB of 78-byte lines as Session.Data
// does, in its 32 KiB reads.
func BenchmarkStuffMessage(b *testing.B) {
	line := strings.Repeat("abcdefghij", 7) + "abcdef\r\n"
	msg := []byte(strings.Repeat(line, (10<<20)/len(line)))
	buf := make([]byte, 32<<10)
	var out []byte
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := stuffMessage(bytes.NewReader(msg), io.Discard, io.Discard, buf, &out, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestShortRunsGathered: a message whose lines take turns between runs
// of lines (CRLF lines) and Read (bare-LF lines) is not sent a write per
// line: a short run is gathered with what Read gave, as Read's bytes
// are, until half the buffer. Before, 1 MiB of such lines took a write per run
// (~150 000 writes where the path without runs took 33), each its own
// TLS record towards a TLS upstream (found in review).
func TestShortRunsGathered(t *testing.T) {
	var msg []byte
	for len(msg) < 256<<10 {
		msg = append(msg, "a\r\nb\n"...)
	}
	msg = append(msg, "end\r\n"...)
	var b bytes.Buffer
	raw := &countingWriter{w: &b}
	dot := textproto.NewWriter(bufio.NewWriter(raw)).DotWriter()
	src := &stuffedSource{chunkReader: chunkReader{step: 1000}, msg: msg}
	var out []byte
	buf := make([]byte, 64<<10) // written out at half of it
	n, err := stuffMessage(src, raw, dot, buf, &out, nil, nil)
	if err != nil || n != int64(len(msg)) {
		t.Fatalf("stuffMessage = %d, %v", n, err)
	}
	dot.Close()
	if got, want := b.Bytes(), stdlibData(msg); !bytes.Equal(got, want) {
		t.Fatalf("sent %d bytes that differ from DotWriter's %d", len(got), len(want))
	}
	if src.runs < 1000 {
		t.Fatalf("only %d runs of lines used: the test does not take turns", src.runs)
	}
	if most := len(msg)/(len(buf)/2) + 8; raw.writes > most {
		t.Errorf("%d writes for %d bytes in %d runs of lines, want at most %d", raw.writes, len(msg), src.runs, most)
	}
}

// slowClient is a message read a line per call, the clock moving on by
// step at each call, for TestSlowClientNotHeld: it checks, at each call,
// that no line read holdMax+step ago or earlier is still unwritten.
type slowClient struct {
	t       *testing.T
	lines   [][]byte
	next    int
	clock   time.Time
	step    time.Duration
	readAt  []time.Time // when each line was handed out
	raw     *bytes.Buffer
	written []int // bytes of the encoding up to the end of each line
}

func (c *slowClient) now() time.Time { return c.clock }

// call checks what is written, moves the clock on and returns the next
// line (io.EOF with the last).
func (c *slowClient) call() ([]byte, error) {
	c.t.Helper()
	for i := 0; i < c.next; i++ {
		// The encoding of line i, but for its line end (which may be
		// kept back as the message's last bytes), is out.
		if c.raw.Len() < c.written[i]-2 && c.clock.Sub(c.readAt[i]) > holdMax+c.step {
			c.t.Fatalf("line %d, read %v ago, is not written yet (%d of %d bytes out)", i, c.clock.Sub(c.readAt[i]), c.raw.Len(), c.written[i]-2)
		}
	}
	c.clock = c.clock.Add(c.step)
	l := c.lines[c.next]
	c.readAt = append(c.readAt, c.clock)
	c.next++
	if c.next == len(c.lines) {
		return l, io.EOF
	}
	return l, nil
}

func (c *slowClient) Read(p []byte) (int, error) {
	l, err := c.call()
	return copy(p, l), err // the lines are shorter than p
}

// slowStuffed is a slowClient whose lines come as runs (StuffedReader).
type slowStuffed struct{ *slowClient }

func (c slowStuffed) ReadStuffed() ([]byte, int, error) {
	l, err := c.call()
	return l, len(l), err
}

// TestSlowClientNotHeld: a client that sends a short line every 600 ms
// has each line written upstream within about holdMax, not once half of
// buf has gathered (Postfix gives up on a client that sends nothing for
// smtpd_timeout), through Read and through runs of lines alike.
func TestSlowClientNotHeld(t *testing.T) {
	for _, stuffed := range []bool{false, true} {
		t.Run(fmt.Sprintf("runs=%v", stuffed), func(t *testing.T) {
			var raw bytes.Buffer
			c := &slowClient{t: t, clock: time.Unix(0, 0), step: 600 * time.Millisecond, raw: &raw}
			total := 0
			for i := range 30 {
				l := fmt.Appendf(nil, "line %d of a slow client\r\n", i)
				c.lines = append(c.lines, l)
				total += len(l)
				c.written = append(c.written, total)
			}
			var r io.Reader = c
			if stuffed {
				r = slowStuffed{c}
			}
			dot := textproto.NewWriter(bufio.NewWriter(&raw)).DotWriter()
			var out []byte
			if _, err := stuffMessage(r, &raw, dot, make([]byte, 64<<10), &out, nil, c.now); err != nil {
				t.Fatal(err)
			}
			dot.Close()
			var msg []byte
			for _, l := range c.lines {
				msg = append(msg, l...)
			}
			if want := stdlibData(msg); !bytes.Equal(raw.Bytes(), want) {
				t.Fatalf("sent %q, want %q", raw.Bytes(), want)
			}
		})
	}
}
