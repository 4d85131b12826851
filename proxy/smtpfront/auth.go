package smtpfront

import (
	"encoding/base64"
	"strings"

	"github.com/emersion/go-smtp"
)

// handleAuth is AUTH: the mechanism and its initial response, then the
// exchange's lines. Every reply to a failed exchange comes from the
// session (the uniform 535 or 454).
func (c *conn) handleAuth(arg string) {
	if c.helo == "" {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "Please introduce yourself first.")
		return
	}
	if c.didAuth {
		c.reply(503, smtp.EnhancedCode{5, 5, 1}, "Already authenticated")
		return
	}
	parts := strings.Fields(arg)
	if len(parts) == 0 {
		c.reply(502, smtp.EnhancedCode{5, 5, 4}, "Missing parameter")
		return
	}
	mechanism := strings.ToUpper(parts[0])
	var ir []byte
	if len(parts) > 1 {
		var err error
		if ir, err = decodeSASLResponse(parts[1]); err != nil {
			c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Invalid base64 data") // RFC 4954 §4
			return
		}
	}
	srv, err := c.sess.auth(mechanism)
	if err != nil {
		c.replyError(454, smtp.EnhancedCode{4, 7, 0}, err)
		return
	}
	response := ir
	for {
		challenge, done, err := srv.Next(response)
		if err != nil {
			c.replyError(454, smtp.EnhancedCode{4, 7, 0}, err)
			return
		}
		if done {
			break
		}
		encoded := ""
		if len(challenge) > 0 {
			encoded = base64.StdEncoding.EncodeToString(challenge)
		}
		c.reply(334, smtp.NoEnhancedCode, encoded)
		encoded, err = c.readLine()
		if err != nil {
			c.readFailed(err)
			c.closing = true
			return
		}
		if encoded == "*" {
			c.reply(501, smtp.EnhancedCode{5, 0, 0}, "Negotiation cancelled")
			return
		}
		if response, err = decodeSASLResponse(encoded); err != nil {
			c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Invalid base64 data") // RFC 4954 §4
			return
		}
	}
	c.reply(235, smtp.EnhancedCode{2, 0, 0}, "Authentication succeeded")
	c.didAuth = true
}

// decodeSASLResponse decodes a SASL response line: base64, "=" for an
// empty response.
func decodeSASLResponse(s string) ([]byte, error) {
	if s == "=" {
		return []byte{}, nil
	}
	return base64.StdEncoding.DecodeString(s)
}
