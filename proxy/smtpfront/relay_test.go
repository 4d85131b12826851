package smtpfront

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

// recorder is an upstream for go-smtp's client that answers every
// command with 250 and hands over the MAIL and RCPT lines it gets. It
// advertises DSN and AUTH, so that a parameter passgate let through
// would be written.
type recorder struct {
	cl    *smtp.Client
	lines chan string
}

var (
	recorderOnce sync.Once
	rec          *recorder
)

// relayRecorder returns the recorder that the fuzz target's inputs share.
func relayRecorder() *recorder {
	recorderOnce.Do(func() {
		c, s := net.Pipe()
		r := &recorder{lines: make(chan string, 1)}
		go func() {
			br := bufio.NewReader(s)
			fmt.Fprint(s, "220 up\r\n")
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				l = strings.TrimSuffix(l, "\r\n")
				switch {
				case strings.HasPrefix(l, "EHLO"):
					fmt.Fprint(s, "250-up\r\n250-8BITMIME\r\n250-SIZE 100000000\r\n250-DSN\r\n250-AUTH PLAIN\r\n250 PIPELINING\r\n")
				case strings.HasPrefix(l, "MAIL"), strings.HasPrefix(l, "RCPT"):
					r.lines <- l
					fmt.Fprint(s, "250 ok\r\n")
				default:
					fmt.Fprint(s, "250 ok\r\n")
				}
			}
		}()
		r.cl = smtp.NewClient(c)
		if err := r.cl.Hello("passgate.test"); err != nil {
			panic(err)
		}
		rec = r
	})
	return rec
}

// strictPath reads a command line as a strict RFC 5321 reader would:
// prefix, then "<" Mailbox ">" (or "<>"), then parameters separated by
// single spaces, each a keyword with an optional "=value" holding no
// space, "=" or control byte. It returns the mailbox with its quoting
// undone, and the parameters.
func strictPath(line, prefix string) (mailbox string, params []string, err error) {
	s, ok := strings.CutPrefix(line, prefix+"<")
	if !ok {
		return "", nil, fmt.Errorf("no %q", prefix+"<")
	}
	var sb strings.Builder
	if !strings.HasPrefix(s, ">") {
		if strings.HasPrefix(s, `"`) {
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				c := s[i]
				if c == '\\' {
					i++
					if i == len(s) || s[i] < ' ' || s[i] == 0x7f {
						return "", nil, fmt.Errorf("bad quoted-pair")
					}
					c = s[i]
				} else if c < ' ' || c == 0x7f {
					return "", nil, fmt.Errorf("control byte in quoted-string")
				}
				sb.WriteByte(c)
			}
			if i == len(s) {
				return "", nil, fmt.Errorf("unterminated quoted-string")
			}
			s = s[i+1:]
		} else {
			i := 0
			for ; i < len(s) && s[i] != '@'; i++ {
				if !isAtext(s[i]) && s[i] != '.' {
					return "", nil, fmt.Errorf("byte %q in dot-string", s[i])
				}
			}
			sb.WriteString(s[:i])
			s = s[i:]
		}
		if sb.Len() == 0 || !strings.HasPrefix(s, "@") {
			return "", nil, fmt.Errorf("no local part and @")
		}
		end := strings.IndexByte(s, '>')
		if end < 0 {
			return "", nil, fmt.Errorf("no >")
		}
		domain := s[1:end]
		if domain == "" || !validDomain(domain) {
			return "", nil, fmt.Errorf("bad domain %q", domain)
		}
		sb.WriteString("@" + domain)
		s = s[end:]
	}
	s = strings.TrimPrefix(s, ">")
	if s == "" {
		return sb.String(), nil, nil
	}
	s, ok = strings.CutPrefix(s, " ")
	if !ok {
		return "", nil, fmt.Errorf("%q after the path", s)
	}
	for _, p := range strings.Split(s, " ") {
		k, v, _ := strings.Cut(p, "=")
		if k == "" || strings.ContainsAny(v, "= ") || strings.ContainsFunc(p, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			return "", nil, fmt.Errorf("bad parameter %q", p)
		}
		params = append(params, p)
	}
	return sb.String(), params, nil
}

// FuzzRelayedPath checks that for every MAIL and RCPT the front accepts,
// the line the upstream receives from go-smtp's client reads, strictly,
// as exactly one path, naming the mailbox the client named, followed by
// only the parameters passgate chose to relay (BODY and SIZE for MAIL;
// never AUTH, never one the client wrote inside its path).
func FuzzRelayedPath(f *testing.F) {
	for _, s := range []string{
		"FROM:<a@b.test>", "FROM:<>", `FROM:<"x> AUTH=<ceo@example.test> ENVID=a"@b.test>`, "TO:<a@b.test>",
		`TO:<"bob@example.test> NOTIFY=SUCCESS ORCPT=rfc822;x"@y.test>`, "FROM:<a@b\rc.test>", `FROM:<"a\"b\\c"@d> SIZE=10 AUTH=<>`,
		"FROM:<@relay.test:a@b.test> BODY=8BITMIME", "TO:<a@[IPv6:::1]>", `FROM: <"quoted local"@b.test>`, "FROM:<a..b@c> AUTH=x+2By@b.test",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		c := &conn{s: &Server{o: Options{MaxMessageBytes: DefaultMaxMessageBytes, MaxRecipients: 1}}}
		r := relayRecorder()
		var (
			prefix, line string
			want         []string
			verr         error
		)
		if strings.HasPrefix(strings.ToUpper(arg), "TO:") {
			to, ok := c.parseRcpt(arg)
			if !ok {
				return
			}
			prefix = "RCPT TO:"
			verr = r.cl.Rcpt(to, &smtp.RcptOptions{})
		} else {
			from, opts, ok := c.parseMail(arg)
			if !ok {
				return
			}
			prefix, want = "MAIL FROM:", []string{"BODY=8BITMIME"}
			if opts.Size != 0 {
				want = append(want, fmt.Sprintf("SIZE=%d", opts.Size))
			}
			verr = r.cl.Mail(from, relayedMailOptions(opts))
		}
		if verr != nil {
			t.Fatalf("%q accepted, and go-smtp's client cannot relay it: %v", arg, verr)
		}
		line = <-r.lines
		mailbox, params, err := strictPath(line, prefix)
		if err != nil {
			t.Fatalf("%q reaches the upstream as %q: %v", arg, line, err)
		}
		if strings.Join(params, " ") != strings.Join(want, " ") {
			t.Fatalf("%q reaches the upstream as %q: parameters %q, want %q", arg, line, params, want)
		}
		// The mailbox is the one the client named, as go-smtp's server
		// reads it (quotes and escapes undone).
		p := pathParser{s: strings.TrimSpace(arg[strings.IndexByte(arg, ':')+1:])}
		named, _ := p.parseReversePath()
		if mailbox != named {
			t.Fatalf("%q reaches the upstream as %q: mailbox %q, the client named %q", arg, line, mailbox, named)
		}
	})
}
