package store

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strings"
	"time"
)

// Retention defaults (issue 17: Entra keeps sign-in logs 30 days).
const (
	DefaultLoginRetention  = 30 * 24 * time.Hour
	DefaultChangeRetention = 400 * 24 * time.Hour
)

// Audit maintenance bounds.
const (
	// auditDeleteBatch is the rows one DELETE removes: each batch is its
	// own short transaction, so logins never wait long behind it.
	auditDeleteBatch = 1000
	// auditDaysAhead is how many days of login partitions exist ahead of
	// today on PostgreSQL.
	auditDaysAhead = 3
	// maintainLockID is the advisory lock that lets one instance at a
	// time maintain the trail ("pgaudit!" in ASCII).
	maintainLockID int64 = 0x7067617564697421
)

// AuditRetention says how long audit events are kept; zero fields take
// the defaults.
type AuditRetention struct {
	Login  time.Duration // login events; default 30 days
	Change time.Duration // account changes; default 400 days
}

// AuditMaintenance reports what MaintainAudit did.
type AuditMaintenance struct {
	Created []string // partitions created (PostgreSQL)
	Dropped []string // partitions dropped (PostgreSQL)
	Deleted int64    // rows deleted in batches
	Skipped bool     // another instance was at it: nothing done
}

// MaintainAudit applies the retention r at time now, and on PostgreSQL
// creates the login partitions of today and the next 3 days. Run it
// periodically (serve does, hourly); now is a parameter so that tests can
// move the clock.
//
// On PostgreSQL, login events live in one partition per UTC day: a day's
// partition is dropped whole once all of it is older than r.Login (so a
// login event is kept between r.Login and r.Login plus one day) (the
// DROP waits at most 2 s for its lock and is retried on the next run,
// so that it never queues logins behind a long query). Rows in the default
// partition (logins that found no partition) and account changes are
// deleted in batches of 1000, each its own transaction. On SQLite both
// kinds are deleted in such batches.
//
// Several instances sharing one store may call it at once: on PostgreSQL
// an advisory lock lets one work while the others return with Skipped;
// on SQLite each batch is a transaction of its own and the work is simply
// shared.
func (s *Store) MaintainAudit(ctx context.Context, now time.Time, r AuditRetention) (AuditMaintenance, error) {
	if r.Login <= 0 {
		r.Login = DefaultLoginRetention
	}
	if r.Change <= 0 {
		r.Change = DefaultChangeRetention
	}
	loginCut, changeCut := dbTime(now.Add(-r.Login)), dbTime(now.Add(-r.Change))
	if s.driver == DriverSQLite {
		var m AuditMaintenance
		n, err := s.deleteBatches(ctx, `DELETE FROM audit_events WHERE id IN
			(SELECT id FROM audit_events WHERE time < ? AND is_login = 1 ORDER BY time, id LIMIT ?)`, loginCut)
		m.Deleted += n
		if err != nil {
			return m, err
		}
		n, err = s.deleteBatches(ctx, `DELETE FROM audit_events WHERE id IN
			(SELECT id FROM audit_events WHERE time < ? AND is_login = 0 ORDER BY time, id LIMIT ?)`, changeCut)
		m.Deleted += n
		return m, err
	}
	return s.maintainPostgres(ctx, now, loginCut, changeCut)
}

// deleteBatches runs query (with the cut-off and the batch size as its
// arguments) until it deletes less than a batch.
func (s *Store) deleteBatches(ctx context.Context, query string, cut time.Time) (int64, error) {
	var total int64
	q := s.db.Rebind(query)
	for {
		res, err := s.db.ExecContext(ctx, q, cut, auditDeleteBatch)
		if err != nil {
			return total, fmt.Errorf("store: audit retention: delete old events: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
		if n < auditDeleteBatch {
			return total, nil
		}
	}
}

func (s *Store) maintainPostgres(ctx context.Context, now, loginCut, changeCut time.Time) (m AuditMaintenance, err error) {
	conn, err := s.db.Connx(ctx)
	if err != nil {
		return m, fmt.Errorf("store: audit maintenance: connect: %w", err)
	}
	defer conn.Close()
	var got bool
	if err := conn.GetContext(ctx, &got, `SELECT pg_try_advisory_lock($1)`, maintainLockID); err != nil {
		return m, fmt.Errorf("store: audit maintenance: lock: %w", err)
	}
	if !got {
		m.Skipped = true
		return m, nil
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, uerr := conn.ExecContext(uctx, `SELECT pg_advisory_unlock($1)`, maintainLockID); uerr != nil {
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
	}()
	if _, err := conn.ExecContext(ctx, `SET lock_timeout = '2s'`); err != nil {
		return m, fmt.Errorf("store: audit maintenance: %w", err)
	}
	defer func() { _, _ = conn.ExecContext(context.WithoutCancel(ctx), `RESET lock_timeout`) }()

	var have []string
	if err := conn.SelectContext(ctx, &have, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'audit_logins'::regclass`); err != nil {
		return m, fmt.Errorf("store: audit maintenance: list partitions: %w", err)
	}
	exists := make(map[string]bool, len(have))
	for _, n := range have {
		exists[n] = true
	}
	today := now.UTC().Truncate(24 * time.Hour)
	for i := 0; i <= auditDaysAhead; i++ {
		d := today.AddDate(0, 0, i)
		name := "audit_logins_" + d.Format("20060102")
		if exists[name] {
			continue
		}
		q := fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s PARTITION OF audit_logins FOR VALUES FROM ('%s') TO ('%s')`,
			name, d.Format("2006-01-02 15:04:05Z07:00"), d.AddDate(0, 0, 1).Format("2006-01-02 15:04:05Z07:00"))
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return m, fmt.Errorf("store: audit maintenance: create partition %s: %w (if the default partition holds logins of that day, they are deleted by the retention once old)", name, err)
		}
		m.Created = append(m.Created, name)
	}
	for _, name := range have {
		end, ok := partitionEnd(name)
		if !ok || end.After(loginCut) {
			continue
		}
		if _, err := conn.ExecContext(ctx, `DROP TABLE IF EXISTS `+name); err != nil {
			return m, fmt.Errorf("store: audit maintenance: drop partition %s: %w (retried on the next run)", name, err)
		}
		m.Dropped = append(m.Dropped, name)
	}
	type batchDelete struct {
		query string
		cut   time.Time
	}
	deletes := []batchDelete{
		{`DELETE FROM audit_logins_default WHERE ctid IN (SELECT ctid FROM audit_logins_default WHERE time < $1 LIMIT $2)`, loginCut},
		{`DELETE FROM audit_changes WHERE id IN (SELECT id FROM audit_changes WHERE time < $1 ORDER BY time, id LIMIT $2)`, changeCut},
	}
	// The partition of the logins from before migration 0005 is dropped
	// whole once its end is old enough; until then its old rows go in
	// batches.
	for _, name := range have {
		if end, ok := partitionEnd(name); ok && strings.HasPrefix(name, "audit_logins_upto_") && end.After(loginCut) {
			deletes = append(deletes, batchDelete{`DELETE FROM ` + name + ` WHERE ctid IN (SELECT ctid FROM ` + name + ` WHERE time < $1 LIMIT $2)`, loginCut})
		}
	}
	for _, q := range deletes {
		for {
			res, err := conn.ExecContext(ctx, q.query, q.cut, auditDeleteBatch)
			if err != nil {
				return m, fmt.Errorf("store: audit retention: delete old events: %w", err)
			}
			n, _ := res.RowsAffected()
			m.Deleted += n
			if n < auditDeleteBatch {
				break
			}
		}
	}
	return m, nil
}

// partitionEnd returns the exclusive upper bound of a login partition
// named by MaintainAudit or migration 0005.
func partitionEnd(name string) (time.Time, bool) {
	if day, ok := strings.CutPrefix(name, "audit_logins_upto_"); ok {
		t, err := time.Parse("20060102", day)
		return t, err == nil
	}
	if day, ok := strings.CutPrefix(name, "audit_logins_"); ok {
		t, err := time.Parse("20060102", day)
		return t.AddDate(0, 0, 1), err == nil
	}
	return time.Time{}, false
}
