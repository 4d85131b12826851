package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/configs"
)

// forbiddenInUser lists what a user name may not contain because the
// decision refuses every login of such a name: the upstream's master-user
// separator ("*" for Dovecot), which would otherwise let "victim*master"
// log in as victim. serve gives policy the same list.
func forbiddenInUser(cfg *configs.Config) []string {
	if sep := cfg.IMAP.Upstream.Separator; sep != "" {
		return []string{sep}
	}
	return nil
}

// loginNameProblem says why a user name can never log in through passgate,
// or returns nil. The store refuses empty names, spaces and control
// characters itself.
func loginNameProblem(cfg *configs.Config, name string) error {
	for _, f := range forbiddenInUser(cfg) {
		if strings.Contains(name, f) {
			return fmt.Errorf("user name %q contains %s, the upstream's master-user separator (imap.upstream.separator): every login of such a name is refused; use the login name the mail server knows", name, strconv.Quote(f))
		}
	}
	return nil
}

// knownUser checks, before an app password is created, that the user
// exists: a user with a row, or any name when policy.default_mfa lets
// users without a row have app passwords. A typo must not become a user.
func knownUser(ctx context.Context, st *store.Store, cfg *configs.Config, name string) error {
	if err := loginNameProblem(cfg, name); err != nil {
		return err
	}
	_, err := st.GetUser(ctx, name)
	if errors.Is(err, store.ErrNotFound) && cfg.Policy.DefaultMFA == string(store.MFADisabled) {
		return fmt.Errorf("user %s does not exist (see \"passgate user list\"); check the spelling, or add the user with \"passgate user add %s --mfa enabled\"", clean(name), clean(name))
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}
