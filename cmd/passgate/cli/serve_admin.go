package cli

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/proxy/admin"
	"github.com/passgate/passgate/proxy/api"
	"github.com/passgate/passgate/proxy/portal"
)

// withAdmin mounts the admin pages (/admin) and the JSON API (/api/v1)
// beside the portal on the web listener. Both call policy/account's
// operations, as the command line does; live sessions of a deleted app
// password are closed at once through the relays' registry.
func withAdmin(d *deps, st *store.Store, p *portal.Server, pub *url.URL) (http.Handler, error) {
	cfg := d.cfg
	var closeLive func(int64) int
	if d.relays != nil {
		closeLive = d.relays.Revoke
	}
	ops := accountAdmin(st, cfg, closeLive)
	pages, err := admin.New(admin.Options{Ops: ops, Sessions: p, PublicURL: pub, Logger: d.log.With(slog.String("listener", "web"))})
	if err != nil {
		return nil, err
	}
	apiSrv, err := api.New(api.Options{
		Ops:      ops,
		Tokens:   api.EngineTokens{Engine: d.engine, Check: ops},
		Sessions: p,
		IsAdmin:  func(ctx context.Context, user string) (bool, error) { return admin.IsAdmin(ctx, ops, user) },
		Logger:   d.log.With(slog.String("listener", "web")),
	})
	if err != nil {
		return nil, err
	}
	cop := http.NewCrossOriginProtection()
	if err := cop.AddTrustedOrigin(pub.Scheme + "://" + pub.Host); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/admin", pages)
	mux.Handle("/admin/", pages)
	mux.Handle("/api/v1/", cop.Handler(apiSrv))
	mux.Handle("/", p)
	return mux, nil
}
