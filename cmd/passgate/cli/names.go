package cli

import (
	"fmt"
	"strconv"
	"strings"

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
