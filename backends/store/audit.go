package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Bounds on audit fields, in bytes; longer values are cut.
const (
	maxAuditField  = 256
	maxAuditDetail = 4096
)

type auditRow struct {
	ID      int64     `db:"id"`
	Time    time.Time `db:"time"`
	Actor   string    `db:"actor"`
	Action  string    `db:"action"`
	Subject string    `db:"subject"`
	Outcome string    `db:"outcome"`
	Detail  string    `db:"detail"`
}

// Record appends ev to the audit trail; a zero ev.Time means now. ev must
// not hold a secret. ev.ID is ignored. Text is stored as valid UTF-8
// without control characters, cut to 256 bytes (4096 for Detail).
func (s *Store) Record(ctx context.Context, ev AuditEvent) error {
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

const recordQuery = `INSERT INTO audit_events (time, actor, action, subject, subject_key, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?)`

func record(ctx context.Context, q stmtExec, ev AuditEvent) error {
	t := ev.Time
	if t.IsZero() {
		t = time.Now()
	}
	// The subject and actor may come from a client (a user name typed at
	// login): cleanText keeps an odd one from losing the event.
	subject := cleanText(ev.Subject, maxUserName)
	_, err := q.ExecContext(ctx, dbTime(t), cleanText(ev.Actor, maxAuditField), cleanText(ev.Action, maxAuditField),
		subject, strings.ToLower(subject), cleanText(ev.Outcome, maxAuditField), cleanText(ev.Detail, maxAuditDetail))
	if err != nil {
		return fmt.Errorf("store: record audit event %s %s: %w", ev.Action, ev.Subject, err)
	}
	return nil
}

// Audit returns the audit events that f selects, oldest first; with
// f.Limit, the newest f.Limit of them. f.User matches the subject ignoring
// case; f.Since keeps events at or after it.
func (s *Store) Audit(ctx context.Context, f AuditFilter) ([]AuditEvent, error) {
	var where []string
	var args []any
	if f.User != "" {
		where = append(where, "subject_key = ?")
		args = append(args, strings.ToLower(cleanText(f.User, maxUserName)))
	}
	if !f.Since.IsZero() {
		where = append(where, "time >= ?")
		args = append(args, dbTime(f.Since))
	}
	q := `SELECT id, time, actor, action, subject, outcome, detail FROM audit_events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY time DESC, id DESC"
	if f.Limit > 0 {
		q += " LIMIT ?"
		args = append(args, f.Limit)
	}
	var rows []auditRow
	if err := s.db.SelectContext(ctx, &rows, s.db.Rebind(q), args...); err != nil {
		return nil, fmt.Errorf("store: read audit trail: %w", err)
	}
	slices.Reverse(rows)
	out := make([]AuditEvent, 0, len(rows))
	for _, r := range rows {
		out = append(out, AuditEvent{ID: r.ID, Time: r.Time.UTC(), Actor: r.Actor, Action: r.Action,
			Subject: r.Subject, Outcome: r.Outcome, Detail: r.Detail})
	}
	return out, nil
}
