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
