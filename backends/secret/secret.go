// Package secret holds the one type of a password that passgate carries:
// a client's secret on the way to the decision and the upstream, a master
// or service password read from a *_file. It is a leaf on the data path:
// policy and every backend may import it, and it imports no passgate
// package.
package secret

import (
	"fmt"
	"io"
	"log/slog"
)

// redacted is what a Secret prints as.
const redacted = "REDACTED"

// Secret is a password. Whatever prints it (every fmt verb, %#v of a
// struct that holds it, log/slog, encoding/json) gets "REDACTED"; use
// string(s) where the bytes are needed.
type Secret string

// String returns "REDACTED".
func (Secret) String() string { return redacted }

// GoString returns "REDACTED", for %#v.
func (Secret) GoString() string { return redacted }

// LogValue returns "REDACTED", so a Secret cannot reach a log.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// Format prints "REDACTED" for every verb, %q and %x included.
func (Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, redacted) }

// MarshalText returns "REDACTED", so that encoding/json and slog's JSON
// handler print a Secret in a struct field as REDACTED too.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
