package configs

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String returns d the way it is written in YAML, e.g. "2s".
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML reads a duration written as "2s", "1m30s" or "10m". A bare
// number is refused because its unit would be a guess; "0" is accepted.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("configs: duration: must be a duration such as 2s or 10m")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("configs: duration %q: must be a duration such as 2s or 10m", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes d as "2s".
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }
