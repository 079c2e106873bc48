package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// Every refusal carries its code and a message that says which session,
// which provider and what failed, and never the token.
func TestHandlerRefusals(t *testing.T) {
	verifyNoLeaks(t)
	policy := tokens.DefaultPolicy()
	policy.BackoffBase = time.Hour // the second call to a failing credential is surely in back-off
	policy.BackoffMax = time.Hour
	b := newTestBroker(t, actors.Options{RequestTimeout: 200 * time.Millisecond, Policy: &policy, Rand: func() float64 { return 0.999 }})
	rt := dial(t, b, ConnOptions{}, nil)
	const secret = "tok-never-shown-1234567890"
	fail := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		return tokens.Token{}, errors.New("identity endpoint answered 403")
	})
	hang := tokens.Func(func(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
		<-ctx.Done()
		return tokens.Token{}, ctx.Err()
	})
	bearer := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		return tokens.Token{Value: "Bearer " + secret, ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
	empty := tokens.BareFunc(func(context.Context, tokens.Request) (string, error) { return "", nil })
	panics := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) { panic(secret) })
	open := func(session string, src tokens.Source) {
		t.Helper()
		if err := rt.client.Router().Open(session, []actors.Provider{{Name: "prov-" + session, Scope: "scope-a", Source: src}}); err != nil {
			t.Fatal(err)
		}
	}
	open("fail", fail)
	open("backoff", fail)
	open("hang", hang)
	open("bearer", bearer)
	open("empty", empty)
	open("panic", panics)
	open("ok", staticSource(secret))
	// Put "backoff" into back-off.
	if _, err := rt.token(context.Background(), MethodGetToken, "backoff", "prov-backoff"); err == nil {
		t.Fatal("failing credential served")
	}

	cases := []struct {
		name, method, session, provider string
		params                          any // overrides session/provider
		code                            int64
		says                            []string
	}{
		{"unknown session", MethodGetToken, "nope", "prov-ok", nil, CodeUnknownSession, []string{`"nope"`, "not registered"}},
		{"unknown provider", MethodAcquire, "ok", "other", nil, CodeUnknownProvider, []string{`"ok"`, `"other"`, "no bearer-token provider"}},
		{"credential error", MethodGetToken, "fail", "prov-fail", nil, CodeCredential, []string{`"fail"`, `"prov-fail"`, "credential failed", "403"}},
		{"back-off", MethodAcquire, "backoff", "prov-backoff", nil, CodeCredential, []string{`"backoff"`, `"prov-backoff"`, "403", "next try"}},
		{"timeout", MethodGetToken, "hang", "prov-hang", nil, CodeTimeout, []string{`"hang"`, `"prov-hang"`, "timed out"}},
		{"Bearer prefix", MethodGetToken, "bearer", "prov-bearer", nil, CodeInvalidToken, []string{`"bearer"`, `"prov-bearer"`, "invalid token", "Bearer"}},
		{"empty token", MethodAcquire, "empty", "prov-empty", nil, CodeInvalidToken, []string{`"empty"`, `"prov-empty"`, "invalid token", "empty"}},
		{"panic", MethodGetToken, "panic", "prov-panic", nil, CodeCredential, []string{`"panic"`, `"prov-panic"`, "panicked"}},
		{"wrong scope", MethodAcquire, "", "", map[string]string{"sessionId": "ok", "providerName": "prov-ok", "scope": "scope-b"}, jsonrpc2.CodeInvalidParams, []string{`"ok"`, `"prov-ok"`, `"scope-b"`}},
		{"params not an object", MethodGetToken, "", "", []string{"ok"}, jsonrpc2.CodeInvalidParams, []string{MethodGetToken, "object"}},
		{"sessionId missing", MethodGetToken, "", "", map[string]string{"providerName": "p"}, jsonrpc2.CodeInvalidParams, []string{`"sessionId" is required`}},
		{"providerName a number", MethodAcquire, "", "", map[string]any{"sessionId": "ok", "providerName": 7}, jsonrpc2.CodeInvalidParams, []string{`"providerName" must be a string`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			params := tc.params
			if params == nil {
				params = map[string]string{"sessionId": tc.session, "providerName": tc.provider}
			}
			var raw json.RawMessage
			err := rt.Call(context.Background(), tc.method, params, &raw)
			var rpcErr *jsonrpc2.Error
			if !errors.As(err, &rpcErr) {
				t.Fatalf("got %s, %v; want error code %d", raw, err, tc.code)
			}
			if rpcErr.Code != tc.code {
				t.Errorf("code %d, want %d (%s)", rpcErr.Code, tc.code, rpcErr.Message)
			}
			for _, s := range tc.says {
				if !strings.Contains(rpcErr.Message, s) {
					t.Errorf("message %q does not say %s", rpcErr.Message, s)
				}
			}
			if strings.Contains(rpcErr.Message, secret) || rpcErr.Data != nil && strings.Contains(string(*rpcErr.Data), secret) {
				t.Errorf("message carries the token: %s", tokens.Fingerprint(secret))
			}
		})
	}
}

// The two dialects' result shapes: getToken exactly {token}; acquire adds
// expiresOnTimestamp in Unix milliseconds, and leaves it out for a bare
// token.
func TestHandlerResultShapes(t *testing.T) {
	verifyNoLeaks(t)
	b := newTestBroker(t, actors.Options{})
	rt := dial(t, b, ConnOptions{}, nil)
	exp := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	err := rt.client.Router().Open("s", []actors.Provider{
		{Name: "cached", Source: tokens.Static(tokens.Token{Value: "tok-c", ExpiresOn: exp})},
		{Name: "bare", Source: tokens.BareFunc(func(context.Context, tokens.Request) (string, error) { return "tok-b", nil })},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		MethodGetToken + " cached": `{"token":"tok-c"}`,
		MethodGetToken + " bare":   `{"token":"tok-b"}`,
		MethodAcquire + " cached":  `{"token":"tok-c","expiresOnTimestamp":` + itoa(int(exp.UnixMilli())) + `}`,
		MethodAcquire + " bare":    `{"token":"tok-b"}`,
	}
	for k, w := range want {
		method, provider, _ := strings.Cut(k, " ")
		raw, err := rt.token(context.Background(), method, "s", provider)
		if err != nil || string(raw) != w {
			t.Errorf("%s: %s %v, want %s", k, raw, err, w)
		}
	}
}

// Every other method goes to the service's handler; without one, requests
// get method-not-found and notifications are dropped.
func TestHandlerPassesOtherMethods(t *testing.T) {
	verifyNoLeaks(t)
	b := newTestBroker(t, actors.Options{})
	seen := make(chan string, 4)
	next := jsonrpc2.HandlerWithError(func(_ context.Context, _ *jsonrpc2.Conn, r *jsonrpc2.Request) (any, error) {
		seen <- r.Method
		return "from next", nil
	})
	rt := dial(t, b, ConnOptions{}, next)
	var got string
	if err := rt.Call(context.Background(), "session.event", nil, &got); err != nil || got != "from next" {
		t.Fatalf("%q %v", got, err)
	}
	if m := <-seen; m != "session.event" {
		t.Fatalf("next saw %q", m)
	}

	bare := dial(t, b, ConnOptions{}, nil)
	if err := bare.Notify(context.Background(), "session.event", nil); err != nil {
		t.Fatal(err)
	}
	err := bare.Call(context.Background(), "x.unknown", nil, &got)
	var rpcErr *jsonrpc2.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != jsonrpc2.CodeMethodNotFound {
		t.Fatalf("unknown method: %v", err)
	}
}

// Every broker sentinel goes out with its code; the ones the table above
// cannot provoke on a quiet connection (a wait for a call slot) included.
func TestErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int64
	}{
		{actors.ErrUnknownSession, CodeUnknownSession},
		{actors.ErrUnknownProvider, CodeUnknownProvider},
		{actors.ErrScopeMismatch, jsonrpc2.CodeInvalidParams},
		{actors.ErrInvalidToken, CodeInvalidToken},
		{actors.ErrTimeout, CodeTimeout},
		{actors.ErrNoCallSlot, CodeTimeout},
		{actors.ErrCredential, CodeCredential},
		{actors.ErrBackoff, CodeCredential},
		{actors.ErrClosed, CodeClosed},
		{context.Canceled, CodeClosed},
		{errors.New("anything else"), jsonrpc2.CodeInternalError},
	} {
		wrapped := fmt.Errorf("session %q: %w", "s", tc.err)
		if got := toRPCError(wrapped); got.Code != tc.code || got.Message != wrapped.Error() {
			t.Errorf("%v: code %d, message %q; want %d and the error's text", tc.err, got.Code, got.Message, tc.code)
		}
	}
}
