package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// cmdAudit runs "passgate audit": it prints the audit trail, oldest first.
func cmdAudit(ctx context.Context, e *env, args []string) int {
	f := newFlags("audit", "[--user NAME] [--since DURATION] [--limit N] [--json] [--config FILE]",
		"Show the audit trail, oldest first: logins, refusals and every change made with this command line.")
	user := f.String("user", "", "only events about user `NAME`")
	since := f.String("since", "", "only events of the last `DURATION` (e.g. 24h, 7d), or since a date (2006-01-02 or RFC 3339)")
	limit := f.Int("limit", 0, "only the newest `N` events (default: all)")
	asJSON := f.Bool("json", false, "print JSON for scripts")
	config := f.configFlag()
	if _, code, ok := e.parse(f, args, 0, 0); !ok {
		return code
	}
	filter := store.AuditFilter{User: *user, Limit: *limit}
	if *limit < 0 {
		return e.usageError(f.path, "--limit: must be zero (all) or positive")
	}
	if *since != "" {
		t, err := parseSince(*since, e.Now())
		if err != nil {
			return e.usageError(f.path, "--since: "+err.Error())
		}
		filter.Since = t
	}
	st, code, ok := e.openFor(ctx, f.path, *config)
	if !ok {
		return code
	}
	defer st.Close()
	events, err := st.Audit(ctx, filter)
	if err != nil {
		return e.fail(f.path, err)
	}
	if *asJSON {
		if events == nil {
			events = []store.AuditEvent{}
		}
		if err := writeJSON(e.Stdout, events); err != nil {
			return e.fail(f.path, err)
		}
		return exitOK
	}
	if len(events) == 0 {
		fmt.Fprintln(e.Stdout, "No audit events match.")
		return exitOK
	}
	rows := make([][]string, 0, len(events))
	for _, ev := range events {
		rows = append(rows, []string{stamp(ev.Time), clean(ev.Actor), clean(ev.Action), clean(ev.Subject), clean(ev.Outcome), clean(ev.Detail)})
	}
	if err := table(e.Stdout, []string{"TIME", "ACTOR", "ACTION", "SUBJECT", "OUTCOME", "DETAIL"}, rows); err != nil {
		return e.fail(f.path, err)
	}
	return exitOK
}

// parseSince reads --since: a duration back from now, or a date or time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.UTC); err == nil {
		return t, nil
	}
	d, err := parseDuration(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a duration (24h, 7d) nor a date (2006-01-02)", s)
	}
	if d < 0 {
		return time.Time{}, fmt.Errorf("%q: a duration back from now must be positive", s)
	}
	return now.Add(-d), nil
}
