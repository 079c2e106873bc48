package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/testenv"
)

// The example's story must stay true offline: many sessions and turns, one
// credential call, one request to the identity endpoint, every model
// request with that one token, and no token value printed.
func TestOffline(t *testing.T) {
	for _, dialect := range []string{"getToken", "acquire"} {
		t.Run(dialect, func(t *testing.T) {
			testenv.ClearAzure(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out bytes.Buffer
			cfg := config{sessions: 6, turns: 3, dialect: dialect, runtime: "simulator", scope: defaultScope,
				setenv: func(k, v string) error { t.Setenv(k, v); return nil }}
			if err := run(ctx, &out, cfg); err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			text := out.String()
			for _, want := range []string{
				"credential calls (azidentity)     1\n",
				"requests to the identity endpoint 1\n",
				"model requests                    18, tokens seen: ",
			} {
				if !strings.Contains(text, want) {
					t.Errorf("output lacks %q:\n%s", want, text)
				}
			}
			if n := strings.Count(text, " turns ok"); n != 6 {
				t.Errorf("%d sessions succeeded, want 6:\n%s", n, text)
			}
			if !regexp.MustCompile(`tokens seen: [0-9a-f]{8} ×18\n`).MatchString(text) {
				t.Errorf("model requests did not all carry the one token:\n%s", text)
			}
			if strings.Contains(text, "azuretest-") { // every token the fake issues starts so
				t.Errorf("a token value was printed:\n%s", text)
			}
			if !regexp.MustCompile(`12 concurrent cold calls to a fresh ManagedIdentityCredential sent \d+ requests`).MatchString(text) {
				t.Errorf("no comparison without tokenbroker:\n%s", text)
			}
		})
	}
}
