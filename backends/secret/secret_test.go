package secret

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretNeverPrints(t *testing.T) {
	s := Secret("hunter2")
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", slog.Any("s", s))
	slog.New(slog.NewJSONHandler(&b, nil)).Info("x", slog.Any("req", struct{ Password Secret }{s}))
	j, _ := json.Marshal(struct{ Password Secret }{s})
	b.Write(j)
	for _, verb := range []string{"%v", "%s", "%q", "%x", "%#v", "%+v", "%d"} {
		fmt.Fprintf(&b, verb, s)
		fmt.Fprintf(&b, verb, struct{ P Secret }{s})
	}
	if strings.Contains(b.String(), "hunter2") || strings.Contains(b.String(), fmt.Sprintf("%x", "hunter2")) {
		t.Fatalf("secret leaked: %s", b.String())
	}
	if string(s) != "hunter2" {
		t.Fatal("the value is lost")
	}
}
