package api

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/policy/account"
)

// LockoutUser is the name under which the lockout counts admin-token
// failures (and the subject of their audit events): a token has no user
// until it is found.
const LockoutUser = "admin-token"

// TokenChecker looks an admin token up (*account.Admin).
type TokenChecker interface {
	CheckToken(ctx context.Context, token string) (account.AdminToken, error)
}

// EngineTokens checks admin tokens through the login decision (protocol
// api, factor Token): the TLS rule, the lockout, the audit event and the
// failure delay are the engine's, as for any other secret.
type EngineTokens struct {
	Engine *policy.Engine
	Check  TokenChecker
}

var _ Tokens = EngineTokens{}

// CheckToken implements Tokens.
func (e EngineTokens) CheckToken(ctx context.Context, token string, client netip.AddrPort, tls bool) (account.AdminToken, error) {
	l, err := e.Engine.Decide(ctx, policy.Attempt{Proto: policy.API, Factor: policy.Token, User: LockoutUser,
		Secret: policy.Secret(token), Client: client, TLS: tls})
	if err != nil || !l.Allowed() {
		if l != nil {
			l.Finish(ctx, policy.NotAsked)
		}
		if err != nil {
			return account.AdminToken{}, fmt.Errorf("api: admin token: %w", err)
		}
		return account.AdminToken{}, ErrRefused
	}
	t, cerr := e.Check.CheckToken(ctx, token)
	var r policy.Result = policy.Accepted
	switch {
	case errors.Is(cerr, account.ErrNotFound), errors.Is(cerr, account.ErrExpired):
		r = policy.Refused
	case cerr != nil:
		r = policy.Unreachable(cerr)
	}
	switch l.Finish(ctx, r) {
	case policy.ClassOK:
		return t, nil
	case policy.ClassTemporary:
		return account.AdminToken{}, fmt.Errorf("api: admin token: %w", cerr)
	}
	return account.AdminToken{}, ErrRefused
}
