package portal

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"

	"github.com/passgate/passgate/policy/account"
)

// maxCeremonyBody bounds the JSON of a WebAuthn response.
const maxCeremonyBody = 64 << 10

// waUser is a user as go-webauthn sees it.
type waUser struct {
	name  string
	creds []webauthn.Credential
}

// WebAuthnID is a stable, opaque handle: a hash of the lower-cased name.
func (u waUser) WebAuthnID() []byte {
	h := sha256.Sum256([]byte("passgate user\x00" + strings.ToLower(u.name)))
	return h[:]
}
func (u waUser) WebAuthnName() string                       { return u.name }
func (u waUser) WebAuthnDisplayName() string                { return u.name }
func (u waUser) WebAuthnCredentials() []webauthn.Credential { return u.creds }

func (s *Server) waUser(ctx context.Context, user string) (waUser, error) {
	pks, err := s.opts.Accounts.Passkeys(ctx, user)
	if err != nil {
		return waUser{}, err
	}
	u := waUser{name: user}
	for _, p := range pks {
		var c webauthn.Credential
		if err := json.Unmarshal(p.Data, &c); err != nil {
			return waUser{}, err
		}
		u.creds = append(u.creds, c)
	}
	return u, nil
}

// ceremonyResult is the JSON the page's script gets at the end of a
// ceremony: where to go, or the message to show.
type ceremonyResult struct {
	Redirect string `json:"redirect,omitempty"`
	Error    string `json:"error,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) handlePasskeyPage(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.full(w, r, true)
	if !ok || !s.fresh(w, r, ss, "/add/passkey") {
		return
	}
	if !s.mayRegister(r, ss) {
		s.renderSecurityInfo(w, r, ss, "", "")
		return
	}
	s.render(w, http.StatusOK, "passkey", page{Title: "Passkey", User: ss.User, Session: true})
}

// ceremonySession returns the session of a script's request, or answers
// it with JSON.
func (s *Server) ceremonySession(w http.ResponseWriter, r *http.Request, stages ...string) (*sess, bool) {
	ss, ok := s.session(w, r)
	if ok {
		for _, st := range stages {
			if ss.Stage == st {
				return ss, true
			}
		}
	}
	writeJSON(w, http.StatusUnauthorized, ceremonyResult{Redirect: "/signin", Error: "Your session has ended. Sign in again."})
	return nil, false
}

func (s *Server) handlePasskeyRegisterBegin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	ss, ok := s.ceremonySession(w, r, stageFull, stageRegister)
	if !ok {
		return
	}
	if !s.mayRegister(r, ss) || s.stale(ss) {
		ss.data.Next = "/add/passkey"
		_ = s.save(r.Context(), ss)
		writeJSON(w, http.StatusForbidden, ceremonyResult{Redirect: "/verify-identity"})
		return
	}
	name := strings.TrimSpace(r.PostFormValue("name"))
	if name == "" || len(name) > 256 {
		writeJSON(w, http.StatusUnprocessableEntity, ceremonyResult{Error: "Type a name for the passkey, 1 to 64 characters (e.g. \"YubiKey\")."})
		return
	}
	u, err := s.waUser(r.Context(), ss.User)
	if err != nil {
		s.jsonFault(w, r, err)
		return
	}
	var excl []protocol.CredentialDescriptor
	for _, c := range u.creds {
		excl = append(excl, c.Descriptor())
	}
	creation, sd, err := s.webauthn.BeginRegistration(u, webauthn.WithExclusions(excl),
		webauthn.WithResidentKeyRequirement(protocol.ResidentKeyRequirementPreferred))
	if err != nil {
		s.jsonFault(w, r, err)
		return
	}
	ss.data.WebAuthn, ss.data.PasskeyName = sd, name
	if err := s.save(r.Context(), ss); err != nil {
		s.jsonFault(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, creation)
}

func (s *Server) handlePasskeyRegisterFinish(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.ceremonySession(w, r, stageFull, stageRegister)
	if !ok {
		return
	}
	sd, name := ss.data.WebAuthn, ss.data.PasskeyName
	ss.data.WebAuthn, ss.data.PasskeyName = nil, ""
	if err := s.save(r.Context(), ss); err != nil || sd == nil {
		writeJSON(w, http.StatusBadRequest, ceremonyResult{Error: "Start again: choose Next."})
		return
	}
	parsed, err := protocol.ParseCredentialCreationResponseBody(io.LimitReader(r.Body, maxCeremonyBody))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, ceremonyResult{Error: "The browser's answer could not be read. Try again."})
		return
	}
	u, err := s.waUser(r.Context(), ss.User)
	if err != nil {
		s.jsonFault(w, r, err)
		return
	}
	cred, err := s.webauthn.CreateCredential(u, *sd, parsed)
	if err != nil {
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "passkey registration refused", slog.String("user", ss.User), slog.Any("err", err))
		writeJSON(w, http.StatusBadRequest, ceremonyResult{Error: "The passkey could not be registered. Try again."})
		return
	}
	data, err := json.Marshal(cred)
	if err != nil {
		s.jsonFault(w, r, err)
		return
	}
	if _, err := s.opts.Accounts.AddPasskey(r.Context(), s.actor(r, ss), name, cred.ID, data); err != nil {
		msg, ok := s.opts.Accounts.Message(err)
		if !ok {
			s.jsonFault(w, r, err)
			return
		}
		writeJSON(w, http.StatusUnprocessableEntity, ceremonyResult{Error: msg})
		return
	}
	if ss.Stage == stageRegister {
		// Registering is a step up: a new session id.
		if _, err := s.startSession(w, r, ss, ss.User, stageFull, s.now(), sessionData{}); err != nil {
			s.jsonFault(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, ceremonyResult{Redirect: "/security-info"})
}

func (s *Server) handlePasskeyLoginBegin(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.ceremonySession(w, r, stageMFA)
	if !ok {
		return
	}
	u, err := s.waUser(r.Context(), ss.User)
	if err != nil {
		s.jsonFault(w, r, err)
		return
	}
	if len(u.creds) == 0 {
		writeJSON(w, http.StatusUnprocessableEntity, ceremonyResult{Error: "You have no passkey: type a code instead."})
		return
	}
	assertion, sd, err := s.webauthn.BeginLogin(u)
	if err != nil {
		s.jsonFault(w, r, err)
		return
	}
	ss.data.WebAuthn = sd
	if err := s.save(r.Context(), ss); err != nil {
		s.jsonFault(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, assertion)
}

func (s *Server) handlePasskeyLoginFinish(w http.ResponseWriter, r *http.Request) {
	started := s.now()
	ss, ok := s.ceremonySession(w, r, stageMFA)
	if !ok {
		return
	}
	sd := ss.data.WebAuthn
	ss.data.WebAuthn = nil
	body, _ := io.ReadAll(io.LimitReader(r.Body, maxCeremonyBody))
	a := s.attempt(r, ss.User, "")
	a.Started = started
	a.Passkey = true
	err := s.opts.SignIn.SecondFactor(r.Context(), a, func(ctx context.Context) (bool, error) {
		if sd == nil {
			return false, nil
		}
		parsed, err := protocol.ParseCredentialRequestResponseBytes(body)
		if err != nil {
			return false, nil
		}
		u, err := s.waUser(ctx, ss.User)
		if err != nil {
			return false, err
		}
		cred, err := s.webauthn.ValidateLogin(u, *sd, parsed)
		if err != nil {
			return false, nil
		}
		data, err := json.Marshal(cred)
		if err != nil {
			return false, err
		}
		if err := s.opts.Accounts.UsedPasskey(ctx, ss.User, cred.ID, data); err != nil && !errors.Is(err, account.ErrNotFound) {
			return false, err
		}
		return true, nil
	})
	if err != nil {
		ss.data.Failures++
		if ss.data.Failures >= maxSecondFactorTries {
			s.endSession(w, r, ss)
			writeJSON(w, http.StatusUnauthorized, ceremonyResult{Redirect: "/signin", Error: failMessage})
			return
		}
		if serr := s.save(r.Context(), ss); serr != nil {
			s.jsonFault(w, r, serr)
			return
		}
		writeJSON(w, http.StatusUnauthorized, ceremonyResult{Error: failMessage})
		return
	}
	next := "/security-info"
	if ss.data.Reauth {
		next = safeNext(ss.data.Next)
	}
	if _, err := s.startSession(w, r, ss, ss.User, stageFull, s.now(), sessionData{}); err != nil {
		s.jsonFault(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ceremonyResult{Redirect: next})
}

func (s *Server) jsonFault(w http.ResponseWriter, r *http.Request, err error) {
	s.log.LogAttrs(r.Context(), slog.LevelError, "portal request failed", slog.String("reason", "request "+r.URL.Path), slog.Any("err", err))
	writeJSON(w, http.StatusInternalServerError, ceremonyResult{Error: "Something went wrong on the server. Try again later."})
}
