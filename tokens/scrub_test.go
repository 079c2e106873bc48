package tokens_test

import (
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/tokens"
)

func TestScrub(t *testing.T) {
	const opaque = "opaque-9f8e7d6c5b4a"
	cases := []struct{ in, secret string }{
		{"upstream revoked token " + opaque, opaque},
		{`{"error":"invalid_grant","error_description":"bad access_token=` + opaque + `"}`, opaque},
		{`message: access_token=` + opaque + `&expires_in=3600`, opaque},
		{`{"access_token": "` + opaque + `", "token_type":"Bearer"}`, opaque},
		{"Authorization: Bearer " + opaque, opaque},
		{"got eyJhbGciOi.eyJzdWIiOiIx.c2lnbmF0dXJl here", "eyJhbGciOi.eyJzdWIiOiIx.c2lnbmF0dXJl"},
		{"client_secret: " + opaque, opaque},
		{"X-Identity-Header=" + opaque, opaque},
	}
	for _, c := range cases {
		got := tokens.Scrub(c.in, opaque)
		if strings.Contains(got, c.secret) || !strings.Contains(got, tokens.Redacted) {
			t.Errorf("Scrub(%q) = %q: secret left or nothing redacted", c.in, got)
		}
		// Without the known value, the shape rules alone must catch every
		// case but the first.
		if c.in != cases[0].in {
			if got := tokens.Scrub(c.in); strings.Contains(got, c.secret) {
				t.Errorf("Scrub(%q) without known values = %q", c.in, got)
			}
		}
	}
	for _, keep := range []string{"credential did not answer within 30s", "token request timed out after 30s", "identity endpoint answered 500 Internal Server Error", "no bearer-token provider registered for provider \"mi\""} {
		if got := tokens.Scrub(keep, "short", "abcdefgh-unrelated"); got != keep {
			t.Errorf("Scrub(%q) = %q, want it unchanged", keep, got)
		}
	}
	if got := tokens.Scrub("a token abc", "abc"); got != "a token abc" {
		t.Errorf("short known value scrubbed: %q", got)
	}
}
