package smtpfront

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// handleMail is MAIL FROM with its parameters. The path is relayed as
// relayMailbox writes it (a quoted local part quoted again), and refused
// with 501 5.1.7 when it cannot be relayed safely. The parameters are
// checked as go-smtp's server checked them: SIZE against the limit,
// BODY=7BIT or 8BITMIME, AUTH=<mailbox> (which the session drops);
// SMTPUTF8, REQUIRETLS, BINARYMIME, RET and ENVID are not offered and
// refused.
func (c *conn) handleMail(arg string) {
	if c.helo == "" {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "Please introduce yourself first.")
		return
	}
	if c.bdatActive {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "MAIL not allowed during message transfer")
		return
	}
	from, opts, ok := c.parseMail(arg)
	if !ok {
		return
	}
	if err := c.sess.mail(from, opts); err != nil {
		c.replyError(451, smtp.EnhancedCode{4, 0, 0}, err)
		return
	}
	c.reply(250, smtp.EnhancedCode{2, 0, 0}, fmt.Sprintf("Roger, accepting mail from <%v>", from))
	c.fromReceived = true
}

// parseMail parses MAIL's argument: the path as it is to be relayed and
// the parameters. It answers a refused one itself and returns false.
func (c *conn) parseMail(arg string) (from string, opts *smtp.MailOptions, ok bool) {
	arg, ok = cutPrefixFold(arg, "FROM:")
	if !ok {
		c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Was expecting MAIL arg syntax of FROM:<address>")
		return "", nil, false
	}
	p := pathParser{s: strings.TrimSpace(arg)}
	if _, err := p.parseReversePath(); err != nil {
		c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Was expecting MAIL arg syntax of FROM:<address>")
		return "", nil, false
	}
	from, ok = p.relayMailbox()
	if !ok {
		c.reply(501, smtp.EnhancedCode{5, 1, 7}, "Bad sender address syntax")
		return "", nil, false
	}
	args, err := parseArgs(p.s)
	if err != nil {
		c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Unable to parse MAIL ESMTP parameters")
		return "", nil, false
	}
	opts = &smtp.MailOptions{}
	for _, a := range args {
		value := a.value
		switch a.key {
		case "SIZE":
			size, err := strconv.ParseUint(value, 10, 32)
			if err != nil {
				c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Unable to parse SIZE as an integer")
				return "", nil, false
			}
			if int64(size) > c.s.o.MaxMessageBytes {
				c.reply(552, smtp.EnhancedCode{5, 3, 4}, "Max message size exceeded")
				return "", nil, false
			}
			opts.Size = int64(size)
		case "SMTPUTF8":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "SMTPUTF8 is not implemented")
			return "", nil, false
		case "REQUIRETLS":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "REQUIRETLS is not implemented")
			return "", nil, false
		case "BODY":
			value = strings.ToUpper(value)
			switch smtp.BodyType(value) {
			case smtp.BodyBinaryMIME:
				c.reply(504, smtp.EnhancedCode{5, 5, 4}, "BINARYMIME is not implemented")
				return "", nil, false
			case smtp.Body7Bit, smtp.Body8BitMIME:
			default:
				c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Unknown BODY value")
				return "", nil, false
			}
			opts.Body = smtp.BodyType(value)
		case "RET":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "RET is not implemented")
			return "", nil, false
		case "ENVID":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "ENVID is not implemented")
			return "", nil, false
		case "AUTH":
			value, err := decodeXtext(value)
			if err != nil || value == "" {
				c.reply(500, smtp.EnhancedCode{5, 5, 4}, "Malformed AUTH parameter value")
				return "", nil, false
			}
			if value == "<>" {
				value = ""
			} else {
				p := pathParser{s: value}
				value, err = p.parseMailbox()
				if err != nil || p.s != "" {
					c.reply(500, smtp.EnhancedCode{5, 5, 4}, "Malformed AUTH parameter mailbox")
					return "", nil, false
				}
			}
			opts.Auth = &value
		default:
			c.reply(500, smtp.EnhancedCode{5, 5, 4}, "Unknown MAIL FROM argument")
			return "", nil, false
		}
	}
	return from, opts, true
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
	recipient, ok := c.parseRcpt(arg)
	if !ok {
		return
	}
	if err := c.sess.rcpt(recipient, &smtp.RcptOptions{}); err != nil {
		c.replyError(451, smtp.EnhancedCode{4, 0, 0}, err)
		return
	}
	c.recipients++
	c.reply(250, smtp.EnhancedCode{2, 0, 0}, fmt.Sprintf("I'll make sure <%v> gets this", recipient))
}

// parseRcpt parses RCPT's argument: the path as it is to be relayed. It
// answers a refused one (or one over the recipient limit) itself and
// returns false.
func (c *conn) parseRcpt(arg string) (recipient string, ok bool) {
	arg, ok = cutPrefixFold(arg, "TO:")
	if !ok {
		c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Was expecting RCPT arg syntax of TO:<address>")
		return "", false
	}
	p := pathParser{s: strings.TrimSpace(arg)}
	if _, err := p.parsePath(); err != nil {
		c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Was expecting RCPT arg syntax of TO:<address>")
		return "", false
	}
	recipient, ok = p.relayMailbox()
	if !ok {
		c.reply(501, smtp.EnhancedCode{5, 1, 3}, "Bad recipient address syntax")
		return "", false
	}
	if c.recipients >= c.s.o.MaxRecipients {
		c.reply(452, smtp.EnhancedCode{4, 5, 3}, fmt.Sprintf("Maximum limit of %v recipients reached", c.s.o.MaxRecipients))
		return "", false
	}
	args, err := parseArgs(p.s)
	if err != nil {
		c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Unable to parse RCPT ESMTP parameters")
		return "", false
	}
	for _, a := range args {
		switch a.key {
		case "NOTIFY", "ORCPT", "RRVS":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, a.key+" is not implemented")
			return "", false
		case "BY":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "DELIVERBY is not implemented")
			return "", false
		case "MT-PRIORITY":
			c.reply(504, smtp.EnhancedCode{5, 5, 4}, "MT-PRIORITY is not implemented")
			return "", false
		default:
			c.reply(500, smtp.EnhancedCode{5, 5, 4}, "Unknown RCPT TO argument")
			return "", false
		}
	}
	return recipient, true
}
