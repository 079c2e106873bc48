package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// A token the model endpoint rejects heals: the turn that got 401 on every
// retry fails with ErrTokenRejected (still a *SessionError), the client has
// invalidated the cached token, and the next turn succeeds with a fresh one.
// With a shared Credential and with a per-session source, in both dialects.
func TestRejectedTokenHeals(t *testing.T) {
	for _, d := range []runtimesim.Dialect{runtimesim.Acquire, runtimesim.GetToken} {
		for _, shared := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/shared=%v", d, shared), func(t *testing.T) {
				const rejected = "tok-1"
				srv := newSimServer(t, runtimesim.Options{Dialect: d}, fakemodel.Options{
					RequireToken: func(auth string) bool { return auth != "Bearer "+rejected },
				})
				b := simBroker(t)
				c := connectTo(t, b, srv)
				var calls atomic.Int64
				var src tokens.Source = tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
					return tokens.Token{Value: fmt.Sprintf("tok-%d", calls.Add(1)), ExpiresOn: time.Now().Add(time.Hour)}, nil
				})
				if shared {
					cred, err := b.NewCredential("mi", "", src)
					if err != nil {
						t.Fatal(err)
					}
					src = cred
				}
				sess, err := c.CreateSession(ctxT(t), sessions.SessionConfig{
					Model:    "gpt-4o",
					Provider: &sessions.ProviderConfig{Type: "openai", BaseURL: srv.Model.URL(), BearerTokenSource: src},
				})
				if err != nil {
					t.Fatal(err)
				}

				_, err = sess.SendAndWait(ctxT(t), "first")
				var se *client.SessionError
				if !errors.Is(err, client.ErrTokenRejected) || !errors.As(err, &se) || se.Type != "authentication" || !errors.Is(err, client.ErrSessionFailed) {
					t.Fatalf("first turn: %v, want ErrTokenRejected wrapping the authentication SessionError", err)
				}
				if !strings.Contains(err.Error(), "invalidated") || !strings.Contains(err.Error(), `"default"`) {
					t.Errorf("the error does not say what was invalidated: %v", err)
				}
				if strings.Contains(err.Error(), rejected) {
					t.Errorf("the error shows the token")
				}

				if ans, err := sess.SendAndWait(ctxT(t), "second"); err != nil || ans != fakemodel.DefaultReply {
					t.Fatalf("second turn: %q, %v", ans, err)
				}
				reqs := srv.ModelRequests()
				first, last := reqs[0], reqs[len(reqs)-1]
				if first.Fingerprint != tokens.Fingerprint(rejected) || first.Status != 401 {
					t.Errorf("first model request %+v, want the rejected token and 401", first)
				}
				if last.Fingerprint == first.Fingerprint || last.Status != 200 {
					t.Errorf("last model request %+v, want a fresh token and 200", last)
				}
				if n := calls.Load(); n != 2 {
					t.Errorf("source called %d times, want 2 (cold, then once after the invalidation)", n)
				}
			})
		}
	}
}

// Only our tokens are invalidated: a 401 from the endpoint of a provider
// with a static key leaves the session's other provider's cached token in
// place and reaches the caller as the runtime sent it.
func TestStaticKeyRejectionDoesNotHeal(t *testing.T) {
	srv := newSimServer(t, runtimesim.Options{Dialect: runtimesim.GetToken}, fakemodel.Options{})
	keyed, err := fakemodel.Start(fakemodel.Options{RequireToken: func(string) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = keyed.Close() })
	c := connectTo(t, simBroker(t), srv)
	var calls atomic.Int64
	src := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		return tokens.Token{Value: fmt.Sprintf("tok-%d", calls.Add(1)), ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
	sess, err := c.CreateSession(ctxT(t), sessions.SessionConfig{
		Model:  "mi/m",
		Models: []sessions.ModelConfig{{ID: "m", Provider: "mi"}, {ID: "m", Provider: "static"}},
		Providers: []sessions.NamedProviderConfig{
			{Name: "mi", ProviderConfig: sessions.ProviderConfig{Type: "openai", BaseURL: srv.Model.URL(), BearerTokenSource: src}},
			{Name: "static", ProviderConfig: sessions.ProviderConfig{Type: "openai", BaseURL: keyed.URL(), APIKey: "sk-static"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.SendAndWait(ctxT(t), "warm mi's cache"); err != nil {
		t.Fatal(err)
	}
	if err := sess.SwitchModel(ctxT(t), "static/m"); err != nil {
		t.Fatal(err)
	}
	_, err = sess.SendAndWait(ctxT(t), "x")
	var se *client.SessionError
	if !errors.As(err, &se) || se.Type != "authentication" || errors.Is(err, client.ErrTokenRejected) {
		t.Fatalf("static key 401: %v, want the plain authentication SessionError", err)
	}
	if err := sess.SwitchModel(ctxT(t), "mi/m"); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.SendAndWait(ctxT(t), "mi again"); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("mi's source called %d times, want 1: its token was invalidated for another provider's 401", n)
	}
}

// One tenant's deployment refuses the host identity (a missing role
// assignment: every token gets 401); three other tenants use the same
// shared credential against a deployment that accepts it. Over 8 rounds of
// turns the misconfigured tenant costs the shared identity one extra call,
// not one per failed turn; the healthy tenants' turns all succeed; from
// its second turn on, the misconfigured tenant's error says that a fresh
// token was rejected too.
func TestRefusedIdentityDoesNotAmplify(t *testing.T) {
	srv := newSimServer(t, runtimesim.Options{Dialect: runtimesim.GetToken}, fakemodel.Options{})
	refusing, err := fakemodel.Start(fakemodel.Options{RequireToken: func(string) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = refusing.Close() })
	b := simBroker(t)
	c := connectTo(t, b, srv)
	var calls atomic.Int64
	cred, err := b.NewCredential("host-mi", "", tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		return tokens.Token{Value: fmt.Sprintf("mi-%d", calls.Add(1)), ExpiresOn: time.Now().Add(time.Hour)}, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	open := func(baseURL string) *client.Session {
		s, err := c.CreateSession(ctxT(t), sessions.SessionConfig{
			Model:    "gpt-4o",
			Provider: &sessions.ProviderConfig{Type: "openai", BaseURL: baseURL, BearerTokenSource: cred},
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	bad := open(refusing.URL())
	healthy := []*client.Session{open(srv.Model.URL()), open(srv.Model.URL()), open(srv.Model.URL())}
	for round := range 8 {
		for i, s := range healthy {
			if _, err := s.SendAndWait(ctxT(t), "hi"); err != nil {
				t.Fatalf("round %d: healthy tenant %d: %v", round, i, err)
			}
		}
		_, err := bad.SendAndWait(ctxT(t), "hi")
		if !errors.Is(err, client.ErrTokenRejected) {
			t.Fatalf("round %d: misconfigured tenant: %v, want ErrTokenRejected", round, err)
		}
		again := errors.Is(err, actors.ErrRejectedAgain)
		if round == 0 && (again || !strings.Contains(err.Error(), "invalidated")) {
			t.Fatalf("round 0: %v, want the first rejection to drop the token", err)
		}
		if round > 0 && (!again || !strings.Contains(err.Error(), "rejected again with a token fetched") ||
			!strings.Contains(err.Error(), "check its role assignment")) {
			t.Fatalf("round %d: %v, want it to say the fresh token was rejected too", round, err)
		}
		if round == 7 {
			t.Logf("round %d: %v", round, err)
		}
	}
	if n := calls.Load(); n > 3 {
		t.Fatalf("%d calls of the shared identity for 8 rounds, want at most 3", n)
	}
	t.Logf("shared identity called %d times for 32 turns, 8 of them rejected", calls.Load())
}
