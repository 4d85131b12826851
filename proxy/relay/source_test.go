package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

// testTLSConfigs returns a server configuration with a fresh self-signed
// certificate and a client configuration that trusts it; both write
// records of up to 16 KiB from the start.
func testTLSConfigs(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay.test"},
		DNSNames:     []string{"relay.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	// Full records from the first write, as a bulk sender's are once
	// warm: Go starts with records of about 1 KiB otherwise.
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, DynamicRecordSizingDisabled: true},
		&tls.Config{RootCAs: pool, ServerName: "relay.test", DynamicRecordSizingDisabled: true}
}

// handshakeBoth runs the handshakes of both ends of a TLS connection.
func handshakeBoth(t testing.TB, a, b *tls.Conn) {
	t.Helper()
	errs := make(chan error, 1)
	go func() { errs <- a.Handshake() }()
	if err := b.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}

// sideOf returns a connection of the given kind: the end the relay gets
// and the end an application (client or upstream) speaks on, and the
// bytes the relay has already buffered (which the application's peer
// receives first).
func sideOf(t testing.TB, kind string) (relayEnd, appEnd net.Conn, pending []byte) {
	t.Helper()
	switch kind {
	case "pipe":
		a, b := net.Pipe()
		return a, b, nil
	}
	app, rel := pipePair(t)
	switch kind {
	case "tcp":
		return rel, app, nil
	case "waitable":
		return Waitable(rel), app, nil
	case "prefix":
		return &prefixConn{Conn: rel, pending: []byte("read ahead\r\n")}, app, []byte("read ahead\r\n")
	case "tls-waitable": // a client's TLS over Waitable, without BeginTLS: drained
		srv, cli := testTLSConfigs(t)
		r, a := tls.Server(Waitable(rel), srv), tls.Client(app, cli)
		handshakeBoth(t, r, a)
		return r, a, nil
	case "tls-framed": // a client's TLS, as imapfront lays it over Waitable
		srv, cli := testTLSConfigs(t)
		w := Waitable(rel)
		BeginTLS(w)
		r, a := tls.Server(w, srv), tls.Client(app, cli)
		handshakeBoth(t, r, a)
		return r, a, nil
	case "tls-tcp": // an upstream's TLS over its bare TCP connection
		srv, cli := testTLSConfigs(t)
		r, a := tls.Client(rel, cli), tls.Server(app, srv)
		handshakeBoth(t, r, a)
		return r, a, nil
	}
	t.Fatalf("unknown kind %q", kind)
	return nil, nil, nil
}

// expectBytes reads exactly want from c within patience.
func expectBytes(t *testing.T, c net.Conn, want []byte, what string) {
	t.Helper()
	got := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("%s: read %d bytes: %v", what, len(want), err)
	}
	c.SetReadDeadline(time.Time{})
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: bytes differ", what)
	}
}

// TestRunEverySourceKind relays, both ways, chunks of the sizes where a
// way of waiting could keep bytes back (one byte, around the small
// buffer's size, a whole TLS record, more than a copy buffer, many
// records in one go), and checks that every chunk arrives without the
// sender sending more, and that the session holds no copy buffer once
// both sides are silent.
func TestRunEverySourceKind(t *testing.T) {
	tests := []struct{ client, upstream string }{
		{"tls-framed", "tcp"},
		{"tls-framed", "tls-tcp"},
		{"tls-waitable", "tcp"},
		{"tls-waitable", "tls-tcp"},
		{"waitable", "tcp"},
		{"tcp", "tcp"},
		{"pipe", "pipe"},
		{"prefix", "prefix"},
		{"tls-waitable", "prefix"},
	}
	sizes := []int{1, smallBufferSize - 1, smallBufferSize, smallBufferSize + 1, 16 << 10, 70000}
	for _, tc := range tests {
		t.Run(tc.client+"/"+tc.upstream, func(t *testing.T) {
			clientSide, clientApp, clientPending := sideOf(t, tc.client)
			upSide, upApp, upPending := sideOf(t, tc.upstream)
			bufs := NewBuffers()
			res := make(chan Stats, 1)
			go func() { res <- Run(context.Background(), clientSide, upSide, Options{Buffers: bufs}) }()
			in, out := int64(len(clientPending)), int64(len(upPending))
			if len(clientPending) > 0 {
				expectBytes(t, upApp, clientPending, "client's read-ahead")
			}
			if len(upPending) > 0 {
				expectBytes(t, clientApp, upPending, "upstream's read-ahead")
			}
			send := func(from, to net.Conn, p []byte, what string) {
				t.Helper()
				errs := make(chan error, 1)
				go func() { _, err := from.Write(p); errs <- err }()
				expectBytes(t, to, p, what)
				if err := <-errs; err != nil {
					t.Fatalf("%s: write: %v", what, err)
				}
			}
			for _, n := range sizes {
				p := make([]byte, n)
				rand.Read(p)
				send(clientApp, upApp, p, "client → upstream")
				send(upApp, clientApp, p, "upstream → client")
				in += int64(n)
				out += int64(n)
			}
			// Many small writes at once: with TLS, many records that
			// arrive together.
			var burst bytes.Buffer
			errs := make(chan error, 1)
			go func() {
				for i := range 50 {
					line := []byte("a" + string(rune('0'+i%10)) + " NOOP\r\n")
					if _, err := clientApp.Write(line); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
			for i := range 50 {
				burst.WriteString("a" + string(rune('0'+i%10)) + " NOOP\r\n")
			}
			expectBytes(t, upApp, burst.Bytes(), "pipelined records")
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
			in += int64(burst.Len())
			deadline := time.Now().Add(patience)
			for bufs.Lent() != 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if n := bufs.Lent(); n != 0 {
				t.Errorf("an idle session holds %d copy buffers, want 0", n)
			}
			clientApp.Close()
			select {
			case st := <-res:
				if st.BytesIn != in || st.BytesOut != out || st.EndedBy != "client" {
					t.Errorf("stats = %+v, want %d in, %d out, ended by client", st, in, out)
				}
			case <-time.After(patience):
				t.Fatal("Run did not return after the client closed")
			}
			upApp.Close()
		})
	}
}

// chunkConn is a net.Conn whose reads return data in pieces of the sizes
// given in turn.
type chunkConn struct {
	net.Conn
	data  []byte
	sizes []int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(c.data)
	if len(c.sizes) > 0 {
		n = max(1, c.sizes[0])
		c.sizes = c.sizes[1:]
	}
	n = copy(p, c.data[:min(n, len(c.data))])
	c.data = c.data[n:]
	return n, nil
}

// FuzzWaitConnFraming checks that after BeginTLS a Waitable connection
// returns every byte once, in order, and no read past the end of a TLS
// record, however the bytes arrive and whatever they are.
func FuzzWaitConnFraming(f *testing.F) {
	f.Add([]byte("\x17\x03\x03\x00\x03abc\x17\x03\x03\x00\x01d"), []byte{1, 7, 2}, uint16(64))
	f.Add([]byte("\x16\x03\x01\x00\x00\x17\x03\x03\x00\x02xy"), []byte{}, uint16(3))
	f.Fuzz(func(t *testing.T, data, sizes []byte, readSize uint16) {
		cc := &chunkConn{data: bytes.Clone(data)}
		for _, s := range sizes {
			cc.sizes = append(cc.sizes, int(s))
		}
		w := Waitable(cc).(*waitConn)
		BeginTLS(w)
		// Where records end, by the same rules, read from the input.
		var ends []int
		for i := 0; i+tlsHeaderLen <= len(data); {
			i += tlsHeaderLen + (int(data[i+3])<<8 | int(data[i+4]))
			ends = append(ends, i)
		}
		var got []byte
		p := make([]byte, int(readSize)%(20<<10)+1)
		for round := 0; ; round++ {
			if round%3 == 0 {
				if err := w.waitReadable(); err != nil {
					break
				}
			}
			n, err := w.Read(p)
			start := len(got)
			got = append(got, p[:n]...)
			for _, e := range ends {
				if start < e && len(got) > e {
					t.Fatalf("a read returned bytes %d..%d, past the record end at %d", start, len(got), e)
				}
			}
			if err != nil {
				break
			}
			if n == 0 {
				t.Fatal("a read returned nothing and no error")
			}
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read %d bytes, want the %d given in order", len(got), len(data))
		}
	})
}

// TestRunTLSBufferedBeforeRun: what TLS decrypted before Run — the rest
// of a 16 KiB record whose first line a front read through its 4 KiB
// reader, as imapfront reads a LOGIN with commands pipelined behind it in
// the same record — reaches the upstream without the client sending
// anything more, over each kind of TLS source.
func TestRunTLSBufferedBeforeRun(t *testing.T) {
	for _, kind := range []string{"tls-framed", "tls-waitable", "tls-tcp"} {
		t.Run(kind, func(t *testing.T) {
			clientSide, clientApp, _ := sideOf(t, kind)
			upSide, upApp, _ := sideOf(t, "tcp")
			record := make([]byte, 16<<10)
			for i := range record {
				record[i] = 'a' + byte(i%26)
			}
			copy(record, "a LOGIN user secret\r\n")
			writeErr := make(chan error, 1)
			go func() { _, err := clientApp.Write(record); writeErr <- err }()
			// The front: a line through a 4 KiB reader, the rest of its
			// buffer handed on.
			br := bufio.NewReaderSize(clientSide, 4096)
			clientSide.SetReadDeadline(time.Now().Add(patience))
			line, err := br.ReadString('\n')
			if err != nil || line != "a LOGIN user secret\r\n" {
				t.Fatalf("front read %q, %v", line, err)
			}
			clientSide.SetReadDeadline(time.Time{})
			if err := <-writeErr; err != nil {
				t.Fatal(err)
			}
			res := make(chan Stats, 1)
			go func() {
				res <- Run(context.Background(), WithBuffered(clientSide, br), upSide, Options{Buffers: NewBuffers()})
			}()
			expectBytes(t, upApp, record[len(line):], "the record's rest")
			clientApp.Close()
			select {
			case st := <-res:
				if st.BytesIn != int64(len(record)-len(line)) {
					t.Errorf("BytesIn = %d, want %d", st.BytesIn, len(record)-len(line))
				}
			case <-time.After(patience):
				t.Fatal("Run did not return after the client closed")
			}
			upApp.Close()
		})
	}
}
