package imapupstream

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// command is the login command, built once per Login and written to each
// address tried. It holds a secret: never log or print it.
type command struct {
	plain []byte   // non-nil: AUTHENTICATE PLAIN with this base64 response
	login [][]byte // otherwise: LOGIN with these two arguments
}

// buildCommand builds the login for r.
func (u *Upstream) buildCommand(r Request, passthrough bool) (*command, error) {
	switch {
	case passthrough:
		return &command{login: [][]byte{[]byte(r.User), []byte(r.Password)}}, nil
	case u.opts.MasterStyle == MasterSeparator:
		return &command{login: [][]byte{[]byte(r.User + u.opts.Separator + u.opts.MasterUser), []byte(u.opts.MasterPassword)}}, nil
	default:
		if strings.IndexByte(r.User, 0) >= 0 || r.User == "" {
			return nil, fmt.Errorf("imapupstream: login: the user name is empty or holds a NUL: %w", ErrRefused)
		}
		msg := make([]byte, 0, len(r.User)+len(u.opts.MasterUser)+len(u.opts.MasterPassword)+2)
		msg = append(msg, r.User...)
		msg = append(msg, 0)
		msg = append(msg, u.opts.MasterUser...)
		msg = append(msg, 0)
		msg = append(msg, u.opts.MasterPassword...)
		enc := make([]byte, base64.StdEncoding.EncodedLen(len(msg)))
		base64.StdEncoding.Encode(enc, msg)
		clear(msg)
		return &command{plain: enc}, nil
	}
}

// parts returns the command as the pieces to write: the first right away,
// each further one after a continuation request ("+") from the upstream.
// caps decides SASL-IR and LITERAL+.
func (c *command) parts(caps map[string]bool) [][]byte {
	if c.plain != nil {
		if caps["SASL-IR"] {
			return [][]byte{concat([]byte("AUTHENTICATE PLAIN "), c.plain, []byte("\r\n"))}
		}
		return [][]byte{[]byte("AUTHENTICATE PLAIN\r\n"), concat(c.plain, []byte("\r\n"))}
	}
	nonSync := caps["LITERAL+"]
	var parts [][]byte
	cur := []byte("LOGIN")
	for _, arg := range c.login {
		cur = append(cur, ' ')
		if quotable(arg) {
			cur = appendQuoted(cur, arg)
			continue
		}
		if nonSync {
			cur = append(cur, "{"+strconv.Itoa(len(arg))+"+}\r\n"...)
			cur = append(cur, arg...)
			continue
		}
		cur = append(cur, "{"+strconv.Itoa(len(arg))+"}\r\n"...)
		parts = append(parts, cur)
		cur = append([]byte(nil), arg...)
	}
	cur = append(cur, "\r\n"...)
	return append(parts, cur)
}

func concat(bs ...[]byte) []byte {
	return bytes.Join(bs, nil)
}

// quotable reports whether s can be sent as a quoted string without
// escapes: printable ASCII without '"' and '\', and not too long. Anything
// else goes as a literal, byte for byte.
func quotable(s []byte) bool {
	if len(s) > 1024 {
		return false
	}
	for _, c := range s {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

func appendQuoted(b, s []byte) []byte {
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// maxIDValue is Dovecot's limit on one ID value.
const maxIDValue = 1024

// maxIDPairs is RFC 2971's limit on ID fields.
const maxIDPairs = 30

// idCommand builds ID with the client's address (x-originating-ip/port),
// passgate's own address towards the upstream (x-connected-ip/port) and the
// client's own ID fields, except any "x-" field, which could claim another
// address.
func idCommand(r Request, local net.Addr) []byte {
	var pairs []string
	if r.Client.IsValid() {
		pairs = append(pairs,
			"x-originating-ip", r.Client.Addr().Unmap().String(),
			"x-originating-port", strconv.Itoa(int(r.Client.Port())))
	}
	if la, ok := local.(*net.TCPAddr); ok {
		if ap := la.AddrPort(); ap.IsValid() {
			pairs = append(pairs,
				"x-connected-ip", ap.Addr().Unmap().String(),
				"x-connected-port", strconv.Itoa(int(ap.Port())))
		}
	}
	hasName := false
	for i := 0; i+1 < len(r.ClientID) && len(pairs)/2 < maxIDPairs; i += 2 {
		k, v := r.ClientID[i], r.ClientID[i+1]
		if k == "" || len(k) > 30 || strings.HasPrefix(strings.ToLower(k), "x-") {
			continue
		}
		if len(v) > maxIDValue {
			v = v[:maxIDValue]
		}
		if !quotable([]byte(k)) || !quotable([]byte(v)) {
			continue
		}
		if strings.EqualFold(k, "name") {
			hasName = true
		}
		pairs = append(pairs, k, v)
	}
	if !hasName && len(pairs)/2 < maxIDPairs {
		pairs = append(pairs, "name", "passgate")
	}
	b := []byte("ID (")
	for i, p := range pairs {
		if i > 0 {
			b = append(b, ' ')
		}
		b = appendQuoted(b, []byte(p))
	}
	return append(b, ')')
}
