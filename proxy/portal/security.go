package portal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"image/png"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/pquerna/otp"

	"github.com/passgate/passgate/policy/account"
)

func (s *Server) actor(r *http.Request, ss *sess) account.Actor {
	return account.Actor{User: ss.User, Addr: clientAddr(r).String()}
}

// mayRegister reports whether the client may register a method: anyone
// signed in fully, and a user without one only from the registration
// networks.
func (s *Server) mayRegister(r *http.Request, ss *sess) bool {
	if ss.Stage != stageRegister || len(s.opts.RegistrationNetworks) == 0 {
		return true
	}
	a := clientAddr(r).Addr()
	for _, p := range s.opts.RegistrationNetworks {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// registerElsewhere is what a user without a second factor is told away
// from the registration networks.
const registerElsewhere = "You need to register a sign-in method before you can use this page, and that is allowed only from your organisation's network. Connect from the office network (or its VPN) and sign in again."

type sessionView struct {
	Created, Seen time.Time
	Addr, Agent   string
	Current       bool
}

type securityData struct {
	Register     bool // no second factor yet: registration first
	Blocked      bool // and not from a registration network
	M            account.Methods
	Sessions     []sessionView
	AppPasswords []appPasswordView
}

type appPasswordView struct {
	account.AppPassword
	Expired  bool
	UsedFrom string // the address of the last use, without its port
	OnlyFrom string // its networks, comma-separated; "": from anywhere
}

// networkList writes networks as a user reads them: "192.0.2.0/24,
// 2001:db8::/32"; "" for none (from anywhere).
func networkList(networks []netip.Prefix) string {
	out := make([]string, len(networks))
	for i, p := range networks {
		out[i] = p.String()
	}
	return strings.Join(out, ", ")
}

// hostOnly returns the address of host:port without the port (the port
// of a client's connection means nothing to its user); anything else as
// it is.
func hostOnly(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.Addr().Unmap().String()
	}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

func (s *Server) handleSecurityInfo(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.full(w, r, true)
	if !ok {
		return
	}
	s.renderSecurityInfo(w, r, ss, "", "")
}

func (s *Server) renderSecurityInfo(w http.ResponseWriter, r *http.Request, ss *sess, notice, errMsg string) {
	ctx := r.Context()
	m, err := s.opts.Accounts.Methods(ctx, ss.User)
	if err != nil {
		s.fault(w, r, err)
		return
	}
	d := securityData{M: m, Register: ss.Stage == stageRegister}
	d.Blocked = d.Register && !s.mayRegister(r, ss)
	now := s.now()
	for _, ap := range m.AppPasswords {
		d.AppPasswords = append(d.AppPasswords, appPasswordView{AppPassword: ap, Expired: ap.Expired(now), UsedFrom: hostOnly(ap.LastUsedAddr), OnlyFrom: networkList(ap.Networks)})
	}
	list, err := s.opts.Sessions.ListWebSessions(ctx, ss.User)
	if err != nil {
		s.fault(w, r, err)
		return
	}
	for _, o := range list {
		d.Sessions = append(d.Sessions, sessionView{Created: o.CreatedAt, Seen: o.SeenAt, Addr: hostOnly(o.Addr), Agent: describeAgent(o.Agent), Current: bytes.Equal(o.IDHash, ss.IDHash)})
	}
	if d.Blocked {
		errMsg = registerElsewhere
	}
	s.render(w, http.StatusOK, "security", page{Title: "Security info", User: ss.User, Session: true, Notice: notice, Error: errMsg, Data: d})
}

type addData struct {
	Register bool
}

func (s *Server) handleAddPage(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.full(w, r, true)
	if !ok || !s.fresh(w, r, ss, "/add") {
		return
	}
	if !s.mayRegister(r, ss) {
		s.renderSecurityInfo(w, r, ss, "", "")
		return
	}
	s.render(w, http.StatusOK, "add", page{Title: "Add sign-in method", User: ss.User, Session: true, Data: addData{Register: ss.Stage == stageRegister}})
}

func (s *Server) handleAdd(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	ss, ok := s.full(w, r, true)
	if !ok {
		return
	}
	switch m := r.PostFormValue("method"); m {
	case "authenticator-app", "passkey":
		http.Redirect(w, r, "/add/"+m, http.StatusSeeOther)
	case "app-password":
		if ss.Stage == stageRegister {
			http.Redirect(w, r, "/security-info", http.StatusSeeOther)
			return
		}
		http.Redirect(w, r, "/add/app-password", http.StatusSeeOther)
	default:
		s.render(w, http.StatusBadRequest, "add", page{Title: "Add sign-in method", User: ss.User, Session: true,
			Error: "Choose a method, then Add.", Data: addData{Register: ss.Stage == stageRegister}})
	}
}

type totpData struct {
	QR     template.URL // data: URL of the PNG, made here (trusted)
	Secret string       // base32 in groups of four
	URL    string       // otpauth://
}

// handleTOTPPage starts adding an authenticator app: a new seed, kept in
// the session (sealed) until a code confirms it.
func (s *Server) handleTOTPPage(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.full(w, r, true)
	if !ok || !s.fresh(w, r, ss, "/add/authenticator-app") {
		return
	}
	if !s.mayRegister(r, ss) {
		s.renderSecurityInfo(w, r, ss, "", "")
		return
	}
	key, err := s.opts.Accounts.NewTOTP(ss.User)
	if err != nil {
		s.fault(w, r, err)
		return
	}
	ss.data.PendingSeed = key.Secret()
	if err := s.save(r.Context(), ss); err != nil {
		s.fault(w, r, err)
		return
	}
	s.renderTOTP(w, r, ss, key, http.StatusOK, "")
}

func (s *Server) renderTOTP(w http.ResponseWriter, r *http.Request, ss *sess, key *otp.Key, status int, msg string) {
	img, err := key.Image(240, 240)
	if err != nil {
		s.fault(w, r, err)
		return
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		s.fault(w, r, err)
		return
	}
	d := totpData{QR: template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(b.Bytes())), Secret: groups(key.Secret(), 4), URL: key.URL()}
	s.render(w, status, "totp", page{Title: "Authenticator app", User: ss.User, Session: true, Error: msg, Data: d})
}

// groups writes s in groups of n separated by spaces.
func groups(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s); i += n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s[i:min(i+n, len(s))])
	}
	return b.String()
}

type recoveryData struct {
	Codes []string
}

func (s *Server) handleTOTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	ss, ok := s.full(w, r, true)
	if !ok || !s.fresh(w, r, ss, "/add/authenticator-app") {
		return
	}
	if !s.mayRegister(r, ss) || ss.data.PendingSeed == "" {
		http.Redirect(w, r, "/security-info", http.StatusSeeOther)
		return
	}
	seed := ss.data.PendingSeed
	codes, err := s.opts.Accounts.ConfirmTOTP(r.Context(), s.actor(r, ss), seed, r.PostFormValue("code"))
	if errors.Is(err, account.ErrBadCode) {
		key, kerr := otp.NewKeyFromURL("otpauth://totp/passgate:" + ss.User + "?secret=" + seed + "&issuer=passgate&algorithm=SHA1&digits=6&period=30")
		if kerr != nil {
			s.fault(w, r, kerr)
			return
		}
		msg, _ := s.opts.Accounts.Message(err)
		s.renderTOTP(w, r, ss, key, http.StatusUnprocessableEntity, msg)
		return
	}
	if err != nil {
		s.fault(w, r, err)
		return
	}
	// Registering is a step up: a new session id, fully signed in.
	if _, err := s.startSession(w, r, ss, ss.User, stageFull, s.now(), sessionData{}); err != nil {
		s.fault(w, r, err)
		return
	}
	s.render(w, http.StatusOK, "recovery", page{Title: "Recovery codes", User: ss.User, Session: true, Data: recoveryData{Codes: codes}})
}

type appPasswordForm struct {
	Name     string
	Scopes   map[string]bool
	Expires  string
	Networks string // as typed
	// Open shows the Advanced part open: when it holds a choice other
	// than the defaults, so that a refused form shows what was refused.
	Open       bool
	BadNetwork bool // the Allowed networks field is what was refused
}

type appPasswordCreated struct {
	Name     string
	Password string
	Scopes   []string
	Expires  *time.Time
	OnlyFrom string
}

// maxNetworks is how many networks one app password may carry (the
// store's bound).
const maxNetworks = 32

// parseNetworks reads the Allowed networks field: addresses or networks
// (CIDRs) separated by commas, spaces or line breaks. A single address
// stands for itself alone (/32 or /128); the store writes each network
// canonically. It returns what the user is told when one is not right.
func parseNetworks(field string) (networks []string, msg string) {
	parts := strings.FieldsFunc(field, func(r rune) bool { return r == ',' || r == ';' || unicode.IsSpace(r) })
	if len(parts) > maxNetworks {
		return nil, fmt.Sprintf("Allowed networks: at most %d, you typed %d. Use wider networks, such as 192.0.2.0/24 for 192.0.2.0 to 192.0.2.255.", maxNetworks, len(parts))
	}
	for _, n := range parts {
		if _, err := netip.ParsePrefix(n); err == nil {
			networks = append(networks, n)
			continue
		}
		if a, err := netip.ParseAddr(n); err == nil && a.Zone() == "" {
			networks = append(networks, n)
			continue
		}
		if len(n) > 50 {
			n = n[:50] + "…"
		}
		return nil, fmt.Sprintf("Allowed networks: %q is not an address or a network. Type addresses such as 192.0.2.7 or networks such as 192.0.2.0/24 or 2001:db8::/32, separated by commas, or leave the field empty to allow every network.", n)
	}
	return networks, ""
}

// expiryChoices are the expiries offered under Advanced.
var expiryChoices = map[string]time.Duration{"": 0, "30d": 30 * 24 * time.Hour, "90d": 90 * 24 * time.Hour, "365d": 365 * 24 * time.Hour}

func (s *Server) handleAppPasswordPage(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.full(w, r, false)
	if !ok || !s.fresh(w, r, ss, "/add/app-password") {
		return
	}
	s.render(w, http.StatusOK, "apppassword", page{Title: "App password", User: ss.User, Session: true,
		Data: appPasswordForm{Scopes: map[string]bool{"imap": true, "smtp": true, "ldap": true}}})
}

func (s *Server) handleAppPassword(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	ss, ok := s.full(w, r, false)
	if !ok || !s.fresh(w, r, ss, "/add/app-password") {
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "Bad Request", http.StatusBadRequest)
		return
	}
	f := appPasswordForm{Name: r.PostFormValue("name"), Scopes: map[string]bool{}, Expires: r.PostFormValue("expires"), Networks: strings.TrimSpace(r.PostFormValue("networks"))}
	var scopes []string
	for _, sc := range r.PostForm["scope"] {
		if sc == "imap" || sc == "smtp" || sc == "ldap" {
			f.Scopes[sc] = true
			scopes = append(scopes, sc)
		}
	}
	f.Open = len(scopes) != 3 || f.Expires != "" || f.Networks != ""
	fail := func(msg string) {
		s.render(w, http.StatusUnprocessableEntity, "apppassword", page{Title: "App password", User: ss.User, Session: true, Error: msg, Data: f})
	}
	if len(scopes) == 0 {
		fail("Choose at least one of IMAP, SMTP and LDAP under Advanced.")
		return
	}
	d, known := expiryChoices[f.Expires]
	if !known {
		fail("Choose an expiry from the list.")
		return
	}
	networks, msg := parseNetworks(f.Networks)
	if msg != "" {
		f.BadNetwork = true
		fail(msg)
		return
	}
	var expires *time.Time
	if d > 0 {
		t := s.now().Add(d)
		expires = &t
	}
	ap, secret, err := s.opts.Accounts.CreateAppPassword(r.Context(), s.actor(r, ss), f.Name, scopes, networks, expires)
	if err != nil {
		msg, ok := s.opts.Accounts.Message(err)
		if !ok {
			s.fault(w, r, err)
			return
		}
		fail(msg)
		return
	}
	s.render(w, http.StatusOK, "created", page{Title: "App password", User: ss.User, Session: true,
		Data: appPasswordCreated{Name: ap.Label, Password: groups(secret, 4), Scopes: ap.Scopes, Expires: ap.ExpiresAt, OnlyFrom: networkList(ap.Networks)}})
}

type deleteData struct {
	Kind   string // app-password | authenticator-app | passkey
	ID     string
	What   string // "app password", "authenticator app", "passkey"
	Name   string
	Effect string
}

// target finds what a delete URL names.
func (s *Server) target(r *http.Request, ss *sess) (deleteData, bool) {
	kind, id := r.PathValue("kind"), r.PathValue("id")
	d := deleteData{Kind: kind, ID: id}
	m, err := s.opts.Accounts.Methods(r.Context(), ss.User)
	if err != nil {
		return d, false
	}
	n, _ := strconv.ParseInt(id, 10, 64)
	switch kind {
	case "app-password":
		for _, ap := range m.AppPasswords {
			if ap.ID == n {
				d.What, d.Name = "app password", ap.Label
				d.Effect = "Any app or device that signs in with it (" + ap.Label + ") will stop working at once."
				return d, true
			}
		}
	case "authenticator-app":
		if m.TOTP && id == "1" {
			d.What, d.Name = "authenticator app", "Authenticator app"
			d.Effect = "You will no longer be able to sign in with codes from it, and your recovery codes are deleted too."
			return d, true
		}
	case "passkey":
		for _, p := range m.Passkeys {
			if p.ID == n {
				d.What, d.Name = "passkey", p.Name
				d.Effect = "You will no longer be able to sign in with " + p.Name + "."
				return d, true
			}
		}
	}
	return d, false
}

func (s *Server) handleDeletePage(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.full(w, r, false)
	if !ok || !s.fresh(w, r, ss, r.URL.Path) {
		return
	}
	d, found := s.target(r, ss)
	if !found {
		s.renderSecurityInfo(w, r, ss, "", "That sign-in method no longer exists.")
		return
	}
	s.render(w, http.StatusOK, "delete", page{Title: "Delete " + d.What, User: ss.User, Session: true, Data: d})
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.full(w, r, false)
	if !ok || !s.fresh(w, r, ss, r.URL.Path) {
		return
	}
	d, found := s.target(r, ss)
	if !found {
		s.renderSecurityInfo(w, r, ss, "", "That sign-in method no longer exists.")
		return
	}
	a := s.actor(r, ss)
	var err error
	switch d.Kind {
	case "app-password":
		_, err = s.opts.Accounts.DeleteAppPassword(r.Context(), a, d.Name)
	case "authenticator-app":
		err = s.opts.Accounts.DeleteTOTP(r.Context(), a)
	case "passkey":
		id, _ := strconv.ParseInt(d.ID, 10, 64)
		_, err = s.opts.Accounts.DeletePasskey(r.Context(), a, id)
	}
	if err != nil {
		s.fault(w, r, err)
		return
	}
	s.renderSecurityInfo(w, r, ss, "The "+d.What+" has been deleted.", "")
}
