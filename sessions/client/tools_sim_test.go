package client_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"

	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// A service tests its permission handler offline: the simulator asks
// Options.Permission for the scripted tool call the way the CLI does, and
// the model's next request carries what the decision produced.
func TestPermissionHandlerOnSimulator(t *testing.T) {
	const args = `{"command":"ls /srv","description":"list the data"}`
	for _, tc := range []struct {
		name  string
		allow bool
		told  string // the tool result the model gets
	}{
		{"approved", true, "simulated: bash ran"},
		{"rejected", false, "The user rejected this tool call. User feedback: not here"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			srv := newSimServer(t, runtimesim.Options{Dialect: runtimesim.GetToken}, fakemodel.Options{
				Respond: func(r fakemodel.Request) fakemodel.Response {
					if len(r.ToolResults) == 0 {
						return fakemodel.Response{ToolCalls: []fakemodel.ToolCall{{ID: "call-7", Name: "bash", Arguments: args}}}
					}
					return fakemodel.Response{Text: "model saw: " + r.ToolResults[0].Content}
				}})
			var mu sync.Mutex
			var asked []client.PermissionRequest
			handler := func(_ context.Context, req client.PermissionRequest) client.PermissionDecision {
				mu.Lock()
				defer mu.Unlock()
				asked = append(asked, req)
				return client.PermissionDecision{Allow: tc.allow, Reason: "not here"}
			}
			c, err := client.Connect(ctx, simBroker(t), srv.Dial(), client.Options{Permission: handler})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := c.Close(); err != nil {
					t.Error(err)
				}
			})
			sess, err := c.CreateSession(ctx, sessions.SessionConfig{Model: "gpt-4o", Provider: &sessions.ProviderConfig{
				Type: "openai", BaseURL: srv.Model.URL(), BearerTokenSource: tokens.Static(tokens.Token{Value: "svc-token"}),
			}})
			if err != nil {
				t.Fatal(err)
			}
			ans, err := sess.SendAndWait(ctx, "what is in /srv?")
			if err != nil || ans != "model saw: "+tc.told {
				t.Fatalf("SendAndWait = %q, %v", ans, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(asked) != 1 {
				t.Fatalf("handler asked %d times, want 1", len(asked))
			}
			req := asked[0]
			var detail struct{ FullCommandText string }
			_ = json.Unmarshal(req.Detail, &detail)
			if req.SessionID != sess.ID() || req.ToolCallID != "call-7" || req.Tool != "bash" || req.Kind != "shell" ||
				string(req.Arguments) != args || detail.FullCommandText != "ls /srv" {
				t.Fatalf("permission request: session %s, call %s, tool %s, kind %s, arguments %s, detail %s",
					req.SessionID, req.ToolCallID, req.Tool, req.Kind, req.Arguments, req.Detail)
			}
			if trs := srv.TokenRequests(); len(trs) != 2 {
				t.Fatalf("%d token requests, want one before each of the 2 model requests", len(trs))
			}
			for _, r := range srv.Model.Requests() {
				if r.BearerToken() != "svc-token" {
					t.Fatalf("a model request carried token %s, want the service's", tokens.Fingerprint(r.BearerToken()))
				}
			}
		})
	}
}
