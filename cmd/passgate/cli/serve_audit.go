package cli

import (
	"context"
	"log/slog"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/configs"
)

// auditMaintainInterval is how often serve applies the audit retention and
// creates the login partitions ahead (store.MaintainAudit);
// auditMaintainFirst is how long after start it first does, so that the
// first readiness checks and logins find the store's open connection idle
// instead of opening another while the maintenance holds it. The login
// partitions exist days ahead, so the logins of those seconds land in
// their day's partition as at any other time.
const (
	auditMaintainInterval = time.Hour
	auditMaintainFirst    = 5 * time.Second
)

// maintainAudit runs store.MaintainAudit in the background, first
// auditMaintainFirst after start and then every hour until ctx ends.
// Instances sharing a store take turns (the store's advisory lock).
func maintainAudit(ctx context.Context, st *store.Store, cfg *configs.Config, log *slog.Logger) {
	r := store.AuditRetention{Login: cfg.Audit.LoginRetention.D(), Change: cfg.Audit.ChangeRetention.D()}
	t := time.NewTimer(auditMaintainFirst)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m, err := st.MaintainAudit(ctx, time.Now(), r)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("audit maintenance failed; retried within the hour", slog.Any("err", err),
				slog.String("fix", "check that the database is reachable and that passgate's role owns the audit tables"))
		case len(m.Created)+len(m.Dropped) > 0 || m.Deleted > 0:
			log.Info("audit maintenance", slog.Any("partitions_created", m.Created), slog.Any("partitions_dropped", m.Dropped),
				slog.Int64("events_deleted", m.Deleted))
		}
		t.Reset(auditMaintainInterval)
	}
}
