package portal

import "net/http"

// SignedIn returns the user of the request's portal session if it is a
// full one (past the second step), for the admin pages and the API that
// share the portal's sign-in. It renews the session's idle timer.
func (s *Server) SignedIn(w http.ResponseWriter, r *http.Request) (string, bool) {
	ss, ok := s.session(w, r)
	if !ok || ss.Stage != stageFull {
		return "", false
	}
	return ss.User, true
}

// Reverify reports whether the request's full session signed in, or
// verified its identity, within ReauthAfter, as an admin change needs.
// When it did not, it keeps next (one of the admin center's pages, see
// safeNext) to come back to and sends the browser to "Verify it's you",
// as the portal does before a change of the user's own; without a full
// session, to sign in. It renews the session's idle timer.
func (s *Server) Reverify(w http.ResponseWriter, r *http.Request, next string) bool {
	ss, ok := s.session(w, r)
	if !ok || ss.Stage != stageFull {
		http.Redirect(w, r, "/signin", http.StatusSeeOther)
		return false
	}
	return s.fresh(w, r, ss, next)
}

// Recent reports whether the request's full session signed in, or
// verified its identity, within ReauthAfter (the admin API's changes
// made with the portal's sign-in need it). It renews the session's idle
// timer.
func (s *Server) Recent(w http.ResponseWriter, r *http.Request) bool {
	ss, ok := s.session(w, r)
	return ok && ss.Stage == stageFull && !s.stale(ss)
}
