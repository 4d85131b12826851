package smtpfront

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/textproto"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// stepReader returns at most step bytes per Read: the network's segments.
// passgate's limits strike at the same byte however the input is cut;
// go-smtp's line limit struck where a read brought a line over it, so the
// references read a byte at a time, where it strikes at the first byte
// over the limit.
type stepReader struct {
	b    []byte
	step int
}

func (s *stepReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), s.step)], s.b)
	s.b = s.b[n:]
	return n, nil
}

// errKind names an error for comparison across implementations.
func errKind(err error) string {
	var se interface{ Error() string }
	var smtpErr *smtp.SMTPError
	switch {
	case err == nil:
		return "nil"
	case err == io.EOF:
		return "eof"
	case err == io.ErrUnexpectedEOF:
		return "unexpected-eof"
	case errors.Is(err, errTooLongLine), errors.Is(err, smtp.ErrTooLongLine):
		return "too-long"
	case errors.As(err, &smtpErr) && smtpErr.Code == 552:
		return "too-large"
	case errors.As(err, &se) && strings.Contains(err.Error(), "552"):
		return "too-large"
	}
	return "other: " + err.Error()
}

// dataResult is what a DATA reader gave: the message, how it ended, and
// (after its end) the input left for the next command.
type dataResult struct {
	out      []byte
	end      string
	drained  string // how the drain after a too-large message ended
	rest     []byte
	readSize int
	// unread is how much input was left unread when the message's
	// reading ended (before a drain).
	unread int
}

func readAllData(r io.Reader, size int) ([]byte, error) {
	var out []byte
	buf := make([]byte, size)
	for {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out, err
		}
	}
}

// ourData runs passgate's reader over in, after the lines that bring a
// session to its message (dataPreamble), as the server reads them: the
// line limit counts the '\n' that ends "DATA" as the first byte of the
// message's first line, as go-smtp counted it.
func ourData(in []byte, step, limit int, max int64, size int) dataResult {
	src := &stepReader{b: append([]byte(strings.Join(dataPreamble, "")), in...), step: step}
	r := newReader(src, limit, nil, nil)
	for range dataPreamble {
		if _, err := r.readLine(); err != nil {
			return dataResult{end: "data not run"}
		}
	}
	r.grow(true)
	d := &dataReader{r: r, limited: max > 0, n: max}
	out, err := readAllData(d, size)
	res := dataResult{out: out, end: errKind(err), unread: len(src.b)}
	if res.end == "too-large" {
		d.limited = false
		_, err = readAllData(d, size)
		res.drained = errKind(err)
	}
	if err == io.EOF {
		res.rest = append(append([]byte(nil), r.buffered()...), src.b...)
	}
	return res
}

var dataSeeds = []string{
	"Subject: a\r\n\r\n..leading\r\n.x\r\nbare\nlf\n.\nbare\rcr\r.\r\r\n.\r\n\r\n..\r\n.\r\nNOOP\r\n",
	".\r\n",
	".\rX\r\n.\r\r\n.\r\n\r\n.\r\n",
	"a\r\r\n.b\r\n\n.\r\n.\r\n",
	"first\n.\nXCLIENT LOGIN=bob ADDR=10.9.9.9\r\nMAIL FROM:<bob@example.test>\r\n.\r\nRSET\r\n",
	"line\r\n.\r",
	"x\r\n..\r\n...\r\n.\r\n",
	strings.Repeat("y", 78) + "\r\n" + strings.Repeat("z", 79) + "\n." + strings.Repeat("w", 77) + "\r\n.\r\n",
	strings.Repeat("y", 79) + "\r\n.\r\n",
	"\r\n.\r\n",
	"\r.\r\n.\r\n",
}

// TestDataReaderMatchesGoSMTP: for messages with bare LF, bare CR, dots,
// lines at the line limit and over it, and sizes at the size limit,
// passgate's reader gives the upstream the same bytes as go-smtp's server
// gave its session and ends where it ended, however the input is cut and
// read.
func TestDataReaderMatchesGoSMTP(t *testing.T) {
	for _, in := range dataSeeds {
		for _, step := range []int{1, 2, 3, 7, 64, 4096} {
			for _, limit := range []int{0, 16, 80, 81} {
				for _, max := range []int64{0, 1, 10, 20, int64(len(in))} {
					for _, size := range []int{1, 5, 4096} {
						checkData(t, []byte(in), step, limit, max, size)
					}
				}
			}
		}
	}
}

// checkData compares passgate's reader with go-smtp's server, which gets
// the input a byte at a time: the same message, ended the same way. After
// the end of data, what is left is the input after a line that is a lone
// dot (which one, the message decides).
//
// One difference is by design: passgate accepts a message of exactly max
// bytes (SIZE's promise), where go-smtp's server failed with a 552.
// passgate's reader with max is go-smtp's with max+1, except that go-smtp
// hands out the byte over passgate's limit (its max+1st) before its 552.
func checkData(t *testing.T, in []byte, step, limit int, max int64, size int) {
	t.Helper()
	goMax := max
	if max > 0 {
		goMax = max + 1
	}
	want := goSMTPData(in, limit, goMax, size)
	if want.end == "too-large" && int64(len(want.out)) == goMax {
		want.out = want.out[:max]
	}
	got := ourData(in, step, limit, max, size)
	if !bytes.Equal(got.out, want.out) || got.end != want.end {
		t.Fatalf("input %q step %d limit %d max %d read %d:\n got %q %s\nwant %q %s (go-smtp's server)",
			in, step, limit, max, size, got.out, got.end, want.out, want.end)
	}
	if got.end == "eof" {
		consumed := in[:len(in)-len(got.rest)]
		if !bytes.HasSuffix(in, got.rest) || !(bytes.Equal(consumed, []byte(".\r\n")) || bytes.HasSuffix(consumed, []byte("\r\n.\r\n"))) {
			t.Fatalf("input %q step %d: the message ended before %q, not after a lone dot", in, step, got.rest)
		}
	}
}

// FuzzDataReader compares passgate's DATA reader with go-smtp's server,
// byte for byte, for any input, segmentation, line limit, size limit and
// read size (checkData).
func FuzzDataReader(f *testing.F) {
	for _, s := range dataSeeds {
		f.Add([]byte(s), uint8(64), uint8(80), uint16(0), uint8(32))
		f.Add([]byte(s), uint8(1), uint8(10), uint16(12), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, step, limit uint8, max uint16, size uint8) {
		checkData(t, in, int(step)%80+1, int(limit), int64(max), int(size)%100+1)
	})
}

// FuzzReadLine compares the command lines passgate's reader returns,
// however the input is cut, with net/textproto's (which go-smtp's server
// reads commands with) under go-smtp's line limit, reading a byte at a
// time (lineCap). The one difference is on purpose: a line cut short by a
// read error or the end of input is not returned (go-smtp ran it as a
// command).
func FuzzReadLine(f *testing.F) {
	for _, s := range []string{"EHLO a\r\nNOOP\r\r\nMAIL FROM:<a@b>\nQUIT", "\r\n\n\r", strings.Repeat("x", 50) + "\r\nNOOP\r\n"} {
		f.Add([]byte(s), uint8(3), uint8(40))
	}
	f.Fuzz(func(t *testing.T, in []byte, step, limit uint8) {
		st, lim := int(step)%80+1, int(limit)
		ref := textproto.NewReader(bufio.NewReaderSize(&lineCap{b: in, limit: lim}, 4096))
		var want []string
		var wantErr error
		for {
			l, err := ref.ReadLine()
			if err != nil {
				wantErr = err
				break
			}
			want = append(want, l)
		}
		r := newReader(&stepReader{b: in, step: st}, lim, nil, nil)
		var got []string
		var gotErr error
		for {
			l, err := r.readLine()
			if err != nil {
				gotErr = err
				break
			}
			got = append(got, l)
		}
		if errKind(gotErr) != errKind(wantErr) {
			t.Fatalf("input %q step %d limit %d: error %v, want %v", in, st, lim, gotErr, wantErr)
		}
		if len(want) == len(got)+1 && (!bytes.HasSuffix(in, []byte("\n")) || errKind(gotErr) == "too-long") {
			want = want[:len(got)] // the cut line go-smtp ran
		}
		if strings.Join(got, "\x00") != strings.Join(want, "\x00") || len(got) != len(want) {
			t.Fatalf("input %q step %d limit %d:\n got %q\nwant %q", in, st, lim, got, want)
		}
	})
}

// lineCap hands out b a byte per Read and fails, as go-smtp's server does,
// once a line holds more than limit bytes, counting a line's bytes up to
// its '\n' and the '\n' as the first byte of the next line; 0 is no
// limit.
type lineCap struct {
	b     []byte
	limit int
	line  int
}

func (c *lineCap) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	ch := c.b[0]
	if ch == '\n' {
		c.line = 0
	}
	c.line++
	if c.limit > 0 && c.line > c.limit {
		return 0, errTooLongLine
	}
	p[0] = ch
	c.b = c.b[1:]
	return 1, nil
}

// BenchmarkDataReader reads a 10 MiB message of 76-character lines (one
// in 40 starting with a stuffed dot) through go-smtp's server (a whole
// session, the message most of it) and passgate's reader, with a 32 KiB
// read as smtpupstream does.
//
// On the 2-core test machine (go test -bench DataReader -benchtime 5x),
// go-smtp's ReadByte loop (inside its server) against the IndexByte one:
//
//	BenchmarkDataReader/go-smtp-2    51001433 ns/op   205.60 MB/s  47308 B/op  88 allocs/op
//	BenchmarkDataReader/passgate-2    3809753 ns/op  2752.35 MB/s  69843 B/op   5 allocs/op
func BenchmarkDataReader(b *testing.B) {
	var msg bytes.Buffer
	line := strings.Repeat("abcdefghij", 7) + "klmnop\r\n"
	for i := 0; msg.Len() < 10<<20; i++ {
		if i%40 == 0 {
			msg.WriteString("..")
		}
		msg.WriteString(line)
	}
	msg.WriteString(".\r\n")
	in := msg.Bytes()
	buf := make([]byte, 32<<10)
	run := func(b *testing.B, open func(src io.Reader) io.Reader) {
		b.SetBytes(int64(len(in)))
		b.ReportAllocs()
		for b.Loop() {
			r := open(&stepReader{b: in, step: 16 << 10})
			for {
				if _, err := r.Read(buf); err != nil {
					if err != io.EOF {
						b.Fatal(err)
					}
					break
				}
			}
		}
	}
	b.Run("go-smtp", func(b *testing.B) {
		b.SetBytes(int64(len(in)))
		b.ReportAllocs()
		for b.Loop() {
			chunks := [][]byte{}
			for _, l := range dataPreamble {
				chunks = append(chunks, []byte(l))
			}
			for rest := in; len(rest) > 0; rest = rest[min(16<<10, len(rest)):] {
				chunks = append(chunks, rest[:min(16<<10, len(rest))])
			}
			var err error
			runGoSMTP(chunks, DefaultMaxLineLength, DefaultMaxMessageBytes, &oracleSession{onData: func(r io.Reader) {
				for err == nil {
					_, err = r.Read(buf)
				}
			}})
			if err != io.EOF {
				b.Fatal(err)
			}
		}
	})
	b.Run("passgate", func(b *testing.B) {
		run(b, func(src io.Reader) io.Reader {
			r := newReader(src, DefaultMaxLineLength, nil, nil)
			r.grow(true)
			return &dataReader{r: r, limited: true, n: DefaultMaxMessageBytes}
		})
	})
	// As smtpupstream reads it: runs of lines from ReadStuffed, and
	// Read where they end (not stuffed again here). With bare LFs or
	// bare CRs in every other line, every such line goes by Read, and
	// the reading stays linear.
	bare := func(end string) []byte {
		var m bytes.Buffer
		for i := 0; m.Len() < 10<<20; i++ {
			if i%2 == 0 {
				m.WriteString(line[:len(line)-2] + end)
			} else {
				m.WriteString(line)
			}
		}
		m.WriteString(line + ".\r\n")
		return m.Bytes()
	}
	b.Run("passgate-stuffed", func(b *testing.B) { stuffedBench(b, in, buf) })
	b.Run("passgate-stuffed-bare-lf", func(b *testing.B) { stuffedBench(b, bare("\n"), buf) })
	b.Run("passgate-stuffed-bare-cr", func(b *testing.B) { stuffedBench(b, bare("\r\r\n"), buf) })
}

// stuffedBench reads in as smtpupstream does: ReadStuffed at line starts,
// Read elsewhere.
func stuffedBench(b *testing.B, in, buf []byte) {
	{
		b.SetBytes(int64(len(in)))
		b.ReportAllocs()
		for b.Loop() {
			r := newReader(&stepReader{b: in, step: 16 << 10}, DefaultMaxLineLength, nil, nil)
			r.grow(true)
			d := &dataReader{r: r, limited: true, n: DefaultMaxMessageBytes}
			atLine := true
			for {
				if atLine {
					p, _, err := d.ReadStuffed()
					if err == io.EOF {
						break
					}
					if len(p) > 0 {
						continue
					}
				}
				n, err := d.Read(buf)
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
				atLine = n > 0 && buf[n-1] == '\n'
			}
		}
	}
}
