package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/passgate/passgate/configs"
)

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("cli: write JSON: %w", err)
	}
	return nil
}

// wrote ends a command that printed its output: a failed write (err)
// fails it.
func (e *env) wrote(path string, err error) int {
	if err != nil {
		return e.fail(path, err)
	}
	return exitOK
}

// table writes rows under a header (none when nil), in aligned columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if header != nil {
		fmt.Fprintln(tw, strings.Join(header, "\t"))
	}
	for _, r := range rows {
		for i, c := range r {
			if c == "" {
				r[i] = "-"
			}
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("cli: write table: %w", err)
	}
	return nil
}

// clean makes a value from the store safe for one table cell or line of a
// terminal: control characters (escape sequences, tabs, newlines) are
// shown escaped.
func clean(s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			q := strconv.Quote(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}

// stamp formats a time for a table, in UTC.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func stampPtr(t *time.Time) string {
	if t == nil {
		return ""
	}
	return stamp(*t)
}

// parseDuration reads a duration such as 720h, 30m or 90d (days), as the
// configuration does (configs.ParseDuration).
func parseDuration(s string) (time.Duration, error) {
	d, err := configs.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration: write it as 90d, 720h or 30m", s)
	}
	return d, nil
}
