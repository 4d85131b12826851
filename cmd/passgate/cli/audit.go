package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// auditPageSize is how many events "passgate audit" reads per query: it
// writes each page out before reading the next, so its memory stays flat
// whatever the size of the trail. Larger pages were no faster: on SQLite
// they cost the allocator more than the queries they save, and on
// PostgreSQL a page is planned over a day's partitions only
// (store.AuditPage).
const auditPageSize = 1000

// cmdAudit runs "passgate audit": it prints the audit trail, oldest first
// (newest first with --newest), page by page.
func cmdAudit(ctx context.Context, e *env, args []string) int {
	f := newFlags("audit", "[--user NAME] [--kind login|change] [--protocol P] [--outcome O] [--credential C] [--address IP] [--since T] [--until T] [--newest] [--limit N] [--after CURSOR] [--json|--jsonl] [--config FILE]",
		"Show the audit trail, oldest first: logins, refusals and every change made with this command line.\n"+
			"It is read and written a page at a time. With --limit, when more events match, the cursor\n"+
			"of the next page is written to stderr: pass it to --after to go on.")
	user := f.String("user", "", "only events about user `NAME`")
	kind := f.String("kind", "", "only login events (`login`) or account changes (change)")
	proto := f.String("protocol", "", "only logins over `PROTOCOL` (imap, smtp, ldap, web)")
	outcome := f.String("outcome", "", "only events with `OUTCOME` (success, failure, unavailable, …)")
	cred := f.String("credential", "", "only logins with `CREDENTIAL`: primary, app-password, none, second-factor, an app password's id or its label")
	addr := f.String("address", "", "only logins from the client `IP` address")
	since := f.String("since", "", "only events of the last `DURATION` (e.g. 24h, 7d), or since a date (2006-01-02 or RFC 3339)")
	until := f.String("until", "", "only events before `TIME`: a duration back from now, or a date (2006-01-02 or RFC 3339)")
	newest := f.Bool("newest", false, "newest first")
	limit := f.Int("limit", 0, "at most `N` events (default: all)")
	after := f.String("after", "", "start after `CURSOR`, as printed at the end of a --limit listing")
	asJSON := f.Bool("json", false, "print a JSON array for scripts (streamed)")
	asJSONL := f.Bool("jsonl", false, "print JSON lines: one event per line")
	var filter store.AuditFilter
	var cursor store.AuditCursor
	check := func([]string) (err error) {
		if *limit < 0 {
			return errors.New("--limit: must be zero (all) or positive")
		}
		if *asJSON && *asJSONL {
			return errors.New("--json and --jsonl: choose one")
		}
		filter = store.AuditFilter{User: *user, Kind: *kind, Protocol: *proto, Outcome: *outcome, Addr: *addr, Newest: *newest}
		switch c := strings.ToLower(*cred); {
		case c == "":
		case c == store.CredentialPrimary || c == store.CredentialAppPassword || c == store.CredentialNone || c == store.CredentialSecondFactor:
			filter.Credential = c
		default:
			if id, err := strconv.ParseInt(*cred, 10, 64); err == nil && id > 0 {
				filter.AppPasswordID = id
			} else {
				filter.Label = *cred
			}
		}
		for _, t := range []struct {
			flag, val string
			dst       *time.Time
		}{{"--since", *since, &filter.Since}, {"--until", *until, &filter.Until}} {
			if t.val == "" {
				continue
			}
			v, err := parseSince(t.val, e.Now())
			if err != nil {
				return errors.New(t.flag + ": " + err.Error())
			}
			*t.dst = v
		}
		cursor, err = store.ParseAuditCursor(*after)
		if err != nil {
			return errors.New("--after: " + err.Error())
		}
		return nil
	}
	return e.onStore(ctx, f, args, 0, check, func(st *store.Store, _ *adminOps, _ []string) int {
		return auditPages(ctx, e, f, st, filter, cursor, *limit, *asJSON, *asJSONL)
	})
}

// auditPages writes the events that filter selects from cursor on, a page
// at a time, at most limit of them (0: all).
func auditPages(ctx context.Context, e *env, f *cmdFlags, st *store.Store, filter store.AuditFilter, cursor store.AuditCursor, limit int, asJSON, asJSONL bool) int {
	w := bufio.NewWriterSize(e.Stdout, 64<<10)
	out := newAuditWriter(w, asJSON, asJSONL)
	left := limit
	for {
		n := auditPageSize
		if limit > 0 {
			n = min(n, left)
		}
		events, next, err := st.AuditPage(ctx, filter, cursor, n)
		if err != nil {
			if errors.Is(err, store.ErrInvalid) {
				return e.usageError(f.path, err.Error())
			}
			return e.fail(f.path, err)
		}
		if err := out.page(events); err != nil {
			return e.fail(f.path, err)
		}
		left -= len(events)
		if next.IsZero() {
			break
		}
		cursor = next
		if limit > 0 && left <= 0 {
			fmt.Fprintf(e.Stderr, "passgate: audit: more events match; next page: --after %s\n", cursor)
			break
		}
	}
	if err := out.end(); err != nil {
		return e.fail(f.path, err)
	}
	if err := w.Flush(); err != nil {
		return e.fail(f.path, fmt.Errorf("write: %w", err))
	}
	return exitOK
}

// auditWriter writes audit events page by page as a table, a JSON array or
// JSON lines.
type auditWriter struct {
	w           io.Writer
	json, jsonl bool
	n           int
}

func newAuditWriter(w io.Writer, asJSON, asJSONL bool) *auditWriter {
	return &auditWriter{w: w, json: asJSON, jsonl: asJSONL}
}

// page writes one page. A table is aligned page by page.
func (a *auditWriter) page(events []store.AuditEvent) error {
	switch {
	case a.jsonl:
		enc := json.NewEncoder(a.w)
		for _, ev := range events {
			if err := enc.Encode(ev); err != nil {
				return fmt.Errorf("write JSON: %w", err)
			}
		}
	case a.json:
		for _, ev := range events {
			b, err := json.MarshalIndent(ev, "  ", "  ")
			if err != nil {
				return fmt.Errorf("write JSON: %w", err)
			}
			sep := ",\n  "
			if a.n == 0 {
				sep = "[\n  "
			}
			a.n++
			if _, err := fmt.Fprintf(a.w, "%s%s", sep, b); err != nil {
				return fmt.Errorf("write JSON: %w", err)
			}
		}
	default:
		if len(events) == 0 {
			return nil
		}
		rows := make([][]string, 0, len(events))
		for _, ev := range events {
			rows = append(rows, []string{stamp(ev.Time), clean(ev.Actor), clean(ev.Action), clean(ev.Subject), clean(ev.Outcome), clean(ev.Detail)})
		}
		header := []string{"TIME", "ACTOR", "ACTION", "SUBJECT", "OUTCOME", "DETAIL"}
		if a.n > 0 {
			header = nil
		}
		a.n += len(events)
		return table(a.w, header, rows)
	}
	return nil
}

// end closes the output: the JSON array's bracket, or the table's note
// that nothing matched.
func (a *auditWriter) end() error {
	var err error
	switch {
	case a.jsonl:
	case a.json && a.n == 0:
		_, err = io.WriteString(a.w, "[]\n")
	case a.json:
		_, err = io.WriteString(a.w, "\n]\n")
	case a.n == 0:
		_, err = io.WriteString(a.w, "No audit events match.\n")
	}
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
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
