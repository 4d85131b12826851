package ldapfront

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"

	"github.com/passgate/passgate/backends/ldapwire"
)

// encodeBind builds a BindRequest message with asn1-ber, as a client would.
func encodeBind(id int64, name, password string) []byte {
	p := ber.Encode(ber.ClassApplication, ber.TypeConstructed, opBindRequest, nil, "")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(3), ""))
	p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, name, ""))
	p.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, password, ""))
	return envelope(id, p.Bytes(), nil)
}

func encodeExtended(id int64, oid string) []byte {
	p := ber.Encode(ber.ClassApplication, ber.TypeConstructed, opExtendedRequest, nil, "")
	p.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, oid, ""))
	return envelope(id, p.Bytes(), nil)
}

// encodeSearch builds a base-object search for (objectClass=*) of dn.
func encodeSearch(id int64, dn string, controls []byte) []byte {
	p := ber.Encode(ber.ClassApplication, ber.TypeConstructed, opSearchRequest, nil, "")
	p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, ""))
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(0), ""))
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(0), ""))
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(0), ""))
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(0), ""))
	p.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, ""))
	p.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 7, "objectClass", ""))
	p.AppendChild(ber.NewSequence(""))
	return envelope(id, p.Bytes(), controls)
}

func TestReadMessage(t *testing.T) {
	bind := encodeBind(1, "uid=alice,ou=people,dc=example,dc=test", "secret")
	long := encodeBind(2, strings.Repeat("a", 300), "pw") // long-form length
	cases := []struct {
		name string
		in   []byte
		max  int
		want []byte
		err  error
	}{
		{"ok/bind", bind, 1 << 20, bind, nil},
		{"ok/long-form-length", long, 1 << 20, long, nil},
		{"ok/exactly-at-cap", bind, len(bind) - 2, bind, nil},
		{"fail/one-over-cap", bind, len(bind) - 3, nil, ldapwire.ErrTooLarge},
		{"fail/declares-2GiB", []byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff}, 1 << 20, nil, ldapwire.ErrTooLarge},
		{"fail/declares-huge-8-octets", []byte{0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 1 << 20, nil, ldapwire.ErrTooLarge},
		{"fail/nine-length-octets", []byte{0x30, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 1 << 20, nil, ldapwire.ErrMalformed},
		{"fail/indefinite-length", []byte{0x30, 0x80, 0x02, 0x01, 0x01, 0, 0}, 1 << 20, nil, ldapwire.ErrMalformed},
		{"fail/not-a-sequence", []byte{0x31, 0x03, 0x02, 0x01, 0x01}, 1 << 20, nil, ldapwire.ErrMalformed},
		{"fail/tls-client-hello", []byte{0x16, 0x03, 0x01, 0x00, 0xa5}, 1 << 20, nil, ldapwire.ErrMalformed},
		{"fail/truncated-content", bind[:len(bind)-1], 1 << 20, nil, io.ErrUnexpectedEOF},
		{"fail/truncated-length", []byte{0x30, 0x82, 0x01}, 1 << 20, nil, io.ErrUnexpectedEOF},
		{"eof/between-messages", nil, 1 << 20, nil, io.EOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ldapwire.ReadMessage(bufio.NewReader(bytes.NewReader(tc.in)), tc.max)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %x, want %x", got, tc.want)
			}
		})
	}
}

// TestReadMessageAllocatesNothingForOversized: a header that declares 2 GiB
// is refused without allocating from the declared length.
func TestReadMessageAllocatesNothingForOversized(t *testing.T) {
	hdr := []byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff}
	r := bytes.NewReader(hdr)
	br := bufio.NewReaderSize(r, 16)
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(hdr)
		br.Reset(r)
		if _, err := ldapwire.ReadMessage(br, 1<<20); !errors.Is(err, ldapwire.ErrTooLarge) {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Fatalf("%v allocations for a refused header", allocs)
	}
}

func TestParseMessage(t *testing.T) {
	ctl := []byte{0xa0, 0x05, 0x30, 0x03, 0x04, 0x01, 'x'}
	search := encodeSearch(7, "dc=example,dc=test", ctl)
	cases := []struct {
		name    string
		in      []byte
		id      int64
		tag     int
		ctlOIDs []string
		err     bool
	}{
		{"ok/bind", encodeBind(1, "cn=x", "y"), 1, opBindRequest, nil, false},
		{"ok/max-id", encodeBind(maxMessageID, "", ""), maxMessageID, opBindRequest, nil, false},
		{"ok/search-with-control", search, 7, opSearchRequest, []string{"x"}, false},
		{"ok/unbind", []byte{0x30, 0x05, 0x02, 0x01, 0x03, 0x42, 0x00}, 3, opUnbindRequest, nil, false},
		{"fail/negative-id", []byte{0x30, 0x05, 0x02, 0x01, 0xff, 0x42, 0x00}, 0, 0, nil, true},
		{"fail/id-too-big", []byte{0x30, 0x09, 0x02, 0x05, 0x00, 0x80, 0x00, 0x00, 0x00, 0x42, 0x00}, 0, 0, nil, true},
		{"fail/no-op", []byte{0x30, 0x03, 0x02, 0x01, 0x01}, 0, 0, nil, true},
		{"fail/op-not-application", []byte{0x30, 0x05, 0x02, 0x01, 0x01, 0x04, 0x00}, 0, 0, nil, true},
		{"fail/trailing-garbage", append(encodeBind(1, "a", "b"), 0x00), 0, 0, nil, true},
		{"fail/element-past-end", []byte{0x30, 0x05, 0x02, 0x01, 0x01, 0x42, 0x05}, 0, 0, nil, true},
		{"fail/high-tag-number", []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x5f, 0x1f, 0x00}, 0, 0, nil, true},
		{"fail/extra-after-controls", []byte{0x30, 0x09, 0x02, 0x01, 0x01, 0x42, 0x00, 0xa0, 0x00, 0x04, 0x00}, 0, 0, nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ldapwire.ParseMessage(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if m.ID != tc.id || m.Op.Tag != tc.tag {
				t.Fatalf("id %d tag %d, want %d %d", m.ID, m.Op.Tag, tc.id, tc.tag)
			}
			oids, err := controlOIDs(m.Controls)
			if err != nil || strings.Join(oids, ",") != strings.Join(tc.ctlOIDs, ",") {
				t.Fatalf("controls %v %v, want %v", oids, err, tc.ctlOIDs)
			}
			// The envelope round-trips byte for byte.
			if got := envelope(m.ID, m.Op.Raw, m.Controls); !bytes.Equal(got, tc.in) {
				t.Fatalf("envelope: %x, want %x", got, tc.in)
			}
		})
	}
}

func TestDecodeBind(t *testing.T) {
	sasl := func() []byte {
		p := ber.Encode(ber.ClassApplication, ber.TypeConstructed, opBindRequest, nil, "")
		p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(3), ""))
		p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", ""))
		s := ber.Encode(ber.ClassContext, ber.TypeConstructed, 3, nil, "")
		s.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "EXTERNAL", ""))
		p.AppendChild(s)
		return envelope(1, p.Bytes(), nil)
	}()
	cases := []struct {
		name     string
		in       []byte
		want     bindRequest
		malforms bool
	}{
		{"ok/simple", encodeBind(1, "uid=a,dc=x", "p w\x00"), bindRequest{version: 3, name: "uid=a,dc=x", simple: true, password: []byte("p w\x00")}, false},
		{"ok/anonymous", encodeBind(1, "", ""), bindRequest{version: 3, simple: true, password: []byte{}}, false},
		{"ok/sasl", sasl, bindRequest{version: 3}, false},
		{"fail/two-fields", envelope(1, []byte{0x60, 0x05, 0x02, 0x01, 0x03, 0x04, 0x00}, nil), bindRequest{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ldapwire.ParseMessage(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeBind(m.Op)
			if (err != nil) != tc.malforms {
				t.Fatalf("err = %v", err)
			}
			if err == nil && (got.version != tc.want.version || got.name != tc.want.name || got.simple != tc.want.simple || !bytes.Equal(got.password, tc.want.password)) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeExtended(t *testing.T) {
	m, _ := ldapwire.ParseMessage(encodeExtended(4, oidStartTLS))
	got, err := decodeExtended(m.Op)
	if err != nil || got.oid != oidStartTLS || got.hasValue {
		t.Fatalf("StartTLS: %+v %v", got, err)
	}
	m, _ = ldapwire.ParseMessage(envelope(5, []byte{0x77, 0x00}, nil))
	if _, err := decodeExtended(m.Op); err == nil {
		t.Fatal("an ExtendedRequest without a name decoded")
	}
}

func TestResultEncoding(t *testing.T) {
	got := envelope(3, resultOp(opBindResponse, resultInvalidCredentials, failureMessage), nil)
	p, err := ber.DecodePacketErr(got)
	if err != nil {
		t.Fatal(err)
	}
	if p.Children[0].Value.(int64) != 3 || p.Children[1].Tag != opBindResponse ||
		p.Children[1].Children[0].Value.(int64) != 49 || p.Children[1].Children[2].Value.(string) != failureMessage {
		t.Fatalf("bind response decodes as %s", ber.DescribePacket(p))
	}
	for _, id := range []int64{0, 1, 127, 128, 255, 256, 65535, 1 << 24, maxMessageID} {
		b := ldapwire.AppendInt(nil, id)
		if v, ok := ldapwire.ParseUint31(b[2:]); !ok || v != id {
			t.Fatalf("INTEGER %d encodes as %x, decodes as %d %v", id, b, v, ok)
		}
	}
}

// controlOIDs lists the controlType of every control in a [0] Controls
// element.
func controlOIDs(controls []byte) ([]string, error) {
	var oids []string
	err := walkControls(controls, func(oid []byte) bool {
		oids = append(oids, string(oid))
		return true
	})
	if err != nil {
		return nil, err
	}
	return oids, nil
}

func TestHasProxyAuthz(t *testing.T) {
	ctl := func(oid string) []byte {
		p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
		p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, oid, ""))
		return p.Bytes()
	}
	wrap := func(ctls ...[]byte) []byte {
		c := bytes.Join(ctls, nil)
		return append(ldapwire.AppendLength([]byte{0xa0}, len(c)), c...)
	}
	tests := []struct {
		name     string
		controls []byte
		want     bool
		err      bool
	}{
		{"ok/none", nil, false, false},
		{"ok/empty", wrap(), false, false},
		{"ok/paging", wrap(ctl("1.2.840.113556.1.4.319")), false, false},
		{"ok/proxy-authz", wrap(ctl("1.2.840.113556.1.4.319"), ctl(oidProxiedAuthz)), true, false},
		{"ok/proxy-authz-v1", wrap(ctl(oidProxiedAuthzV1)), true, false},
		{"ok/prefix-of-oid", wrap(ctl(oidProxiedAuthz[:10])), false, false},
		{"fail/malformed-after", wrap(ctl("1.2.3"), []byte{0x30, 0x02, 0x02, 0x00}), false, true},
		{"fail/not-a-sequence", wrap([]byte{0x04, 0x01, 'x'}), false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := hasProxyAuthz(tc.controls)
			if got != tc.want || (err != nil) != tc.err {
				t.Fatalf("hasProxyAuthz = %v, %v; want %v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}
