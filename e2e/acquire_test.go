package e2e

// The core flow of the published design (the acquire dialect) end to end:
// client.Client on one end of a real JSON-RPC connection, the runtime
// simulator on the other, a fake model endpoint on 127.0.0.1 receiving the
// bearer tokens. Nothing here calls a handler directly.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/transport"
)

// simHarness is a broker, a client and a simulator joined by a pipe, and a
// fake model endpoint.
type simHarness struct {
	t      *testing.T
	model  *fakemodel.Server
	sim    *runtimesim.Runtime
	client *client.Client
}

func newSimHarness(t *testing.T, simOpts runtimesim.Options, brokerOpts actors.Options) *simHarness {
	t.Helper()
	model, err := fakemodel.Start(fakemodel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { model.Close() })
	broker := newBroker(t, brokerOpts)
	sim := runtimesim.New(simOpts)
	clientEnd, runtimeEnd := net.Pipe()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = sim.Serve(context.Background(), runtimeEnd)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := client.Connect(ctx, broker, clientEnd, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = client.Close()
		<-served
	})
	return &simHarness{t: t, model: model, sim: sim, client: client}
}

func (h *simHarness) create(cfg sessions.SessionConfig) *client.Session {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.client.CreateSession(ctx, cfg)
	if err != nil {
		h.t.Fatalf("create session: %v", err)
	}
	return s
}

func (h *simHarness) turn(s *client.Session) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.SendAndWait(ctx, "hello"); err != nil {
		h.t.Fatalf("turn: %v", err)
	}
}

// createWhole creates a session on model "gpt-4o" whose whole-session
// provider is the fake endpoint, with tokens from src.
func (h *simHarness) createWhole(src tokens.Source, scope string) *client.Session {
	h.t.Helper()
	return h.create(sessions.SessionConfig{
		Model:    "gpt-4o",
		Provider: &sessions.ProviderConfig{Type: "openai", BaseURL: h.model.URL(), BearerTokenSource: src, BearerTokenScope: scope},
	})
}

// bearers are the tokens the model endpoint received, in order.
func (h *simHarness) bearers() []string {
	var out []string
	for _, r := range h.model.Requests() {
		out = append(out, r.BearerToken())
	}
	return out
}

// Scenario (a): the callback's token reaches the endpoint as a bearer, the
// whole-session provider is asked for as "default" with an empty scope, and
// with a far-future expiry a turn needs exactly one acquisition (later turns
// none: the runtime caches per expiresOnTimestamp).
func TestAcquireTokenReachesModelEndpoint(t *testing.T) {
	h := newSimHarness(t, runtimesim.Options{Dialect: runtimesim.Acquire}, actors.Options{})
	cred := newCredential("whole")
	cred.life = 24 * time.Hour
	s := h.createWhole(cred, "")
	h.turn(s)
	if got := h.sim.Stats().TokenRequests; got != 1 {
		t.Fatalf("token requests after one turn: %d, want 1", got)
	}
	h.turn(s)
	h.turn(s)
	reqs := h.sim.TokenRequests()
	if len(reqs) != 1 || cred.calls() != 1 {
		t.Fatalf("three turns: %d token requests, %d credential calls; want 1 and 1", len(reqs), cred.calls())
	}
	if r := reqs[0]; r.Method != transport.MethodAcquire || r.ProviderName != "default" || r.Scope != "" || r.SessionID != s.ID() {
		t.Fatalf("token request %+v: want acquire for provider \"default\", empty scope, session %s", r, s.ID())
	}
	if r := reqs[0]; r.ExpiresOn.IsZero() {
		t.Fatal("acquire reply carried no expiresOnTimestamp for an expiring token")
	}
	bearers := h.bearers()
	if len(bearers) != 3 {
		t.Fatalf("model requests: %d, want 3", len(bearers))
	}
	for i, b := range bearers {
		if !cred.has(b) {
			t.Fatalf("model request %d carried token %s, not the callback's", i, tokens.Fingerprint(b))
		}
	}
	if got := cred.requests()[0]; got.ProviderName != "default" || got.SessionID != s.ID() || got.Scope != "" {
		t.Fatalf("callback asked with %+v", got)
	}
}

// Scenario (b): with an already-expired token every request carries a
// freshly acquired, distinct token.
func TestAcquireExpiredTokenIsNeverReused(t *testing.T) {
	h := newSimHarness(t, runtimesim.Options{Dialect: runtimesim.Acquire, TurnRequests: 3}, actors.Options{})
	cred := newCredential("expired")
	cred.life = -time.Minute
	s := h.createWhole(cred, "")
	h.turn(s)
	h.turn(s)
	bearers := h.bearers()
	if len(bearers) != 6 {
		t.Fatalf("model requests: %d, want 6", len(bearers))
	}
	seen := map[string]bool{}
	for i, b := range bearers {
		if !cred.has(b) || seen[b] {
			t.Fatalf("request %d: token %s reused or not issued by the callback", i, tokens.Fingerprint(b))
		}
		seen[b] = true
	}
	if got := h.sim.Stats().TokenRequests; got != 6 || cred.calls() != 6 {
		t.Fatalf("token requests %d, credential calls %d; want 6 and 6", got, cred.calls())
	}
}

// Scenario (c): two named providers in one session; each turn is
// authenticated with its own provider's token and each callback sees its
// own provider name and scope. The runtime forwards the configured scope,
// or "" when none is set.
func TestAcquireNamedProvidersEachUseTheirOwnToken(t *testing.T) {
	h := newSimHarness(t, runtimesim.Options{Dialect: runtimesim.Acquire}, actors.Options{})
	const miScope = "https://cognitiveservices.azure.com/.default"
	mi := newCredential("mi")
	oauth := newCredential("oauth")
	s := h.create(sessions.SessionConfig{
		Model: "mi/big",
		Models: []sessions.ModelConfig{
			{ID: "big", Provider: "mi", WireModel: "gpt-4o"},
			{ID: "small", Provider: "oauth", WireModel: "gpt-4o-mini"},
		},
		Providers: []sessions.NamedProviderConfig{
			{Name: "mi", ProviderConfig: sessions.ProviderConfig{Type: "openai", BaseURL: h.model.URL(), BearerTokenSource: mi, BearerTokenScope: miScope}},
			{Name: "oauth", ProviderConfig: sessions.ProviderConfig{Type: "openai", BaseURL: h.model.URL(), BearerTokenSource: oauth}},
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h.turn(s)
	if err := s.SwitchModel(ctx, "oauth/small"); err != nil {
		t.Fatal(err)
	}
	h.turn(s)
	if err := s.SwitchModel(ctx, "mi/big"); err != nil {
		t.Fatal(err)
	}
	h.turn(s)

	reqs := h.model.Requests()
	if len(reqs) != 3 {
		t.Fatalf("model requests: %d, want 3", len(reqs))
	}
	wantModel := []string{"gpt-4o", "gpt-4o-mini", "gpt-4o"}
	wantCred := []*credential{mi, oauth, mi}
	for i, r := range reqs {
		if r.Model != wantModel[i] || !wantCred[i].has(r.BearerToken()) {
			t.Fatalf("turn %d: model %s with token %s; want %s with %s's token", i+1, r.Model, tokens.Fingerprint(r.BearerToken()), wantModel[i], wantCred[i].prefix)
		}
	}
	if mi.calls() != 1 || oauth.calls() != 1 {
		t.Fatalf("credential calls: mi %d, oauth %d; want 1 each", mi.calls(), oauth.calls())
	}
	if got := mi.requests()[0]; got.ProviderName != "mi" || got.Scope != miScope {
		t.Fatalf("mi callback asked with %+v", got)
	}
	if got := oauth.requests()[0]; got.ProviderName != "oauth" || got.Scope != "" {
		t.Fatalf("oauth callback asked with %+v", got)
	}
	scopes := map[string]string{}
	for _, r := range h.sim.TokenRequests() {
		scopes[r.ProviderName] = r.Scope
	}
	if scopes["mi"] != miScope || scopes["oauth"] != "" || len(scopes) != 2 {
		t.Fatalf("scopes on the wire: %v", scopes)
	}
}

// A bare token (a callback returning a plain string) is single use: the
// callback runs for every request, in both dialects.
func TestBareTokenFetchedPerRequest(t *testing.T) {
	for _, d := range []runtimesim.Dialect{runtimesim.Acquire, runtimesim.GetToken} {
		t.Run(d.String(), func(t *testing.T) {
			h := newSimHarness(t, runtimesim.Options{Dialect: d, TurnRequests: 2}, actors.Options{})
			cred := newCredential("bare")
			cred.bare = true
			s := h.createWhole(cred, "")
			h.turn(s)
			h.turn(s)
			bearers := h.bearers()
			if len(bearers) != 4 || cred.calls() != 4 {
				t.Fatalf("model requests %d, credential calls %d; want 4 and 4", len(bearers), cred.calls())
			}
			reqs := h.sim.TokenRequests()
			if len(reqs) != 4 {
				t.Fatalf("token requests %d, want 4", len(reqs))
			}
			for i, r := range reqs {
				if !r.ExpiresOn.IsZero() {
					t.Fatalf("token request %d: a bare token was given an expiry", i)
				}
			}
			seen := map[string]bool{}
			for _, b := range bearers {
				if seen[b] {
					t.Fatalf("bare token %s used twice", tokens.Fingerprint(b))
				}
				seen[b] = true
			}
		})
	}
}

// The getToken dialect asks before every request; the broker's cache
// answers all but the first.
func TestGetTokenServedFromCache(t *testing.T) {
	h := newSimHarness(t, runtimesim.Options{Dialect: runtimesim.GetToken, TurnRequests: 2}, actors.Options{})
	cred := newCredential("gt")
	s := h.createWhole(cred, "api://x/.default")
	h.turn(s)
	h.turn(s)
	if got := h.sim.Stats().TokenRequests; got != 4 {
		t.Fatalf("token requests %d, want 4 (one per model request)", got)
	}
	if cred.calls() != 1 || cred.requests()[0].Scope != "api://x/.default" {
		t.Fatalf("credential calls %d (want 1), scope %q", cred.calls(), cred.requests()[0].Scope)
	}
	if got := h.sim.Stats().TokenInvalid; got != 0 {
		t.Fatalf("%d getToken replies were rejected by the runtime", got)
	}
}

// Every row of docs/PROTOCOL.md's "Our error replies" up to -32005 gets a
// clear JSON-RPC error, and the connection keeps serving a healthy session
// after each.
func TestErrorRepliesKeepTheConnectionServing(t *testing.T) {
	w := newHardWorld(t, actors.Options{RequestTimeout: 300 * time.Millisecond})
	rt := w.dial("pipe")
	// A token with the scheme still on it: refused, and its value must
	// not be quoted back in any error.
	prefixed := w.secret("tok-prefixed-")

	healthy := tokens.Static(tokens.Token{Value: "healthy-token", ExpiresOn: time.Now().Add(time.Hour)})
	hang := tokens.Func(func(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
		<-ctx.Done()
		return tokens.Token{}, ctx.Err()
	})
	fail := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		return tokens.Token{}, fmt.Errorf("identity endpoint said 403 for client 1234")
	})
	rt.open("ok", actors.Provider{Name: "default", Source: healthy})
	rt.open("bad",
		actors.Provider{Name: "fail", Source: fail},
		actors.Provider{Name: "hang", Source: hang},
		actors.Provider{Name: "empty", Source: tokens.BareFunc(func(context.Context, tokens.Request) (string, error) { return "", nil })},
		actors.Provider{Name: "prefixed", Source: tokens.BareFunc(func(context.Context, tokens.Request) (string, error) { return "Bearer " + prefixed, nil })},
		actors.Provider{Name: "scoped", Scope: "api://a/.default", Source: healthy},
	)

	acq := transport.MethodAcquire
	for _, tc := range []struct {
		name     string
		method   string
		params   any
		code     int64
		contains []string
	}{
		{"params not an object", acq, []string{"x"}, jsonrpc2.CodeInvalidParams, []string{"params must be an object"}},
		{"params null", acq, json.RawMessage("null"), jsonrpc2.CodeInvalidParams, []string{"params must be an object"}},
		{"sessionId missing", acq, map[string]any{"providerName": "default"}, jsonrpc2.CodeInvalidParams, []string{`"sessionId" is required`}},
		{"sessionId not a string", acq, map[string]any{"sessionId": 7, "providerName": "default"}, jsonrpc2.CodeInvalidParams, []string{`"sessionId" must be a string`}},
		{"providerName missing", transport.MethodGetToken, map[string]any{"sessionId": "ok"}, jsonrpc2.CodeInvalidParams, []string{`"providerName" is required`}},
		{"providerName not a string", acq, map[string]any{"sessionId": "ok", "providerName": true}, jsonrpc2.CodeInvalidParams, []string{`"providerName" must be a string`}},
		{"unknown session", acq, map[string]any{"sessionId": "nope", "providerName": "default"}, transport.CodeUnknownSession, []string{`"nope"`, "not registered"}},
		{"unknown provider", acq, map[string]any{"sessionId": "ok", "providerName": "X"}, transport.CodeUnknownProvider, []string{`no bearer-token provider registered for provider "X"`}},
		{"credential failed", acq, map[string]any{"sessionId": "bad", "providerName": "fail"}, transport.CodeCredential, []string{`"fail"`, "identity endpoint said 403 for client 1234"}},
		{"credential timed out", acq, map[string]any{"sessionId": "bad", "providerName": "hang"}, transport.CodeTimeout, []string{`"hang"`, "credential did not answer within"}},
		{"empty token", acq, map[string]any{"sessionId": "bad", "providerName": "empty"}, transport.CodeInvalidToken, []string{`"empty"`, "empty token"}},
		{"Bearer-prefixed token", transport.MethodGetToken, map[string]any{"sessionId": "bad", "providerName": "prefixed"}, transport.CodeInvalidToken, []string{`"prefixed"`, "Bearer"}},
		{"scope not configured", acq, map[string]any{"sessionId": "bad", "providerName": "scoped", "scope": "api://other/.default"}, jsonrpc2.CodeInvalidParams, []string{"api://other/.default"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			res, rpcErr := rt.call(t, tc.method, tc.params)
			if rpcErr == nil {
				t.Fatalf("got result %v, want error %d", res, tc.code)
			}
			if rpcErr.Code != tc.code {
				t.Errorf("code %d, want %d (%s)", rpcErr.Code, tc.code, rpcErr.Message)
			}
			for _, s := range tc.contains {
				if !strings.Contains(rpcErr.Message, s) {
					t.Errorf("message %q lacks %q", rpcErr.Message, s)
				}
			}
			if strings.Contains(rpcErr.Message, prefixed) {
				t.Errorf("message carries the token %s", tokens.Fingerprint(prefixed))
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("answered after %s", d)
			}
			// The connection still serves the healthy session.
			res, rpcErr = rt.call(t, acq, map[string]any{"sessionId": "ok", "providerName": "default"})
			if rpcErr != nil || res["token"] != "healthy-token" {
				t.Fatalf("healthy session after %q: %v, %v", tc.name, res["token"] != nil, rpcErr)
			}
		})
	}
	// Nor in anything logged, traced or measured.
	w.assertNoSecrets()
}

// The getToken reply is exactly {token}; the acquire reply carries the
// expiry in Unix milliseconds.
func TestReplyShapes(t *testing.T) {
	rt := newHardWorld(t, actors.Options{}).dial("pipe")
	exp := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	rt.open("s", actors.Provider{Name: "p", Source: tokens.Static(tokens.Token{Value: "v1", ExpiresOn: exp})})
	res, rpcErr := rt.call(t, transport.MethodGetToken, map[string]any{"sessionId": "s", "providerName": "p"})
	if rpcErr != nil || len(res) != 1 || res["token"] != "v1" {
		t.Fatalf("getToken result has fields %d (want exactly token), err %v", len(res), rpcErr)
	}
	res, rpcErr = rt.call(t, transport.MethodAcquire, map[string]any{"sessionId": "s", "providerName": "p", "scope": ""})
	if rpcErr != nil || len(res) != 2 || res["token"] != "v1" || res["expiresOnTimestamp"] != float64(exp.UnixMilli()) {
		t.Fatalf("acquire result: %d fields, expiry %v (want %d), err %v", len(res), res["expiresOnTimestamp"], exp.UnixMilli(), rpcErr)
	}
}

// A session registered on one connection is refused on another, even when
// the other names its id, and the other's own session of the same id gets
// its own token.
func TestSessionsAreRoutedPerConnection(t *testing.T) {
	w := newHardWorld(t, actors.Options{})
	rtA, rtB := w.dial("pipe"), w.dial("pipe")
	var calls atomic.Int32
	src := func(v string) tokens.Source {
		return tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
			calls.Add(1)
			return tokens.Token{Value: v, ExpiresOn: time.Now().Add(time.Hour)}, nil
		})
	}
	rtA.open("tenant-a", actors.Provider{Name: "default", Source: src("token-a")})
	_, rpcErr := rtB.call(t, transport.MethodGetToken, map[string]any{"sessionId": "tenant-a", "providerName": "default"})
	if rpcErr == nil || rpcErr.Code != transport.CodeUnknownSession {
		t.Fatalf("connection B was answered for A's session: %v", rpcErr)
	}
	if calls.Load() != 0 {
		t.Fatal("A's credential was called for B's request")
	}
	rtB.open("tenant-a", actors.Provider{Name: "default", Source: src("token-b")})
	resA, errA := rtA.call(t, transport.MethodGetToken, map[string]any{"sessionId": "tenant-a", "providerName": "default"})
	resB, errB := rtB.call(t, transport.MethodGetToken, map[string]any{"sessionId": "tenant-a", "providerName": "default"})
	if errA != nil || errB != nil || resA["token"] != "token-a" || resB["token"] != "token-b" {
		t.Fatalf("same session id on two connections crossed: A ok=%v B ok=%v", resA["token"] == "token-a", resB["token"] == "token-b")
	}
}
