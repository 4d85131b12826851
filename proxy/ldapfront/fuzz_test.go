package ldapfront

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/ldapwire"
)

// FuzzReadMessage feeds arbitrary bytes to the message reader and the
// decoders of what passgate reads before a bind (BindRequest, ExtendedRequest
// including StartTLS and WhoAmI, Abandon) and checks properties, not only
// the absence of panics: the size cap holds, what is returned is a prefix of
// the input, the envelope round-trips, and a decoded bind re-encodes to the
// same fields.
func FuzzReadMessage(f *testing.F) {
	f.Add(encodeBind(1, "uid=alice,ou=people,dc=example,dc=test", "abcd efgh ijkl mnop"))
	f.Add(encodeBind(2, "alice@example.test", ""))
	f.Add(encodeBind(maxMessageID, `EXAMPLE\alice`, "p\x00w"))
	f.Add(encodeExtended(1, oidStartTLS))
	f.Add(encodeExtended(3, oidWhoAmI))
	f.Add(encodeSearch(4, "dc=example,dc=test", []byte{0xa0, 0x05, 0x30, 0x03, 0x04, 0x01, 'x'}))
	f.Add(envelope(5, []byte{0x50, 0x01, 0x04}, nil))
	f.Add([]byte{0x30, 0x05, 0x02, 0x01, 0x03, 0x42, 0x00})
	f.Add([]byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte{0x30, 0x80, 0x02, 0x01, 0x01, 0x00, 0x00})
	f.Add(append(encodeBind(1, "a", "b"), encodeExtended(2, oidStartTLS)...))
	const max = 512
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		consumed := 0
		for {
			raw, err := ldapwire.ReadMessage(br, max)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ldapwire.ErrTooLarge) && !errors.Is(err, ldapwire.ErrMalformed) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if len(raw) > max+10 {
				t.Fatalf("message of %d bytes passed a cap of %d", len(raw), max)
			}
			if !bytes.Equal(raw, in[consumed:consumed+len(raw)]) {
				t.Fatal("returned bytes are not the input's")
			}
			consumed += len(raw)
			checkMessage(t, raw)
		}
	})
}

func checkMessage(t *testing.T, raw []byte) {
	m, err := ldapwire.ParseMessage(raw)
	if err != nil {
		return
	}
	again, err := ldapwire.ParseMessage(envelope(m.ID, m.Op.Raw, m.Controls))
	if err != nil || again.ID != m.ID || !bytes.Equal(again.Op.Raw, m.Op.Raw) || !bytes.Equal(again.Controls, m.Controls) {
		t.Fatalf("envelope does not round-trip: %v", err)
	}
	// The relay's check for a client's own proxied authorization control
	// agrees with the list of the controls' types; with malformed
	// controls it refuses, as malformed or (when the control comes
	// before the damage) as the client's own.
	oids, oidsErr := controlOIDs(m.Controls)
	own, ownErr := hasProxyAuthz(m.Controls)
	listed := false
	for _, o := range oids {
		listed = listed || o == oidProxiedAuthz || o == oidProxiedAuthzV1
	}
	if (oidsErr == nil && (ownErr != nil || own != listed)) || (oidsErr != nil && ownErr == nil && !own) {
		t.Fatalf("hasProxyAuthz = %v, %v; controls %q, %v", own, ownErr, oids, oidsErr)
	}
	switch m.Op.Tag {
	case opBindRequest:
		b, err := decodeBind(m.Op)
		if err != nil || !b.simple {
			return
		}
		re, err := ldapwire.ParseMessage(encodeBind(m.ID, b.name, string(b.password)))
		if err != nil {
			t.Fatal(err)
		}
		b2, err := decodeBind(re.Op)
		if err != nil || b2.name != b.name || !bytes.Equal(b2.password, b.password) || b2.version != 3 {
			t.Fatalf("bind does not re-encode: %+v vs %+v (%v)", b2, b, err)
		}
	case opExtendedRequest:
		e, err := decodeExtended(m.Op)
		if err == nil && e.oid == "" {
			t.Fatal("extended request without a name decoded")
		}
	case opAbandonRequest:
		if id, err := decodeAbandon(m.Op); err == nil && (id < 0 || id > maxMessageID) {
			t.Fatalf("abandon of id %d", id)
		}
	}
}

// FuzzConn feeds arbitrary bytes to a whole connection (over net.Pipe,
// with the fake decision and directory of server_test.go) and checks that
// the connection always ends once the client hangs up, whatever it sent:
// no deadlock between the reader, the executor and the relay.
func FuzzConn(f *testing.F) {
	f.Add(bytes.Join([][]byte{encodeBind(1, aliceDN, alicePW), encodeSearch(2, aliceDN, nil), envelope(3, []byte{0x50, 0x01, 0x02}, nil)}, nil))
	f.Add(bytes.Join([][]byte{encodeBind(1, wikiDN, wikiPW), encodeSearch(2, aliceDN, nil), encodeExtended(3, oidWhoAmI)}, nil))
	f.Add(bytes.Join([][]byte{encodeExtended(1, oidStartTLS), encodeBind(2, aliceDN, alicePW)}, nil))
	f.Add(bytes.Join([][]byte{encodeBind(1, "alice@example.test", "x"), encodeBind(2, "", ""), []byte{0x30, 0x05, 0x02, 0x01, 0x03, 0x42, 0x00}}, nil))
	f.Fuzz(func(t *testing.T, in []byte) {
		srv, err := New(Options{Decider: newFakeDecider(t, true), Upstream: &fakeUpstream{},
			UserDNTemplates: []string{template}, MaxMessageBytes: 4096})
		if err != nil {
			t.Fatal(err)
		}
		client, server := net.Pipe()
		c := srv.newConn(server)
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.serve()
		}()
		go io.Copy(io.Discard, client)
		client.SetWriteDeadline(time.Now().Add(time.Second))
		client.Write(in)
		client.Close()
		select {
		case <-done:
		case <-time.After(patience):
			t.Fatal("connection did not end after the client hung up")
		}
	})
}
