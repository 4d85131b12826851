package smtpfront

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// handleMail is MAIL FROM with its parameters, checked as go-smtp's
// server checked them: SIZE against the limit, BODY=7BIT or 8BITMIME,
// AUTH=<mailbox> (which the session drops); SMTPUTF8, REQUIRETLS,
// BINARYMIME, RET and ENVID are not offered and refused.
func (c *conn) handleMail(arg string) {
	if c.helo == "" {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "Please introduce yourself first.")
		return
	}
	if c.bdatActive {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "MAIL not allowed during message transfer")
		return
	}
	arg, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Was expecting MAIL arg syntax of FROM:<address>")
		return
	}
	p := pathParser{s: strings.TrimSpace(arg)}
	from, err := p.parseReversePath()
	if err != nil {
		c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Was expecting MAIL arg syntax of FROM:<address>")
		return
	}
	args, err := parseArgs(p.s)
	if err != nil {
		c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Unable to parse MAIL ESMTP parameters")
		return
	}
	opts := &smtp.MailOptions{}
	for _, a := range args {
		value := a.value
		switch a.key {
		case "SIZE":
			size, err := strconv.ParseUint(value, 10, 32)
			if err != nil {
				c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Unable to parse SIZE as an integer")
				return
			}
			if int64(size) > c.s.o.MaxMessageBytes {
				c.reply(552, smtp.EnhancedCode{5, 3, 4}, "Max message size exceeded")
				return
			}
			opts.Size = int64(size)
		case "SMTPUTF8":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "SMTPUTF8 is not implemented")
			return
		case "REQUIRETLS":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "REQUIRETLS is not implemented")
			return
		case "BODY":
			value = strings.ToUpper(value)
			switch smtp.BodyType(value) {
			case smtp.BodyBinaryMIME:
				c.reply(504, smtp.EnhancedCode{5, 5, 4}, "BINARYMIME is not implemented")
				return
			case smtp.Body7Bit, smtp.Body8BitMIME:
			default:
				c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Unknown BODY value")
				return
			}
			opts.Body = smtp.BodyType(value)
		case "RET":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "RET is not implemented")
			return
		case "ENVID":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "ENVID is not implemented")
			return
		case "AUTH":
			value, err := decodeXtext(value)
			if err != nil || value == "" {
				c.reply(500, smtp.EnhancedCode{5, 5, 4}, "Malformed AUTH parameter value")
				return
			}
			if value == "<>" {
				value = ""
			} else {
				p := pathParser{s: value}
				value, err = p.parseMailbox()
				if err != nil || p.s != "" {
					c.reply(500, smtp.EnhancedCode{5, 5, 4}, "Malformed AUTH parameter mailbox")
					return
				}
			}
			opts.Auth = &value
		default:
			c.reply(500, smtp.EnhancedCode{5, 5, 4}, "Unknown MAIL FROM argument")
			return
		}
	}
	if err := c.sess.mail(from, opts); err != nil {
		c.replyError(451, smtp.EnhancedCode{4, 0, 0}, err)
		return
	}
	c.reply(250, smtp.EnhancedCode{2, 0, 0}, fmt.Sprintf("Roger, accepting mail from <%v>", from))
	c.fromReceived = true
}

// handleRcpt is RCPT TO, up to Options.MaxRecipients per message. No
// parameter is offered (NOTIFY, ORCPT, RRVS, BY and MT-PRIORITY are
// refused).
func (c *conn) handleRcpt(arg string) {
	if !c.fromReceived {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "Missing MAIL FROM command.")
		return
	}
	if c.bdatActive {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "RCPT not allowed during message transfer")
		return
	}
	arg, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Was expecting RCPT arg syntax of TO:<address>")
		return
	}
	p := pathParser{s: strings.TrimSpace(arg)}
	recipient, err := p.parsePath()
	if err != nil {
		c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Was expecting RCPT arg syntax of TO:<address>")
		return
	}
	if c.recipients >= c.s.o.MaxRecipients {
		c.reply(452, smtp.EnhancedCode{4, 5, 3}, fmt.Sprintf("Maximum limit of %v recipients reached", c.s.o.MaxRecipients))
		return
	}
	args, err := parseArgs(p.s)
	if err != nil {
		c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Unable to parse RCPT ESMTP parameters")
		return
	}
	for _, a := range args {
		switch a.key {
		case "NOTIFY", "ORCPT", "RRVS":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, a.key+" is not implemented")
			return
		case "BY":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "DELIVERBY is not implemented")
			return
		case "MT-PRIORITY":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "MT-PRIORITY is not implemented")
			return
		default:
			c.reply(500, smtp.EnhancedCode{5, 5, 4}, "Unknown RCPT TO argument")
			return
		}
	}
	if err := c.sess.rcpt(recipient, &smtp.RcptOptions{}); err != nil {
		c.replyError(451, smtp.EnhancedCode{4, 0, 0}, err)
		return
	}
	c.recipients++
	c.reply(250, smtp.EnhancedCode{2, 0, 0}, fmt.Sprintf("I'll make sure <%v> gets this", recipient))
}
