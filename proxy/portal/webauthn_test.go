package portal_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/passgate/passgate/backends/store"
)

// softKey is a software authenticator: one ES256 passkey, attestation
// "none", as a browser's virtual authenticator makes.
type softKey struct {
	t      *testing.T
	rpID   string
	origin string
	key    *ecdsa.PrivateKey
	id     []byte
	count  uint32
}

var b64 = base64.RawURLEncoding

func newSoftKey(t *testing.T, origin string) *softKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	u, _ := url.Parse(origin)
	return &softKey{t: t, rpID: u.Hostname(), origin: origin, key: k, id: id}
}

func (k *softKey) authData(flags byte, attested []byte) []byte {
	h := sha256.Sum256([]byte(k.rpID))
	k.count++
	out := append(h[:], flags)
	out = binary.BigEndian.AppendUint32(out, k.count)
	return append(out, attested...)
}

func (k *softKey) clientData(typ string, challenge string) []byte {
	b, _ := json.Marshal(map[string]any{"type": typ, "challenge": challenge, "origin": k.origin, "crossOrigin": false})
	return b
}

// challenge reads publicKey.challenge from a ceremony's options.
func challenge(t *testing.T, body string) string {
	var opts struct {
		PublicKey struct {
			Challenge string `json:"challenge"`
		} `json:"publicKey"`
	}
	if err := json.Unmarshal([]byte(body), &opts); err != nil || opts.PublicKey.Challenge == "" {
		t.Fatalf("no challenge in the options (%v):\n%s", err, body)
	}
	return opts.PublicKey.Challenge
}

// create answers navigator.credentials.create.
func (k *softKey) create(options string) string {
	cose, err := cbor.Marshal(map[int]any{1: 2, 3: -7, -1: 1, -2: k.key.X.FillBytes(make([]byte, 32)), -3: k.key.Y.FillBytes(make([]byte, 32))})
	if err != nil {
		k.t.Fatal(err)
	}
	att := make([]byte, 16) // AAGUID
	att = binary.BigEndian.AppendUint16(att, uint16(len(k.id)))
	att = append(append(att, k.id...), cose...)
	ao, err := cbor.Marshal(map[string]any{"fmt": "none", "attStmt": map[string]any{}, "authData": k.authData(0x45, att)})
	if err != nil {
		k.t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"id": b64.EncodeToString(k.id), "rawId": b64.EncodeToString(k.id), "type": "public-key",
		"response": map[string]any{"clientDataJSON": b64.EncodeToString(k.clientData("webauthn.create", challenge(k.t, options))), "attestationObject": b64.EncodeToString(ao)}})
	return string(b)
}

// get answers navigator.credentials.get.
func (k *softKey) get(options string) string {
	cd := k.clientData("webauthn.get", challenge(k.t, options))
	ad := k.authData(0x05, nil)
	h := sha256.Sum256(cd)
	digest := sha256.Sum256(append(append([]byte{}, ad...), h[:]...))
	sig, err := ecdsa.SignASN1(rand.Reader, k.key, digest[:])
	if err != nil {
		k.t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"id": b64.EncodeToString(k.id), "rawId": b64.EncodeToString(k.id), "type": "public-key",
		"response": map[string]any{"clientDataJSON": b64.EncodeToString(cd), "authenticatorData": b64.EncodeToString(ad), "signature": b64.EncodeToString(sig)}})
	return string(b)
}

func (b *browser) postJSON(path, body string) resp {
	b.t.Helper()
	req, _ := http.NewRequest("POST", b.h.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	r, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("POST %s: %v", path, err)
	}
	defer r.Body.Close()
	raw, _ := io.ReadAll(r.Body)
	return resp{status: r.StatusCode, body: string(raw), header: r.Header, url: r.Request.URL.Path}
}

// TestPasskey registers a passkey as the first second factor and signs in
// with it.
func TestPasskey(t *testing.T) {
	h := newHarness(t, nil)
	origin := "https://localhost:" + strings.Split(h.srv.URL, ":")[2]
	key := newSoftKey(t, origin)
	b := h.browser()
	b.signIn("alice", "alice-pw")
	mustContain(t, b.get("/add/passkey"), `<label for="name">Name</label>`, ">Next</button>")
	first := b.cookie()
	r := b.post("/add/passkey/begin", url.Values{"name": {"YubiKey"}})
	if r.status != http.StatusOK {
		t.Fatalf("begin registration: %d %s", r.status, r.body)
	}
	r = b.postJSON("/add/passkey/finish", key.create(r.body))
	if r.status != http.StatusOK || !strings.Contains(r.body, `"redirect":"/security-info"`) {
		t.Fatalf("finish registration: %d %s", r.status, r.body)
	}
	if b.cookie() == first {
		t.Fatal("the session id did not change at registration")
	}
	mustContain(t, b.get("/security-info"), `<span class="kind">Passkey</span><span class="name">YubiKey</span>`, `aria-label="Delete YubiKey"`)
	if st, _ := h.st.UserMFA(t.Context(), "alice"); st != store.MFAEnforced {
		t.Fatalf("state after a passkey = %s", st)
	}

	b2 := h.browser()
	b2.signIn("alice", "alice-pw")
	mustContain(t, b2.get("/signin/verify"), ">Use a passkey</button>")
	r = b2.post("/signin/passkey/begin", url.Values{})
	opts := r.body
	// A wrong signature is refused with the one message.
	bad := strings.Replace(key.get(opts), `"signature":"`, `"signature":"AAAA`, 1)
	if r := b2.postJSON("/signin/passkey/finish", bad); r.status != http.StatusUnauthorized || !strings.Contains(r.body, "We couldn") {
		t.Fatalf("bad signature: %d %s", r.status, r.body)
	}
	r = b2.post("/signin/passkey/begin", url.Values{})
	r = b2.postJSON("/signin/passkey/finish", key.get(r.body))
	if r.status != http.StatusOK || !strings.Contains(r.body, `"redirect":"/security-info"`) {
		t.Fatalf("passkey sign-in: %d %s", r.status, r.body)
	}
	if r := b2.get("/security-info"); r.url != "/security-info" {
		t.Fatalf("after the passkey: at %s", r.url)
	}
	// A replayed assertion (same challenge, used) is refused.
	if r := b2.postJSON("/signin/passkey/finish", key.get(opts)); r.status == http.StatusOK {
		t.Fatal("a second finish without a ceremony was accepted")
	}
}

// FuzzPasskeyFinish posts arbitrary bodies as the answer to a passkey
// sign-in ceremony: none may sign in, and the server must not fail.
func FuzzPasskeyFinish(f *testing.F) {
	h := newHarness(f, nil)
	origin := "https://localhost:" + strings.Split(h.srv.URL, ":")[2]
	key := newSoftKey(&testing.T{}, origin)
	b := h.browser()
	b.signIn("alice", "alice-pw")
	r := b.post("/add/passkey/begin", url.Values{"name": {"k"}})
	if r := b.postJSON("/add/passkey/finish", key.create(r.body)); r.status != http.StatusOK {
		f.Fatalf("register: %d %s", r.status, r.body)
	}
	r = b.post("/signin/passkey/begin", url.Values{})
	f.Add(`{}`)
	f.Add(`{"id":"AA","rawId":"AA","type":"public-key","response":{"clientDataJSON":"e30","authenticatorData":"","signature":""}}`)
	f.Add(strings.Replace(key.get(`{"publicKey":{"challenge":"AAAA"}}`), "AAAA", "BBBB", 1))
	f.Fuzz(func(t *testing.T, body string) {
		c := h.browserFor(t)
		c.signIn("alice", "alice-pw")
		c.post("/signin/passkey/begin", url.Values{})
		r := c.postJSON("/signin/passkey/finish", body)
		if r.status == http.StatusOK || r.status >= 500 {
			t.Fatalf("finish with %q = %d %s", body, r.status, r.body)
		}
	})
}
