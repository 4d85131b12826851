// Package passgate is the module's root: it holds no code, only the test
// of the repository's layout (layout_test.go), which needs no server and
// so runs with every `go test ./...`, before and apart from the
// integration tests.
//
// The code is in cmd/passgate (the binary), proxy/ (the listeners),
// policy/ (the decision) and backends/ (the store and the upstreams);
// README.md says which package does what.
package passgate
