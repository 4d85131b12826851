package smtpfront

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// States of refStuffer, as net/textproto's DotWriter names them.
const (
	refBegin = iota
	refBeginLine
	refCR
	refData
)

// refStuffer is net/textproto's DotWriter (which go-smtp's client, and
// so smtpupstream, stuffs a message with), a byte at a time, with its
// state in sight: the model of the upstream side of a relay.
type refStuffer struct{ state int }

func (s *refStuffer) write(dst, p []byte) []byte {
	for _, c := range p {
		switch s.state {
		case refBegin, refBeginLine:
			s.state = refData
			if c == '.' {
				dst = append(dst, '.')
			}
			fallthrough
		case refData:
			switch c {
			case '\r':
				s.state = refCR
			case '\n':
				dst = append(dst, '\r')
				s.state = refBeginLine
			}
		case refCR:
			s.state = refData
			if c == '\n' {
				s.state = refBeginLine
			}
		}
		dst = append(dst, c)
	}
	return dst
}

// close appends the end of data, as DotWriter's Close writes it.
func (s *refStuffer) close(dst []byte) []byte {
	switch s.state {
	case refBeginLine:
		return append(dst, ".\r\n"...)
	case refCR:
		return append(dst, "\n.\r\n"...)
	}
	return append(dst, "\r\n.\r\n"...)
}

// dotWriterData is what net/textproto's DotWriter sends for msg.
func dotWriterData(msg []byte) []byte {
	var b bytes.Buffer
	w := textproto.NewWriter(bufio.NewWriter(&b)).DotWriter()
	_, _ = w.Write(msg)
	_ = w.Close()
	return b.Bytes()
}

// stuffedResult is what a relay of a DATA message gave: the message as
// the upstream's side read it, how its reading ended, the DATA the
// upstream got (when it ended), and the runs of lines that went as they
// were.
type stuffedResult struct {
	dataResult
	wire  []byte
	runs  int
	taken int64 // message bytes in those runs
}

// ourStuffedData runs passgate's reader over in as ourData does, read
// as smtpupstream reads it: at a line start of its encoding, the lines
// ReadStuffed hands out go to the wire as they are; otherwise Read, in
// reads of size bytes, and refStuffer. With ahead, the message's first
// byte is read ahead and the reader wrapped, as session.data does. It
// checks every run of lines against ReadStuffed's promises.
func ourStuffedData(t *testing.T, in []byte, step, limit int, max int64, size int, ahead bool) stuffedResult {
	t.Helper()
	src := &stepReader{b: append([]byte(strings.Join(dataPreamble, "")), in...), step: step}
	r := newReader(src, limit, nil, nil)
	for range dataPreamble {
		if _, err := r.readLine(); err != nil {
			return stuffedResult{dataResult: dataResult{end: "data not run"}}
		}
	}
	r.grow(true)
	d := &dataReader{r: r, limited: max > 0, n: max}
	var res stuffedResult
	var rd io.Reader = d
	if ahead {
		var first [1]byte
		n, err := io.ReadFull(d, first[:])
		if err != nil {
			res.end = errKind(err)
			if err == io.EOF {
				var s refStuffer
				res.wire = s.close(nil)
				res.rest = append(append([]byte(nil), r.buffered()...), src.b...)
			}
			return res
		}
		rd = &errReader{r: &prefixed{b: first[0], pending: n == 1, r: d}}
	}
	sr := rd.(stuffedReader)
	var s refStuffer
	buf := make([]byte, size)
	var err error
	for err == nil {
		if s.state == refBegin || s.state == refBeginLine {
			p, n, serr := sr.ReadStuffed()
			if serr != nil && serr != io.EOF {
				t.Fatalf("ReadStuffed: %v", serr)
			}
			if len(p) > 0 {
				checkRun(t, p, n)
				res.runs++
				res.taken += int64(n)
				res.out = append(res.out, unstuffRun(p)...)
				res.wire = append(res.wire, p...)
				s.state = refBeginLine
				if serr == io.EOF {
					err = io.EOF
				}
				continue
			}
			if serr == io.EOF {
				t.Fatalf("ReadStuffed: io.EOF without bytes")
			}
		}
		var n int
		n, err = rd.Read(buf)
		res.out = append(res.out, buf[:n]...)
		res.wire = s.write(res.wire, buf[:n])
	}
	res.end, res.unread = errKind(err), len(src.b)
	if res.end == "too-large" {
		d.limited = false
		_, err = readAllData(d, size)
		res.drained = errKind(err)
	}
	if err == io.EOF {
		res.wire = s.close(res.wire)
		res.rest = append(append([]byte(nil), r.buffered()...), src.b...)
	}
	return res
}

// checkRun checks a run of lines against ReadStuffed's promises: whole
// lines ended by CRLF, no other CR or LF, none starting with a single
// dot, standing for n bytes of the message.
func checkRun(t *testing.T, p []byte, n int) {
	t.Helper()
	if len(unstuffRun(p)) != n {
		t.Fatalf("run %q stands for %d bytes, ReadStuffed said %d", p, len(unstuffRun(p)), n)
	}
	for l := range bytes.Lines(p) {
		body, ok := bytes.CutSuffix(l, []byte("\r\n"))
		if !ok || bytes.ContainsAny(body, "\r\n") || (len(body) > 0 && body[0] == '.' && (len(body) < 2 || body[1] != '.')) {
			t.Fatalf("run %q: line %q is not one to send as it is", p, l)
		}
	}
}

// unstuffRun is the message a run of lines stands for: each line less
// the first dot of those that start with one.
func unstuffRun(p []byte) []byte {
	var out []byte
	for l := range bytes.Lines(p) {
		out = append(out, bytes.TrimPrefix(l, []byte("."))...)
	}
	return out
}

// checkStuffed compares a relay through ReadStuffed with the reader's
// Read alone (checked against go-smtp's server by checkData): the same
// message up to the same end, the same drain and the same input left;
// and, for a message that ended, the same DATA upstream as DotWriter
// sends for it.
func checkStuffed(t *testing.T, in []byte, step, limit int, max int64, size int, ahead bool) stuffedResult {
	t.Helper()
	want := ourData(in, step, limit, max, size)
	got := ourStuffedData(t, in, step, limit, max, size, ahead)
	where := fmt.Sprintf("input %q step %d limit %d max %d read %d ahead %v", in, step, limit, max, size, ahead)
	if got.end != want.end || !bytes.Equal(got.out, want.out) || got.drained != want.drained || !bytes.Equal(got.rest, want.rest) {
		t.Fatalf("%s:\n got %q %s (drain %s, left %q)\nwant %q %s (drain %s, left %q) (Read alone)",
			where, got.out, got.end, got.drained, got.rest, want.out, want.end, want.drained, want.rest)
	}
	if got.end == "too-long" && got.unread < want.unread {
		// A line over the limit fails as soon as Read alone fails it:
		// never after waiting for more input.
		t.Fatalf("%s: too long a line failed after reading %d more bytes than Read alone", where, want.unread-got.unread)
	}
	if got.end == "eof" {
		if wire := dotWriterData(want.out); !bytes.Equal(got.wire, wire) {
			t.Fatalf("%s: upstream got\n%q\nwant (DotWriter)\n%q", where, got.wire, wire)
		}
	}
	return got
}

// TestReadStuffedMatchesRead: for messages with bare LF, bare CR, single
// and doubled dots, lines at the line limit and over it, and sizes at the
// size limit, a relay that sends ReadStuffed's lines as they are gives the
// upstream what un-stuffing and stuffing again gave it, the message ends
// at the same byte, and the same input is left for the next command.
func TestReadStuffedMatchesRead(t *testing.T) {
	seeds := append([]string{
		"a\r\nb\r\n..c\r\n.\r\n",
		"a\r\nb\r\n..c\r\n.\r\nQUIT\r\n",
		"a\r\n\r\n.\r\n",
		"a\r\nb\r\n.\r",
		"x\r\ny\r\r\nz\r\n.\r\n",
		"x\r\ny\rq\r\nz\r\n.\r\n",
		"x\r\ny\nz\r\n.\r\n",
		"x\r\n.y\r\nz\r\n.\r\n",
		"x\r\n..\r\n...\r\n.\r\r\n.\r\n",
		"\r\n\r\n.\r\n",
		"..\r\n.\r\n",
		strings.Repeat("0123456789\r\n", 30) + ".\r\n",
	}, dataSeeds...)
	for _, in := range seeds {
		for _, step := range []int{1, 2, 3, 7, 13, 64, 4096} {
			for _, limit := range []int{0, 3, 12, 13, 80} {
				for _, max := range []int64{0, 1, 10, 20, int64(len(in)) - 3, int64(len(in))} {
					for _, size := range []int{1, 5, 4096} {
						for _, ahead := range []bool{false, true} {
							checkStuffed(t, []byte(in), step, limit, max, size, ahead)
						}
					}
				}
			}
		}
	}
}

// TestReadStuffedSendsLinesAsTheyAre: a message of ordinary lines (and
// lines that start with a doubled dot) goes upstream as runs of lines,
// of at least minRun bytes but for the last (a short message is one
// run, however it arrives); with its first byte read ahead, the rest of
// its first line goes by Read. From a line that starts with a single dot
// on, the message goes by Read.
func TestReadStuffedSendsLinesAsTheyAre(t *testing.T) {
	plain := "Subject: x\r\n\r\n" + strings.Repeat("line of text\r\n..dot\r\n", 50) + ".\r\n"
	all := int64(len(plain)) - 50 - 3 // less the stuffed dots and the end
	big := "Subject: x\r\n\r\n" + strings.Repeat(strings.Repeat("y", 76)+"\r\n", (1<<20)/78) + ".\r\n"
	tests := []struct {
		name     string
		in       string
		step     int
		ahead    bool
		min, max int // runs
		taken    int64
	}{
		{"one read", plain, 1 << 16, false, 1, 1, all},
		{"reads of 100", plain, 100, false, 1, 1, all},
		{"one read, first byte ahead", plain, 1 << 16, true, 1, 1, all - 12},
		{"reads of 100, first byte ahead", plain, 100, true, 1, 1, all - 12},
		{"1 MiB in reads of 4 KiB", big, 4 << 10, true, len(big) / largeBuffer, len(big)/minRun + 1, int64(len(big)) - 12 - 3},
		{"single dots", "Subject: x\r\n\r\n" + strings.Repeat(".x\r\n", 50) + ".\r\n", 1 << 16, false, 1, 1, 14},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := checkStuffed(t, []byte(tc.in), tc.step, DefaultMaxLineLength, DefaultMaxMessageBytes, 32<<10, tc.ahead)
			if got.runs < tc.min || got.runs > tc.max || got.taken != tc.taken {
				t.Fatalf("%d runs of %d bytes, want %d to %d runs of %d", got.runs, got.taken, tc.min, tc.max, tc.taken)
			}
		})
	}
}

// TestRefStuffer: the model of the upstream's stuffing is DotWriter's.
func TestRefStuffer(t *testing.T) {
	for _, m := range []string{"", "a", ".", "a\r\n.b\r\n", "\r\r\n.\n.\r.", "x\r", "x\r\n"} {
		var s refStuffer
		if got, want := s.close(s.write(nil, []byte(m))), dotWriterData([]byte(m)); !bytes.Equal(got, want) {
			t.Errorf("%q: %q, want %q", m, got, want)
		}
	}
}

// FuzzReadStuffed is TestReadStuffedMatchesRead for any input,
// segmentation, line limit, size limit and read size.
func FuzzReadStuffed(f *testing.F) {
	for _, s := range dataSeeds {
		f.Add([]byte(s), uint8(64), uint8(80), uint16(0), uint8(32), false)
		f.Add([]byte(s), uint8(3), uint8(10), uint16(12), uint8(3), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, step, limit uint8, max uint16, size uint8, ahead bool) {
		checkStuffed(t, in, int(step)%80+1, int(limit), int64(max), int(size)%100+1, ahead)
	})
}

// slowLines is a client that sends one line per read, the clock moving
// on by step at each read.
type slowLines struct {
	lines [][]byte
	clock time.Time
	step  time.Duration
	reads int
}

func (s *slowLines) now() time.Time { return s.clock }

func (s *slowLines) Read(p []byte) (int, error) {
	if len(s.lines) == 0 {
		return 0, io.EOF
	}
	s.clock = s.clock.Add(s.step)
	s.reads++
	n := copy(p, s.lines[0])
	s.lines = s.lines[1:]
	return n, nil
}

// TestReadStuffedSlowClient: ReadStuffed gathers a slow client's lines
// for no longer than holdMax before it hands them out (a line every
// 600 ms: a run spans at most a few reads), so that they reach the
// upstream about as they come, and the message still arrives whole.
func TestReadStuffedSlowClient(t *testing.T) {
	src := &slowLines{clock: time.Unix(0, 0), step: 600 * time.Millisecond}
	var want []byte
	for i := range 30 {
		l := fmt.Appendf(nil, "line %d of a slow client\r\n", i)
		src.lines = append(src.lines, l)
		want = append(want, l...)
	}
	src.lines = append(src.lines, []byte(".\r\n"))
	r := newReader(src, 1000, nil, nil)
	r.grow(true)
	d := &dataReader{r: r, now: src.now}
	most := int(holdMax/src.step) + 3
	var got []byte
	for {
		before := src.reads
		p, _, err := d.ReadStuffed()
		if len(p) > 0 {
			if reads := src.reads - before; reads > most {
				t.Fatalf("a run of %d bytes gathered over %d reads (%v), want at most %d", len(p), reads, time.Duration(reads)*src.step, most)
			}
			got = append(got, p...)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(p) == 0 {
			var b [64]byte
			n, err := d.Read(b[:])
			got = append(got, b[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}
