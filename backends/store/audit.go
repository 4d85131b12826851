package store

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Bounds on audit fields, in bytes; longer values are cut.
const (
	maxAuditField  = 256
	maxAuditDetail = 4096
)

// Audit page sizes.
const (
	// DefaultAuditPage is the page size of AuditPage when limit is 0.
	DefaultAuditPage = 500
	// MaxAuditPage bounds a page, so that one call's memory is bounded.
	MaxAuditPage = 10000
)

// auditColumns are the columns of an audit row, in auditRow's order.
const auditColumns = `id, time, is_login, actor, action, subject, outcome, detail, protocol, client_addr, client_port, tls,
 client_name, credential, app_password_id, label, reason`

type auditRow struct {
	ID            int64     `db:"id"`
	Time          time.Time `db:"time"`
	IsLogin       bool      `db:"is_login"`
	Actor         string    `db:"actor"`
	Action        string    `db:"action"`
	Subject       string    `db:"subject"`
	Outcome       string    `db:"outcome"`
	Detail        string    `db:"detail"`
	Protocol      string    `db:"protocol"`
	ClientAddr    string    `db:"client_addr"`
	ClientPort    int       `db:"client_port"`
	TLS           bool      `db:"tls"`
	ClientName    string    `db:"client_name"`
	Credential    string    `db:"credential"`
	AppPasswordID *int64    `db:"app_password_id"`
	Label         string    `db:"label"`
	Reason        string    `db:"reason"`
}

// event turns a row into an AuditEvent. A structured login row stores
// neither actor nor detail: both are derived here, in the form that rows
// from before schema version 5 hold, so that readers of either see one
// shape.
func (r auditRow) event() AuditEvent {
	ev := AuditEvent{ID: r.ID, Time: r.Time.UTC(), Actor: r.Actor, Action: r.Action, Subject: r.Subject,
		Outcome: r.Outcome, Detail: r.Detail, Login: r.IsLogin, Protocol: r.Protocol, ClientAddr: r.ClientAddr,
		ClientPort: r.ClientPort, TLS: r.TLS, ClientName: r.ClientName, Credential: r.Credential, Label: r.Label, Reason: r.Reason}
	if r.AppPasswordID != nil {
		ev.AppPasswordID = *r.AppPasswordID
	}
	if r.IsLogin && r.Credential != "" && r.Actor == "" {
		ev.Actor = r.Protocol + ":" + hostPort(r.ClientAddr, r.ClientPort)
		cred := r.Credential
		if cred == CredentialAppPassword {
			cred += ":" + strconv.FormatInt(ev.AppPasswordID, 10) + " (" + r.Label + ")"
		}
		tls := "no"
		if r.TLS {
			tls = "yes"
		}
		ev.Detail = "credential=" + cred + " tls=" + tls + " reason=" + r.Reason
		if r.ClientName != "" {
			ev.Detail += " client=" + r.ClientName
		}
	}
	return ev
}

// hostPort joins an address and a port as netip.AddrPort prints them.
func hostPort(addr string, port int) string {
	if a, err := netip.ParseAddr(addr); err == nil {
		return netip.AddrPortFrom(a, uint16(port)).String()
	}
	return addr + ":" + strconv.Itoa(port)
}

// Record appends ev to the audit trail; a zero ev.Time means now. ev must
// not hold a secret. ev.ID is ignored. Text is stored as valid UTF-8
// without control characters, cut to 256 bytes (4096 for Detail).
//
// An event whose Action is "login" is a login event, kept for
// AuditRetention.Login; every other is an account change, kept for
// AuditRetention.Change. A login event with Credential set is stored
// structured: its Actor and Detail are not stored but derived on reading
// from Protocol, ClientAddr, ClientPort, Credential, TLS, Reason and
// ClientName.
func (s *Store) Record(ctx context.Context, ev AuditEvent) error {
	ctx, err := s.runCtx(ctx)
	if err != nil {
		return err
	}
	q, err := s.hotStmt(ctx, recordQuery)
	if err != nil {
		return err
	}
	if ev.Lockout == nil {
		return record(ctx, q, ev)
	}
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: record audit event: begin: %w", err)
	}
	defer rollback(tx)
	if err := record(ctx, tx.StmtxContext(ctx, q), ev); err != nil {
		return err
	}
	if err := applyNote(ctx, tx, ev.Lockout); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: record audit event: commit: %w", err)
	}
	return nil
}

const recordQuery = `INSERT INTO audit_events (time, is_login, actor, action, subject, subject_key, outcome, detail,
 protocol, client_addr, client_port, tls, client_name, credential, app_password_id, label, reason)
 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

func record(ctx context.Context, q stmtExec, ev AuditEvent) error {
	_, err := q.ExecContext(ctx, recordArgs(ev)...)
	if err != nil {
		return fmt.Errorf("store: record audit event %s %s: %w", ev.Action, ev.Subject, err)
	}
	return nil
}

// recordArgs are recordQuery's arguments for ev.
func recordArgs(ev AuditEvent) []any {
	t := ev.Time
	if t.IsZero() {
		t = time.Now()
	}
	// The subject and actor may come from a client (a user name typed at
	// login): cleanText keeps an odd one from losing the event.
	subject := cleanText(ev.Subject, maxUserName)
	isLogin := ev.Action == ActionLogin
	actor, detail := ev.Actor, ev.Detail
	if isLogin && ev.Credential != "" {
		actor, detail = "", "" // derived on reading
	}
	var appID any
	if ev.AppPasswordID != 0 {
		appID = ev.AppPasswordID
	}
	return []any{dbTime(t), isLogin, cleanText(actor, maxAuditField), cleanText(ev.Action, maxAuditField),
		subject, strings.ToLower(subject), cleanText(ev.Outcome, maxAuditField), cleanText(detail, maxAuditDetail),
		cleanText(ev.Protocol, maxAuditField), cleanText(ev.ClientAddr, maxAuditField), ev.ClientPort, ev.TLS,
		cleanText(ev.ClientName, maxAuditField), cleanText(ev.Credential, maxAuditField), appID,
		cleanText(ev.Label, maxAuditField), cleanText(ev.Reason, maxAuditDetail)}
}

// landedQuery counts the events that match recordArgs's values
// (landedArgs) in every column but the nullable app_password_id.
const landedQuery = `SELECT count(*) FROM audit_events WHERE time = ? AND is_login = ? AND actor = ? AND action = ?
 AND subject = ? AND subject_key = ? AND outcome = ? AND detail = ? AND protocol = ? AND client_addr = ?
 AND client_port = ? AND tls = ? AND client_name = ? AND credential = ? AND label = ? AND reason = ?`

// landedArgs are landedQuery's arguments from recordArgs's a: all but
// the app password's id (a[14]).
func landedArgs(a []any) []any { return append(a[:14:14], a[15:]...) }

// AuditCursor marks a place in the audit trail: the (time, id) of the
// last event of a page. Its String form is what "passgate audit --after"
// and an API's cursor parameter take; the zero cursor is the start.
type AuditCursor struct {
	Time time.Time
	ID   int64
}

// IsZero reports whether c is the start of the trail.
func (c AuditCursor) IsZero() bool { return c.ID == 0 && c.Time.IsZero() }

// String returns c as "UNIXMICROSECONDS-ID", or "" for the zero cursor.
func (c AuditCursor) String() string {
	if c.IsZero() {
		return ""
	}
	return strconv.FormatInt(c.Time.UnixMicro(), 10) + "-" + strconv.FormatInt(c.ID, 10)
}

// ParseAuditCursor parses AuditCursor.String's form; "" is the zero cursor.
// A malformed cursor is an error matching ErrInvalid.
func ParseAuditCursor(s string) (AuditCursor, error) {
	if s == "" {
		return AuditCursor{}, nil
	}
	t, id, ok := strings.Cut(s, "-")
	us, err1 := strconv.ParseInt(t, 10, 64)
	n, err2 := strconv.ParseInt(id, 10, 64)
	if !ok || err1 != nil || err2 != nil || n <= 0 {
		return AuditCursor{}, fail(ErrInvalid, "store: audit cursor %q is not one that a page returned (NUMBER-NUMBER)", s)
	}
	return AuditCursor{Time: time.UnixMicro(us).UTC(), ID: n}, nil
}

// AuditPage reads one page of the audit events that f selects, in
// (time, id) order: oldest first, or newest first with f.Newest. It
// returns at most limit events (0: DefaultAuditPage; at most
// MaxAuditPage) strictly after the cursor after (the zero cursor: from
// the start), and the cursor of the next page, zero when this page is the
// last. Each page is one indexed query (keyset pagination, never OFFSET),
// so a page costs the same at the start and at the end of a trail of
// millions, and a caller that writes each page out before asking for the
// next holds one page in memory. Events recorded after a page was read
// and ordered after its cursor appear on a later page.
//
// Filters combine with AND; zero fields match everything. f.User uses an
// index; f.Since and f.Until bound the time range (on PostgreSQL they also
// skip whole daily partitions). The other filters are applied on the
// time-ordered scan: bound a rare one with Since/Until.
//
// This is the function an admin API's list endpoint calls: pass the
// request's cursor parameter through ParseAuditCursor and return
// next.String() as the cursor of the response.
func (s *Store) AuditPage(ctx context.Context, f AuditFilter, after AuditCursor, limit int) (events []AuditEvent, next AuditCursor, err error) {
	switch {
	case limit < 0:
		return nil, AuditCursor{}, fail(ErrInvalid, "store: audit page size %d: use a positive number", limit)
	case limit == 0:
		limit = DefaultAuditPage
	case limit > MaxAuditPage:
		limit = MaxAuditPage
	}
	where, args, err := f.where()
	if err != nil {
		return nil, AuditCursor{}, err
	}
	cmp, order := ">", "ASC"
	if f.Newest {
		cmp, order = "<", "DESC"
	}
	if !after.IsZero() {
		// The plain bound on time, implied by the row comparison, is what
		// lets PostgreSQL leave out the day partitions behind the cursor
		// when it plans the page (it does not prune on a row comparison).
		where = append(where, "time "+cmp+"= ?", "(time, id) "+cmp+" (?, ?)")
		args = append(args, dbTime(after.Time), dbTime(after.Time), after.ID)
	}
	// On PostgreSQL, planning a query over every day partition costs more
	// than reading a page (tens of milliseconds on a fresh connection with
	// a month of partitions). A page that lies within a day of its start
	// — the newest events, or the next page of a full trail — is first
	// looked for in that day alone, which the planner prunes to one or two
	// partitions; only a page that this window does not fill is read
	// again without it. The window's page, when full, is the page: every
	// event outside the window comes after all of its events.
	if from, ok := s.auditProbeStart(ctx, f, after); ok {
		bound := "time >= ?"
		edge := from.Add(-auditProbeWindow)
		if !f.Newest {
			bound, edge = "time < ?", from.Add(auditProbeWindow)
		}
		events, more, err := s.auditRows(ctx, append(slices.Clip(where), bound), append(slices.Clip(args), dbTime(edge)), order, limit)
		if err != nil {
			return nil, AuditCursor{}, err
		}
		if more {
			last := events[len(events)-1]
			return events, AuditCursor{Time: last.Time, ID: last.ID}, nil
		}
	}
	events, more, err := s.auditRows(ctx, where, args, order, limit)
	if err != nil {
		return nil, AuditCursor{}, err
	}
	if more {
		last := events[len(events)-1]
		next = AuditCursor{Time: last.Time, ID: last.ID}
	}
	return events, next, nil
}

// auditProbeWindow is the span of the first try of a page on PostgreSQL
// (AuditPage): a day, the span of a login partition.
const auditProbeWindow = 24 * time.Hour

// auditProbeStart returns where the day's window of a page of f after the
// cursor starts (AuditPage), on PostgreSQL: the cursor, or for a first
// page now (newest first) or where the oldest events may be
// (auditOldest). It reports false when the window is not worth it: when
// a time bound of the filter already narrows the partitions, or for one
// user's events (their index finds them in every partition at once, and
// they may be sparse).
func (s *Store) auditProbeStart(ctx context.Context, f AuditFilter, after AuditCursor) (time.Time, bool) {
	switch {
	case s.driver != DriverPostgres || f.User != "" || !f.Since.IsZero() || !f.Until.IsZero():
		return time.Time{}, false
	case !after.IsZero():
		return after.Time, true
	case f.Newest:
		return time.Now(), true
	}
	return s.auditOldest(ctx)
}

// auditOldest returns where the window of the first page, oldest first,
// starts on PostgreSQL: the end of the oldest day partition of login
// events that may hold any, so that the window covers that day and the
// next; or false when no partition may hold any. It is one query on the
// catalogue, which reads no partition: a partition that its statistics
// say is empty (analysed with no rows) is passed over, one never analysed
// may hold some. A guess that is wrong either way costs time, never an
// event: the window holds every event before its edge — the account
// changes, the default partition and any partition passed over — so a
// full window is the first page, and one that is not full is read again
// without the window (AuditPage).
func (s *Store) auditOldest(ctx context.Context) (time.Time, bool) {
	var parts []struct {
		Name   string  `db:"relname"`
		Tuples float64 `db:"reltuples"`
	}
	if err := s.db.SelectContext(ctx, &parts, `SELECT c.relname, c.reltuples FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'audit_logins'::regclass`); err != nil {
		return time.Time{}, false
	}
	var first time.Time
	for _, p := range parts {
		end, ok := partitionEnd(p.Name)
		if ok && p.Tuples != 0 && (first.IsZero() || end.Before(first)) {
			first = end
		}
	}
	return first, !first.IsZero()
}

// auditRows runs one page's query: the events that where selects, in
// order, at most limit, and whether more follow.
func (s *Store) auditRows(ctx context.Context, where []string, args []any, order string, limit int) ([]AuditEvent, bool, error) {
	q := `SELECT ` + auditColumns + ` FROM audit_events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY time " + order + ", id " + order + " LIMIT ?"
	args = append(args, limit+1)
	rows, err := s.db.QueryxContext(ctx, s.db.Rebind(q), args...)
	if err != nil {
		return nil, false, fmt.Errorf("store: read audit trail: %w", err)
	}
	defer rows.Close()
	events := make([]AuditEvent, 0, min(limit, 64))
	more := false
	for rows.Next() {
		if len(events) == limit {
			more = true
			break
		}
		var r auditRow
		if err := rows.StructScan(&r); err != nil {
			return nil, false, fmt.Errorf("store: read audit trail: %w", err)
		}
		events = append(events, r.event())
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("store: read audit trail: %w", err)
	}
	return events, more, nil
}

// where returns f's conditions.
func (f AuditFilter) where() ([]string, []any, error) {
	var where []string
	var args []any
	add := func(cond string, arg any) {
		where = append(where, cond)
		args = append(args, arg)
	}
	if f.User != "" {
		add("subject_key = ?", strings.ToLower(cleanText(f.User, maxUserName)))
	}
	if !f.Since.IsZero() {
		add("time >= ?", dbTime(f.Since))
	}
	if !f.Until.IsZero() {
		add("time < ?", dbTime(f.Until))
	}
	if f.Protocol != "" {
		add("protocol = ?", strings.ToLower(f.Protocol))
	}
	if f.Outcome != "" {
		add("outcome = ?", strings.ToLower(f.Outcome))
	}
	switch f.Credential {
	case "":
	case CredentialAppPassword, CredentialPrimary, CredentialNone, CredentialSecondFactor:
		add("credential = ?", f.Credential)
	default:
		return nil, nil, fail(ErrInvalid, "store: audit filter: credential %q: use %s, %s or %s (or AppPasswordID or Label)",
			f.Credential, CredentialAppPassword, CredentialPrimary, CredentialNone)
	}
	if f.AppPasswordID != 0 {
		add("app_password_id = ?", f.AppPasswordID)
	}
	if f.Label != "" {
		add("label = ?", f.Label)
	}
	if f.Addr != "" {
		a, err := netip.ParseAddr(f.Addr)
		if err != nil {
			return nil, nil, fail(ErrInvalid, "store: audit filter: address %q is not an IP address", f.Addr)
		}
		add("client_addr = ?", a.Unmap().String())
	}
	if f.Kind != "" {
		switch f.Kind {
		case AuditKindLogin:
			add("is_login = ?", true)
		case AuditKindChange:
			add("is_login = ?", false)
		default:
			return nil, nil, fail(ErrInvalid, "store: audit filter: kind %q: use %s or %s", f.Kind, AuditKindLogin, AuditKindChange)
		}
	}
	return where, args, nil
}

// Audit returns the audit events that f selects, oldest first; with
// f.Limit, the newest f.Limit of them (at most MaxAuditPage). Without a
// limit it reads every match into memory: a listing of a large trail
// should use AuditPage instead.
func (s *Store) Audit(ctx context.Context, f AuditFilter) ([]AuditEvent, error) {
	if f.Limit > 0 {
		f.Newest = true
		evs, _, err := s.AuditPage(ctx, f, AuditCursor{}, f.Limit)
		if err != nil {
			return nil, err
		}
		slices.Reverse(evs)
		return evs, nil
	}
	f.Newest = false
	var out []AuditEvent
	var after AuditCursor
	for {
		evs, next, err := s.AuditPage(ctx, f, after, MaxAuditPage)
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
		if next.IsZero() {
			return out, nil
		}
		after = next
	}
}
