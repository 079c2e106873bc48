package runtimesim

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// A Server is what a service's own JSON-RPC code tests against: Dial
// connects, the scripted model answers (here a 401 for one token, and a
// delay), and the records show each token request and each model request's
// credential by fingerprint, in both dialects. Close ends a connection that
// is still open.
func TestServer(t *testing.T) {
	for _, d := range []Dialect{Acquire, GetToken} {
		t.Run(d.String(), func(t *testing.T) {
			srv, err := NewServer(Options{Dialect: d}, fakemodel.Options{
				Respond: func(r fakemodel.Request) fakemodel.Response {
					if r.BearerToken() == "tok-1" {
						return fakemodel.Response{Status: 401}
					}
					return fakemodel.Response{Text: "scripted " + r.Prompt, Delay: 10 * time.Millisecond}
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			// tok-1 to every attempt of the first turn (a 401 is retried
			// authRetries times), then tok-2.
			attempts := 1 + authRetries
			c := &client{t: t, notes: map[string]chan note{}, answer: func(n int, _ string, _ json.RawMessage) (any, error) {
				if n <= attempts {
					return map[string]any{"token": "tok-1"}, nil
				}
				return map[string]any{"token": "tok-2"}, nil
			}}
			c.jc = jsonrpc2.NewConn(context.Background(), jsonrpc2.NewBufferedStream(srv.Dial(), jsonrpc2.VSCodeObjectCodec{}), handler{c})

			flag := "bearerTokenProvider"
			if d == GetToken {
				flag = "hasBearerTokenProvider"
			}
			c.call("session.create", wholeSessionParams("s1", map[string]any{"baseUrl": srv.Model.URL(), flag: true, "bearerTokenScope": "api://x/.default"}))
			if _, serr := c.send("s1", "one"); serr["errorType"] != "authentication" {
				t.Fatalf("first turn: %v, want the authentication error of a 401", serr)
			}
			if texts, serr := c.send("s1", "two"); serr != nil || len(texts) != 1 || texts[0] != "scripted two" {
				t.Fatalf("second turn: %v, %v", texts, serr)
			}

			trs := srv.TokenRequests()
			if len(trs) != attempts+1 || trs[0].Fingerprint != tokens.Fingerprint("tok-1") || trs[attempts].Fingerprint != tokens.Fingerprint("tok-2") || trs[0].Method != d.method() {
				t.Errorf("token requests %+v", trs)
			}
			if d == Acquire && trs[0].Scope != "api://x/.default" {
				t.Errorf("acquire scope %q", trs[0].Scope)
			}
			mrs := srv.ModelRequests()
			if len(mrs) != attempts+1 || mrs[0].Fingerprint != tokens.Fingerprint("tok-1") || mrs[0].Status != 401 ||
				mrs[attempts].Fingerprint != tokens.Fingerprint("tok-2") || mrs[attempts].Status != 200 {
				t.Errorf("model requests %+v", mrs)
			}
			if st := srv.Stats(); st.Calls != 3 || st.Sessions != 1 || st.Turns != 2 || st.TurnErrors != 1 {
				t.Errorf("stats %+v", st)
			}

			if err := srv.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-c.jc.DisconnectNotify():
			case <-time.After(waitFor):
				t.Fatal("Close left the connection open")
			}
			if _, err := c.try("ping", nil); !errors.Is(err, jsonrpc2.ErrClosed) {
				t.Errorf("ping after Close: %v", err)
			}
		})
	}
}
