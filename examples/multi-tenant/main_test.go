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

// The example's claims, checked: per tenant one credential call and one
// request to its identity endpoint (Entra, or the managed identity) for all
// its sessions and turns, every model request with its own tenant's token,
// no token value printed.
func TestMultiTenant(t *testing.T) {
	for _, dialect := range []string{"getToken", "acquire"} {
		t.Run(dialect, func(t *testing.T) {
			testenv.ClearAzure(t) // also restores what run sets for the managed identity
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out bytes.Buffer
			if err := run(ctx, &out, 10, 3, dialect); err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			text := out.String()
			for _, name := range []string{"contoso", "fabrikam", "northwind"} {
				row := regexp.MustCompile(`(?m)^  ` + name + ` +10 +30 +(\d+) +1 +1 +30 +0$`).FindStringSubmatch(text)
				if row == nil {
					t.Errorf("no row showing 10 sessions, 30 turns, 1 credential call, 1 identity request, 30 model requests, 0 cross-tenant for %s:\n%s", name, text)
				}
			}
			// The fakes' tokens are "azuretest-" and hex; client ids are
			// "azuretest-client-" and hex.
			if !strings.Contains(text, "isolation holds") || regexp.MustCompile(`azuretest-[0-9a-f]{20}`).MatchString(text) {
				t.Errorf("output:\n%s", text)
			}
		})
	}
}
