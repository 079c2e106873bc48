package client_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// session.destroy succeeds unless the runtime says success: false; an empty
// result (a runtime that answers {} or null) is success too. Either way the
// session's routing closes.
func TestDestroyResult(t *testing.T) {
	for _, tc := range []struct {
		name   string
		result any
		known  bool
	}{
		{"success true", map[string]any{"success": true}, true},
		{"empty object", map[string]any{}, true},
		{"null", json.RawMessage("null"), true},
		{"success false", map[string]any{"success": false}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, c, _ := newScript(t)
			s.destroyed = tc.result
			ctx := ctxT(t)
			sess, err := c.CreateSession(ctx, sessions.SessionConfig{Provider: &sessions.ProviderConfig{BearerTokenSource: tokens.Static(tokens.Token{Value: "v"})}})
			if err != nil {
				t.Fatal(err)
			}
			err = sess.Destroy(ctx)
			if tc.known && err != nil {
				t.Errorf("Destroy: %v, want success", err)
			}
			if !tc.known && (err == nil || errors.Is(err, client.ErrSessionClosed)) {
				t.Errorf("Destroy: %v, want the runtime's unknown-session error", err)
			}
			if c.Router().Len() != 0 {
				t.Error("routing still open after Destroy")
			}
		})
	}
}
