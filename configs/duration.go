package configs

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String returns d the way it is written in YAML, e.g. "2s".
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML reads a duration written as "2s", "1m30s", "10m" or, in
// days, "1d" or "90d", as the command line does. A bare number is refused
// because its unit would be a guess; "0" is accepted.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("configs: duration: must be a duration such as 2s, 10m or 7d")
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// maxDays bounds a duration written in days (a century).
const maxDays = 100 * 365

// ParseDuration reads a duration as Go writes it ("2s", "1m30s", "720h") or
// as a number of days ("1d", "7d", "90d", "1.5d"). The configuration and
// the command line both read durations with it.
func ParseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n < 0 || n > maxDays {
			return 0, fmt.Errorf("configs: duration %q: must be a duration such as 2s, 10m, 720h or 7d", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("configs: duration %q: must be a duration such as 2s, 10m, 720h or 7d", s)
	}
	return v, nil
}

// MarshalYAML writes d as "2s".
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }
