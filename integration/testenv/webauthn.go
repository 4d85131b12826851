package testenv

import (
	"context"
	"fmt"

	"github.com/chromedp/cdproto/webauthn"
	"github.com/chromedp/chromedp"
)

// VirtualAuthenticator adds a platform passkey authenticator to the tab
// through the DevTools WebAuthn domain: CTAP2, internal transport, with
// resident keys and user verification that always succeeds, and presence
// simulated, so that navigator.credentials.create and get finish without
// a person touching anything. It returns the authenticator's id.
func VirtualAuthenticator(ctx context.Context) (webauthn.AuthenticatorID, error) {
	if _, err := chromedp.Call(ctx, webauthn.Enable, webauthn.EnableParams{}); err != nil {
		return "", fmt.Errorf("testenv: enable the WebAuthn domain: %w", err)
	}
	res, err := chromedp.Call(ctx, webauthn.AddVirtualAuthenticator, webauthn.AddVirtualAuthenticatorParams{
		Options: &webauthn.VirtualAuthenticatorOptions{
			Protocol:                    webauthn.AuthenticatorProtocolCtap2,
			Ctap2version:                webauthn.Ctap2versionCtap21,
			Transport:                   webauthn.AuthenticatorTransportInternal,
			HasResidentKey:              true,
			HasUserVerification:         true,
			IsUserVerified:              true,
			AutomaticPresenceSimulation: true,
		},
	})
	if err != nil {
		return "", fmt.Errorf("testenv: add a virtual authenticator: %w", err)
	}
	return res.AuthenticatorID, nil
}

// AuthenticatorCredentials lists the credentials the virtual authenticator
// holds.
func AuthenticatorCredentials(ctx context.Context, id webauthn.AuthenticatorID) ([]*webauthn.Credential, error) {
	res, err := chromedp.Call(ctx, webauthn.GetCredentials, webauthn.GetCredentialsParams{AuthenticatorID: id})
	if err != nil {
		return nil, fmt.Errorf("testenv: list the virtual authenticator's credentials: %w", err)
	}
	return res.Credentials, nil
}
