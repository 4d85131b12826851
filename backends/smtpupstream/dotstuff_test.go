package smtpupstream

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"strings"
	"testing"
	"testing/iotest"
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
// line end and its Close, on one connection.
func ourData(t testing.TB, msg []byte, step int) []byte {
	var b bytes.Buffer
	dot := textproto.NewWriter(bufio.NewWriter(&b)).DotWriter()
	r := iotest.OneByteReader(bytes.NewReader(msg))
	if step > 1 {
		r = &chunkReader{b: msg, step: step}
	}
	var out []byte
	n, err := stuffMessage(r, &b, dot, make([]byte, 64), &out, nil)
	if err != nil || n != int64(len(msg)) {
		t.Fatalf("stuffMessage = %d, %v", n, err)
	}
	dot.Close()
	return b.Bytes()
}

type chunkReader struct {
	b    []byte
	step int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.b[:min(c.step, len(c.b))])
	c.b = c.b[n:]
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
			if got := ourData(t, []byte(m), step); !bytes.Equal(got, want) {
				t.Errorf("message %q in chunks of %d:\n got %q\nwant %q", m, step, got, want)
			}
		}
	}
}

// FuzzStuffMessage: for any message and any chunking, what Session.Data
// sends is byte for byte what go-smtp's own DATA writer would send.
func FuzzStuffMessage(f *testing.F) {
	f.Add([]byte(".a\r\n.\n\r.\r"), uint8(1))
	f.Add([]byte("Subject: hi\r\n\r\nbody\r\n"), uint8(5))
	f.Fuzz(func(t *testing.T, msg []byte, step uint8) {
		want := stdlibData(msg)
		if got := ourData(t, msg, int(step%70)+1); !bytes.Equal(got, want) {
			t.Fatalf("message %q in chunks of %d:\n got %q\nwant %q", msg, int(step%70)+1, got, want)
		}
	})
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
		if _, err := stuffMessage(bytes.NewReader(msg), io.Discard, io.Discard, buf, &out, nil); err != nil {
			b.Fatal(err)
		}
	}
}
