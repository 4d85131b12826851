package smtpfront

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestDecodePlain(t *testing.T) {
	long := strings.Repeat("x", maxSecretLen+1)
	tests := []struct {
		name string
		in   string
		want credentials
		ok   bool
	}{
		{"ok/no-authzid", "\x00alice\x00pw", credentials{"", "alice", "pw"}, true},
		{"ok/authzid", "alice\x00alice\x00pw", credentials{"alice", "alice", "pw"}, true},
		{"ok/specials", "\x00alice\x00~\"p w\\", credentials{"", "alice", "~\"p w\\"}, true},
		{"ok/latin1-secret", "\x00alice\x00p\xe4ss", credentials{"", "alice", "p\xe4ss"}, true},
		{"fail/empty", "", credentials{}, false},
		{"fail/one-nul", "\x00alice", credentials{}, false},
		{"fail/no-nul", "alicepw", credentials{}, false},
		{"fail/empty-user", "\x00\x00pw", credentials{}, false},
		{"fail/empty-pass", "\x00alice\x00", credentials{}, false},
		{"fail/extra-nul", "\x00alice\x00p\x00w", credentials{}, false},
		{"fail/long-pass", "\x00alice\x00" + long, credentials{}, false},
		{"fail/long-user", "\x00" + strings.Repeat("u", maxUserLen+1) + "\x00pw", credentials{}, false},
		{"fail/bad-utf8-authzid", "\xff\x00alice\x00pw", credentials{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodePlain([]byte(tc.in))
			if tc.ok != (err == nil) {
				t.Fatalf("decodePlain(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if got != tc.want {
				t.Fatalf("decodePlain(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

// run drives a SASL server through responses (nil entries mean "no
// initial response") and returns the challenges and what auth saw.
func runSASL(t *testing.T, mech string, responses [][]byte) (challenges []string, got credentials, authErr error, calls int, finalErr error) {
	t.Helper()
	auth := func(c credentials, err error) error {
		calls++
		got, authErr = c, err
		if err != nil {
			return errAuthInvalid()
		}
		return nil
	}
	var next func([]byte) ([]byte, bool, error)
	switch mech {
	case "PLAIN":
		next = (&plainServer{auth: auth}).Next
	case "LOGIN":
		next = (&loginServer{auth: auth}).Next
	}
	for _, r := range responses {
		ch, done, err := next(r)
		if err != nil || done {
			finalErr = err
			if !done {
				t.Fatalf("error without done: %v", err)
			}
			return
		}
		challenges = append(challenges, string(ch))
	}
	t.Fatalf("exchange not finished after %d responses; challenges %q", len(responses), challenges)
	return
}

func TestLoginServer(t *testing.T) {
	tests := []struct {
		name       string
		responses  [][]byte
		challenges []string
		want       credentials
		ok         bool
	}{
		{"ok/no-initial-response", [][]byte{nil, []byte("alice"), []byte("pw")}, []string{"Username:", "Password:"}, credentials{user: "alice", pass: "pw"}, true},
		{"ok/initial-response", [][]byte{[]byte("alice"), []byte("pw")}, []string{"Password:"}, credentials{user: "alice", pass: "pw"}, true},
		{"ok/specials", [][]byte{nil, []byte("alice@example.test"), []byte("~\"x y\\")}, []string{"Username:", "Password:"}, credentials{user: "alice@example.test", pass: "~\"x y\\"}, true},
		{"fail/empty-initial-response", [][]byte{{}, []byte("pw")}, []string{"Password:"}, credentials{}, false},
		{"fail/empty-password", [][]byte{nil, []byte("alice"), {}}, []string{"Username:", "Password:"}, credentials{}, false},
		{"fail/nul-in-password", [][]byte{nil, []byte("alice"), []byte("p\x00w")}, []string{"Username:", "Password:"}, credentials{}, false},
		{"fail/nul-in-user", [][]byte{nil, []byte("al\x00ice"), []byte("pw")}, []string{"Username:", "Password:"}, credentials{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ch, got, aerr, calls, ferr := runSASL(t, "LOGIN", tc.responses)
			if strings.Join(ch, ",") != strings.Join(tc.challenges, ",") {
				t.Errorf("challenges %q, want %q", ch, tc.challenges)
			}
			if calls != 1 {
				t.Fatalf("auth called %d times, want 1", calls)
			}
			if tc.ok != (aerr == nil) || tc.ok != (ferr == nil) {
				t.Fatalf("auth err %v, final %v; want ok=%v", aerr, ferr, tc.ok)
			}
			if got != tc.want {
				t.Errorf("credentials %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestPlainServer(t *testing.T) {
	tests := []struct {
		name       string
		responses  [][]byte
		challenges []string
		ok         bool
	}{
		{"ok/initial-response", [][]byte{[]byte("\x00alice\x00pw")}, nil, true},
		{"ok/no-initial-response", [][]byte{nil, []byte("\x00alice\x00pw")}, []string{""}, true},
		{"fail/empty-answer", [][]byte{nil, {}}, []string{""}, false},
		{"fail/garbage", [][]byte{[]byte("alice pw")}, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ch, _, aerr, calls, ferr := runSASL(t, "PLAIN", tc.responses)
			if strings.Join(ch, ",") != strings.Join(tc.challenges, ",") || len(ch) != len(tc.challenges) {
				t.Errorf("challenges %q, want %q", ch, tc.challenges)
			}
			if calls != 1 || tc.ok != (aerr == nil) || tc.ok != (ferr == nil) {
				t.Fatalf("calls %d, auth err %v, final %v; want ok=%v", calls, aerr, ferr, tc.ok)
			}
		})
	}
}

func TestSASLPastEnd(t *testing.T) {
	auth := func(credentials, error) error { return nil }
	l := &loginServer{auth: auth}
	for _, r := range [][]byte{nil, []byte("a"), []byte("b")} {
		if _, _, err := l.Next(r); err != nil {
			t.Fatal(err)
		}
	}
	if _, done, err := l.Next([]byte("c")); !done || !errors.Is(err, errSASLDone) {
		t.Fatalf("LOGIN past end: done=%v err=%v", done, err)
	}
	p := &plainServer{auth: auth}
	if _, _, err := p.Next([]byte("\x00a\x00b")); err != nil {
		t.Fatal(err)
	}
	if _, done, err := p.Next([]byte("x")); !done || !errors.Is(err, errSASLDone) {
		t.Fatalf("PLAIN past end: done=%v err=%v", done, err)
	}
}

func FuzzAuthPlain(f *testing.F) {
	for _, s := range []string{"\x00alice\x00pw", "alice\x00alice\x00pw", "", "\x00\x00", "a\x00b\x00c\x00d", "\xff\x00u\x00p"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := decodePlain(in)
		if err != nil {
			if c != (credentials{}) {
				t.Fatalf("error with non-empty credentials %+v", c)
			}
			return
		}
		// Round trip: the fields re-encode to exactly the input.
		re := []byte(c.authzid + "\x00" + c.user + "\x00" + string(c.pass))
		if !bytes.Equal(re, in) {
			t.Fatalf("round trip %q != %q", re, in)
		}
		if c.user == "" || c.pass == "" || len(c.user) > maxUserLen || len(c.pass) > maxSecretLen {
			t.Fatalf("limits not honoured: %+v", c)
		}
		if strings.ContainsRune(c.user, 0) || strings.ContainsRune(string(c.pass), 0) || strings.ContainsRune(c.authzid, 0) {
			t.Fatal("NUL inside a field")
		}
	})
}

func FuzzAuthLogin(f *testing.F) {
	f.Add(false, []byte("alice"), []byte("pw"))
	f.Add(true, []byte("alice"), []byte("pw"))
	f.Add(true, []byte{}, []byte{})
	f.Add(false, []byte("a\x00"), []byte("\x00"))
	f.Fuzz(func(t *testing.T, initial bool, user, pass []byte) {
		var got credentials
		var gotErr error
		calls := 0
		l := &loginServer{auth: func(c credentials, err error) error {
			calls++
			got, gotErr = c, err
			if err != nil {
				return errAuthInvalid()
			}
			return nil
		}}
		steps := [][]byte{nil, user, pass}
		if initial {
			steps = [][]byte{append([]byte{}, user...), pass}
		}
		var prompts []string
		for i, r := range steps {
			ch, done, err := l.Next(r)
			last := i == len(steps)-1
			if done != last {
				t.Fatalf("step %d: done=%v", i, done)
			}
			if !last {
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				prompts = append(prompts, string(ch))
			}
		}
		want := "Username:,Password:"
		if initial {
			want = "Password:"
		}
		if strings.Join(prompts, ",") != want {
			t.Fatalf("prompts %q", prompts)
		}
		if calls != 1 {
			t.Fatalf("auth called %d times", calls)
		}
		valid := checkField(user, maxUserLen) == nil && checkField(pass, maxSecretLen) == nil
		if valid != (gotErr == nil) {
			t.Fatalf("valid=%v but err=%v", valid, gotErr)
		}
		if valid && (got.user != string(user) || string(got.pass) != string(pass) || got.authzid != "") {
			t.Fatalf("credentials %+v, want user %q pass %q", got, user, pass)
		}
		if _, done, err := l.Next([]byte("x")); !done || err == nil {
			t.Fatal("exchange continued past its end")
		}
	})
}
