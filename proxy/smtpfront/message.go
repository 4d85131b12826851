package smtpfront

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// handleData is DATA: the message is streamed to the upstream as it is
// read, and its end answered with the upstream's reply.
func (c *conn) handleData(arg string) {
	if arg != "" {
		c.reply(501, smtp.EnhancedCode{5, 5, 4}, "DATA command should not have any arguments")
		return
	}
	if c.bdatActive {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "DATA not allowed during message transfer")
		return
	}
	if !c.fromReceived || c.recipients == 0 {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "Missing RCPT TO command.")
		return
	}
	c.reply(354, smtp.NoEnhancedCode, "Go ahead. End your data with <CR><LF>.<CR><LF>")
	c.startData()
	d := &dataReader{r: c.r, limited: true, n: c.s.o.MaxMessageBytes, now: time.Now}
	err := c.sess.data(d)
	d.drain()
	c.endData()
	c.reply(dataErrorToStatus(err))
	c.reset()
}

// startData and endData bracket the reading of a message.
func (c *conn) startData() {
	c.dataMode = true
	c.extended = time.Time{}
	c.r.grow(true)
}

func (c *conn) endData() {
	c.dataMode = false
	c.r.grow(false)
}

// dataErrorToStatus is the reply to a message: the upstream's own reply,
// or passgate's (session.data returns only *smtp.SMTPError). Any other
// error gets errMessageRead's fixed reply: an error's text is never
// shown to the client.
func dataErrorToStatus(err error) (int, smtp.EnhancedCode, string) {
	if err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			se = errMessageRead().(*smtp.SMTPError)
		}
		return se.Code, se.EnhancedCode, se.Message
	}
	return 250, smtp.EnhancedCode{2, 0, 0}, "OK: queued"
}

// errBDATInterrupted is what a bdatReader fails with when a command
// ends the message before its last chunk.
var errBDATInterrupted = errors.New("smtpfront: BDAT message interrupted by a command")

// bdatArgs parses BDAT's arguments, or answers them with a 501.
func (c *conn) bdatArgs(arg string) (size int64, last, ok bool) {
	args := strings.Fields(arg)
	switch {
	case len(args) == 0:
		c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Missing chunk size argument")
		return 0, false, false
	case len(args) > 2:
		c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Too many arguments")
		return 0, false, false
	case len(args) == 2 && !strings.EqualFold(args[1], "LAST"):
		c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Unknown BDAT argument")
		return 0, false, false
	}
	n, err := strconv.ParseUint(args[0], 10, 32)
	if err != nil {
		c.reply(501, smtp.EnhancedCode{5, 5, 4}, "Malformed size argument")
		return 0, false, false
	}
	return int64(n), len(args) == 2, true
}

// handleBdat is a BDAT that is not read by a running message: the first
// chunk of a message, or one refused.
func (c *conn) handleBdat(arg string) {
	size, last, ok := c.bdatArgs(arg)
	if !ok {
		return
	}
	if !c.fromReceived || c.recipients == 0 {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "Missing RCPT TO command.")
		// The chunk follows the command even when the command is refused.
		_ = c.r.discard(size)
		return
	}
	if c.bdatBytes+size > c.s.o.MaxMessageBytes {
		c.reply(552, smtp.EnhancedCode{5, 3, 4}, "Max message size exceeded")
		_ = c.r.discard(size)
		c.reset()
		return
	}
	c.bdatActive = true
	c.bdatBytes += size
	if size == 0 && !last {
		// Nothing to send yet: the upstream is not asked for DATA before
		// the message has a byte or its end.
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, "Continue")
		return
	}
	b := &bdatReader{r: c.r, left: size, last: last, next: c.nextChunk}
	c.startData()
	err := c.sess.data(b)
	c.endData()
	switch {
	case errors.Is(b.err, errBDATInterrupted):
		// The message was aborted upstream; the command that aborted it
		// runs now, as it would have without a message.
		line := b.pending
		c.dispatch(line)
	case b.err != nil:
		// The client went away or broke the line limit: answered as a
		// failed command read, and the connection ends.
		c.readFailed(b.err)
		c.closing = true
	default:
		if err != nil && b.left > 0 {
			// The upstream failed before the chunk was read: the rest of
			// it is dropped, the reply tells why.
			if serr := b.skip(); serr != nil {
				c.closing = true
			}
		}
		c.reply(dataErrorToStatus(err))
		c.reset()
	}
}

// nextChunk answers the chunk a bdatReader has read and reads commands up
// to the next chunk, answering those that go on with the message. It
// returns errBDATInterrupted (with the command in b.pending) for a
// command that ends the message, the read error when the client's input
// fails, and net.ErrClosed when the connection is closing.
func (c *conn) nextChunk(b *bdatReader) error {
	c.reply(250, smtp.EnhancedCode{2, 0, 0}, "Continue")
	for {
		if c.done() {
			return net.ErrClosed
		}
		line, err := c.readLine()
		if err != nil {
			return err
		}
		cmd, arg, perr := parseCmd(line)
		if perr != nil {
			c.protocolError(501, smtp.EnhancedCode{5, 5, 2}, "Bad command")
			continue
		}
		interrupt := false
		switch cmd {
		case "RSET", "QUIT":
			interrupt = true
		case "HELO", "EHLO":
			_, herr := parseHelloArgument(arg)
			interrupt = herr == nil
		case "STARTTLS":
			interrupt = !c.isTLS() && c.s.o.TLSConfig != nil && !c.s.o.ImplicitTLS && !c.didAuth
		case "BDAT":
			size, last, ok := c.bdatArgs(arg)
			if !ok {
				continue
			}
			if c.bdatBytes+size > c.s.o.MaxMessageBytes {
				interrupt = true
				break
			}
			c.bdatBytes += size
			b.left, b.last = size, last
			return nil
		}
		if interrupt {
			b.pending = line
			return errBDATInterrupted
		}
		c.handle(cmd, arg)
	}
}
