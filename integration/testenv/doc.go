// Package testenv starts the real servers that passgate's tests run
// against: throwaway instances on 127.0.0.1, on free ports, in temporary
// directories, never the system's own.
//
// It is not on the path of a login; it stands where the login's far end
// would be (the store's PostgreSQL, and the upstream mail and directory
// servers), so that tests prove the path against the real thing. Each test
// binary starts what it needs once, from TestMain, and stops it on exit. A
// server that is missing or cannot start is an error for the caller to turn
// into a test failure: tests never skip.
//
// This package imports no passgate package.
package testenv
