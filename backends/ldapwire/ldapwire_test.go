package ldapwire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// bindRequest is a minimal BindRequest (message ID 1, name "a", password "p").
var bindRequest = []byte{0x30, 0x0e, 0x02, 0x01, 0x01, 0x60, 0x09, 0x02, 0x01, 0x03, 0x04, 0x01, 'a', 0x80, 0x01, 'p'}

func TestReadAndParse(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		max  int
		err  error
	}{
		{"ok/bind", bindRequest, 1 << 10, nil},
		{"fail/over-cap", bindRequest, 8, ErrTooLarge},
		{"fail/declares-2GiB", []byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff}, 1 << 20, ErrTooLarge},
		{"fail/indefinite", []byte{0x30, 0x80, 0, 0}, 1 << 20, ErrMalformed},
		{"fail/not-a-sequence", []byte{0x31, 0x03, 0x02, 0x01, 0x01}, 1 << 20, ErrMalformed},
		{"fail/cut-short", bindRequest[:10], 1 << 10, io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The shared reader agrees, whether the message fits in its
			// buffer (16 bytes, bufio's least) or not.
			for _, size := range []int{16, 4096} {
				shared, serr := ReadMessageShared(bufio.NewReaderSize(bytes.NewReader(tc.in), size), tc.max)
				if !errors.Is(serr, tc.err) {
					t.Fatalf("ReadMessageShared (buffer %d) error = %v, want %v", size, serr, tc.err)
				}
				if serr == nil && !bytes.Equal(shared, tc.in) {
					t.Fatalf("ReadMessageShared (buffer %d) = % x, want % x", size, shared, tc.in)
				}
			}
			raw, err := ReadMessage(bufio.NewReader(bytes.NewReader(tc.in)), tc.max)
			if !errors.Is(err, tc.err) {
				t.Fatalf("ReadMessage error = %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			m, err := ParseMessage(raw)
			if err != nil || m.ID != 1 || m.Op.Class != ClassApplication || m.Op.Tag != 0 || m.Controls != nil {
				t.Fatalf("ParseMessage = %+v, %v", m, err)
			}
			if got := Envelope(m.ID, m.Op.Raw, m.Controls); !bytes.Equal(got, raw) {
				t.Errorf("Envelope = % x, want % x", got, raw)
			}
		})
	}
}

// TestReadMessageShared: a message that fits in the reader's buffer is
// that buffer, valid until the next read; ReadMessage's is a copy; a
// message longer than the buffer is read into memory of its own; two
// messages in a row are read one after the other.
func TestReadMessageShared(t *testing.T) {
	long := Envelope(2, append([]byte{0x63, 0x81, 0x20}, bytes.Repeat([]byte{'x'}, 0x20)...), nil)
	in := append(append([]byte(nil), bindRequest...), long...)
	br := bufio.NewReaderSize(bytes.NewReader(in), 32)
	first, err := ReadMessageShared(br, 1<<10)
	if err != nil || !bytes.Equal(first, bindRequest) {
		t.Fatalf("first message = % x, %v", first, err)
	}
	if peeked, _ := br.Peek(0); cap(first) < len(first) || &first[:cap(first)][cap(first)-1] != &peeked[:cap(peeked)][cap(peeked)-1] {
		t.Error("a message that fits in the buffer was copied")
	}
	second, err := ReadMessageShared(br, 1<<10)
	if err != nil || !bytes.Equal(second, long) {
		t.Fatalf("second message (longer than the buffer) = % x, %v", second, err)
	}
	if _, err := ReadMessageShared(br, 1<<10); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last message: %v, want io.EOF", err)
	}
	br = bufio.NewReaderSize(bytes.NewReader(bindRequest), 32)
	owned, err := ReadMessage(br, 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	if peeked, _ := br.Peek(0); &owned[:cap(owned)][cap(owned)-1] == &peeked[:cap(peeked)][cap(peeked)-1] {
		t.Error("ReadMessage returned the reader's buffer")
	}
}

func TestAppendEnvelope(t *testing.T) {
	tests := []struct {
		name         string
		id           int64
		op, controls []byte
	}{
		{"short", 1, []byte{0x42, 0x00}, nil},
		{"controls", 300, []byte{0x42, 0x00}, []byte{0xa0, 0x02, 0x30, 0x00}},
		{"long-form-length", MaxMessageID, append([]byte{0x64, 0x81, 0xc8}, bytes.Repeat([]byte{0}, 200)...), nil},
		{"id-with-high-bit", 128, []byte{0x42, 0x00}, nil},
	}
	var batch []byte
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			one := Envelope(tc.id, tc.op, tc.controls)
			if len(one) != EnvelopeLen(tc.id, len(tc.op)+len(tc.controls)) {
				t.Errorf("EnvelopeLen = %d, Envelope is %d bytes", EnvelopeLen(tc.id, len(tc.op)+len(tc.controls)), len(one))
			}
			m, err := ParseMessage(one)
			if err != nil || m.ID != tc.id || !bytes.Equal(m.Op.Raw, tc.op) || !bytes.Equal(m.Controls, tc.controls) {
				t.Fatalf("ParseMessage(Envelope) = %+v, %v", m, err)
			}
			before := len(batch)
			batch = AppendEnvelope(batch, tc.id, tc.op, tc.controls)
			if !bytes.Equal(batch[before:], one) {
				t.Errorf("AppendEnvelope appended % x, want % x", batch[before:], one)
			}
		})
	}
}

// FuzzReadMessage checks that reading and parsing never panic, that the
// cap holds, and that what parses re-encodes to the same message.
func FuzzReadMessage(f *testing.F) {
	f.Add(bindRequest)
	f.Add([]byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 1 << 12
		raw, err := ReadMessage(bufio.NewReader(bytes.NewReader(in)), max)
		// The shared reader, with a buffer that a message may or may not
		// fit in, returns the same bytes and the same error.
		shared, serr := ReadMessageShared(bufio.NewReaderSize(bytes.NewReader(in), 16), max)
		if !errors.Is(serr, err) && !(err != nil && serr != nil && serr.Error() == err.Error()) || !bytes.Equal(shared, raw) {
			t.Fatalf("ReadMessageShared = % x, %v; ReadMessage = % x, %v", shared, serr, raw, err)
		}
		if err != nil {
			return
		}
		if len(raw) > max+10 {
			t.Fatalf("read %d bytes with a cap of %d", len(raw), max)
		}
		m, err := ParseMessage(raw)
		if err != nil {
			return
		}
		again, err := ParseMessage(Envelope(m.ID, m.Op.Raw, m.Controls))
		if err != nil || again.ID != m.ID || !bytes.Equal(again.Op.Raw, m.Op.Raw) || !bytes.Equal(again.Controls, m.Controls) {
			t.Fatalf("re-encoded message differs: %+v, %v", again, err)
		}
	})
}
