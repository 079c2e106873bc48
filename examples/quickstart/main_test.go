package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The quickstart is the README's main command: keep its story true.
func TestQuickstart(t *testing.T) {
	for _, tc := range []struct {
		dialect string
		// token requests the runtime makes over 2 turns in each of the
		// three sessions: the acquire dialect caches expiring tokens itself.
		want map[string]string
	}{
		{"acquire", map[string]string{"default": "refreshed 1", "mi": "refreshed 1", "oauth": "bare 2"}},
		{"getToken", map[string]string{"default": "hit 1, refreshed 1", "mi": "hit 1, refreshed 1", "oauth": "bare 2"}},
	} {
		t.Run(tc.dialect, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var out bytes.Buffer
			if err := run(ctx, &out, "simulator", tc.dialect, 2, true); err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			text := out.String()
			for provider, outcomes := range tc.want {
				line := regexp.MustCompile(`(?m)^  ` + provider + ` +\d+ +(.*)$`).FindStringSubmatch(text)
				if line == nil || line[1] != outcomes {
					t.Errorf("summary for %s: got %q, want %q\n%s", provider, line, outcomes, text)
				}
			}
			if !strings.Contains(text, "model requests 6, all with a bearer token") {
				t.Errorf("summary lacks the model requests line:\n%s", text)
			}
			// Every model request shows a fingerprint, never an empty token.
			if n := strings.Count(text, "Authorization: Bearer "); n != 6 || strings.Contains(text, "Bearer empty") {
				t.Errorf("model request lines: %d, or an empty bearer:\n%s", n, text)
			}
			if strings.Contains(text, "qs-") {
				t.Errorf("a token value was printed:\n%s", text)
			}
			if !strings.Contains(text, "tokenbroker.refresh") {
				t.Errorf("-trace printed no refresh span:\n%s", text)
			}
		})
	}
}
