package smtpfront

import (
	"bytes"
	"cmp"
	"errors"
	"log/slog"
	"strconv"
	"unicode/utf8"

	"github.com/emersion/go-sasl"

	"github.com/passgate/passgate/policy"
)

// Bounds on decoded SASL fields. A user name longer than maxUserLen or a
// password longer than maxSecretLen is refused like a wrong password.
const (
	maxUserLen   = 256
	maxSecretLen = 1024
)

// The exact AUTH LOGIN prompts Outlook expects: "334 VXNlcm5hbWU6" and
// "334 UGFzc3dvcmQ6" once base64-encoded by go-smtp.
const (
	loginUserPrompt = "Username:"
	loginPassPrompt = "Password:"
)

// errMalformed marks SASL input that cannot be a credential. The client
// gets the same 535 as for a wrong password.
var errMalformed = errors.New("smtpfront: malformed SASL response")

// errSASLDone is returned when a SASL exchange is driven past its end.
var errSASLDone = errors.New("smtpfront: SASL exchange already finished")

// credentials are what a SASL exchange yields. fmt would print pass
// through reflection (unexported fields bypass Secret's String), so
// credentials has String, GoString and LogValue methods of its own that
// leave the secret out.
type credentials struct {
	authzid, user string
	pass          policy.Secret
}

// String prints the identities and "REDACTED" for the secret.
func (c credentials) String() string {
	return "credentials{authzid:" + strconv.Quote(c.authzid) + " user:" + strconv.Quote(c.user) + " pass:REDACTED}"
}

// GoString is String, for %#v.
func (c credentials) GoString() string { return c.String() }

// LogValue leaves the secret out of logs.
func (c credentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// authFunc is called once per exchange with the decoded credentials, or
// with a non-nil err when the input was malformed; it returns the error
// the client is to see (an *smtp.SMTPError) or nil for success.
type authFunc func(c credentials, err error) error

// checkField refuses a field that cannot be part of a credential: a NUL
// (it could not be passed on in PLAIN), invalid UTF-8 is allowed (printers
// send Latin-1), but empty or oversized values are not.
func checkField(b []byte, max int) error {
	if len(b) == 0 || len(b) > max || bytes.IndexByte(b, 0) >= 0 {
		return errMalformed
	}
	return nil
}

// decodePlain splits a SASL PLAIN response (RFC 4616):
// [authzid] NUL authcid NUL passwd. authcid and passwd must be non-empty.
func decodePlain(b []byte) (credentials, error) {
	parts := bytes.SplitN(b, []byte{0}, 3)
	if len(parts) != 3 || len(parts[0]) > maxUserLen || !utf8.Valid(parts[0]) {
		return credentials{}, errMalformed
	}
	authzid, user, pass := parts[0], parts[1], parts[2]
	if err := cmp.Or(checkField(user, maxUserLen), checkField(pass, maxSecretLen)); err != nil {
		return credentials{}, err
	}
	return credentials{authzid: string(authzid), user: string(user), pass: policy.Secret(pass)}, nil
}

// plainServer is SASL PLAIN with or without an initial response.
type plainServer struct {
	auth  authFunc
	asked bool
	done  bool
}

var _ sasl.Server = (*plainServer)(nil)

func (p *plainServer) Next(resp []byte) ([]byte, bool, error) {
	if p.done {
		return nil, true, errSASLDone
	}
	if resp == nil && !p.asked {
		// No initial response: ask for it with an empty challenge ("334 ").
		p.asked = true
		return []byte{}, false, nil
	}
	p.done = true
	c, err := decodePlain(resp)
	return nil, true, p.auth(c, err)
}

// loginServer is the LOGIN mechanism (draft-murchison-sasl-login), which
// go-sasl no longer has a server for: "Username:" then "Password:", with
// or without the user name as initial response.
type loginServer struct {
	auth authFunc
	step int // 0 start, 1 want user, 2 want password, 3 done
	user []byte
}

var _ sasl.Server = (*loginServer)(nil)

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if resp == nil {
			return []byte(loginUserPrompt), false, nil
		}
		return l.Next(resp)
	case 1:
		l.user = append([]byte(nil), resp...)
		l.step = 2
		return []byte(loginPassPrompt), false, nil
	case 2:
		l.step = 3
		if err := cmp.Or(checkField(l.user, maxUserLen), checkField(resp, maxSecretLen)); err != nil {
			return nil, true, l.auth(credentials{}, err)
		}
		return nil, true, l.auth(credentials{user: string(l.user), pass: policy.Secret(resp)}, nil)
	}
	return nil, true, errSASLDone
}
