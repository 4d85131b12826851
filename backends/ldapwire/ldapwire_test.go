package ldapwire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// bindRequest is a minimal BindRequest (message ID 1, name "a", password "p").
var bindRequest = []byte{0x30, 0x0c, 0x02, 0x01, 0x01, 0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x01, 'a', 0x80, 0x01, 'p'}

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

// FuzzReadMessage checks that reading and parsing never panic, that the
// cap holds, and that what parses re-encodes to the same message.
func FuzzReadMessage(f *testing.F) {
	f.Add(bindRequest)
	f.Add([]byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 1 << 12
		raw, err := ReadMessage(bufio.NewReader(bytes.NewReader(in)), max)
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
