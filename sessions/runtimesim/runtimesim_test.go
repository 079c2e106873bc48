package runtimesim

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/internal/syncbuf"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
)

func TestConnectAndPing(t *testing.T) {
	c := connect(t, New(Options{Dialect: GetToken}), tokenN)
	var hello struct {
		OK              bool
		ProtocolVersion int
		Version         string
	}
	if err := json.Unmarshal(c.call("connect", map[string]any{}), &hello); err != nil {
		t.Fatal(err)
	}
	if !hello.OK || hello.ProtocolVersion != 3 || hello.Version != "sim-getToken" {
		t.Fatalf("connect = %+v", hello)
	}
	var pong struct {
		Message         string
		Timestamp       time.Time
		ProtocolVersion int
	}
	if err := json.Unmarshal(c.call("ping", map[string]any{}), &pong); err != nil {
		t.Fatal(err)
	}
	if pong.Message != "pong" || pong.Timestamp.IsZero() || pong.ProtocolVersion != 3 {
		t.Fatalf("ping = %+v", pong)
	}
	if e := c.rpcError("nosuch.method", map[string]any{}); e.Code != jsonrpc2.CodeMethodNotFound || e.Message != "Unhandled method nosuch.method" {
		t.Fatalf("unknown method: %+v", e)
	}
}

// The zero Options play DefaultDialect, the real CLI's: getToken requests,
// honouring hasBearerTokenProvider only.
func TestZeroOptionsPlayDefaultDialect(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	c := connect(t, New(Options{}), tokenN)
	c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true}))
	if texts, sErr := c.send("s", "p"); len(texts) != 1 || sErr != nil {
		t.Fatalf("turn: %q %v", texts, sErr)
	}
	calls := c.tokenCalls()
	if DefaultDialect != GetToken || len(calls) != 1 || calls[0].method != "providerToken.getToken" {
		t.Fatalf("zero Options sent %+v, want one providerToken.getToken (DefaultDialect %s)", calls, DefaultDialect)
	}
}

func TestGetTokenTurn(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	rt := New(Options{Dialect: GetToken})
	c := connect(t, rt, tokenN)

	res := c.call("session.create", wholeSessionParams("s1", map[string]any{
		"type": "openai", "baseUrl": model.URL(), "hasBearerTokenProvider": true,
	}))
	// The lifecycle notification precedes the reply, as with the real CLI.
	select {
	case n := <-c.queue("s1"):
		if n.method != "session.lifecycle" || n.ev.Type != "session.created" {
			t.Fatalf("first notification %s %s", n.method, n.raw)
		}
	default:
		t.Fatal("no session.lifecycle before the session.create reply")
	}
	var created struct {
		SessionID  string
		Mode       string
		ModelState struct{ ModelID string }
	}
	if err := json.Unmarshal(res, &created); err != nil {
		t.Fatal(err)
	}
	if created.SessionID != "s1" || created.Mode != "interactive" || created.ModelState.ModelID != "gpt-4o" {
		t.Fatalf("session.create = %s", res)
	}

	var sent struct{ MessageID string }
	if err := json.Unmarshal(c.call("session.send", map[string]any{"sessionId": "s1", "prompt": "hi"}), &sent); err != nil || sent.MessageID == "" {
		t.Fatalf("session.send: %+v %v", sent, err)
	}
	msg := c.next("s1", "assistant.message")
	var data struct {
		Content              string
		MessageID            string
		OriginatingMessageID string
		Model                string
	}
	if err := json.Unmarshal(msg.ev.Event.Data, &data); err != nil {
		t.Fatal(err)
	}
	if data.Content != fakemodel.DefaultReply || data.OriginatingMessageID != sent.MessageID || data.Model != "gpt-4o" || data.MessageID == "" {
		t.Fatalf("assistant.message = %s", msg.raw)
	}
	if ev := msg.ev.Event; ev.ID == "" || ev.ParentID == nil || ev.Timestamp == "" {
		t.Fatalf("event envelope = %s", msg.raw)
	}
	idle := c.next("s1", "session.idle")
	if !idle.ev.Event.Ephemeral || string(idle.ev.Event.Data) != `{"mode":"interactive"}` {
		t.Fatalf("session.idle = %s", idle.raw)
	}

	calls := c.tokenCalls()
	if len(calls) != 1 || calls[0].method != "providerToken.getToken" ||
		!sameJSON(calls[0].params, `{"providerName":"default","sessionId":"s1"}`) {
		t.Fatalf("token requests = %+v", calls)
	}
	reqs := model.Requests()
	if len(reqs) != 1 || reqs[0].Authorization != "Bearer tok-1" || reqs[0].Path != "/openai/v1/chat/completions" || reqs[0].Model != "gpt-4o" || reqs[0].Prompt != "hi" {
		t.Fatalf("model requests = %v", reqs)
	}
	st := rt.Stats()
	if st.Connections != 1 || st.Sessions != 1 || st.Turns != 1 || st.TurnErrors != 0 || st.TokenRequests != 1 || st.ModelRequests != 1 {
		t.Fatalf("stats = %+v", st)
	}
	tr := rt.TokenRequests()[0]
	if tr.SessionID != "s1" || tr.ProviderName != "default" || tr.Fingerprint != fingerprint("tok-1") || tr.Err != "" {
		t.Fatalf("token record = %+v", tr)
	}
	if mr := rt.ModelRequests()[0]; mr.Status != 200 || mr.Fingerprint != fingerprint("tok-1") || mr.SessionID != "s1" || mr.ProviderName != "default" {
		t.Fatalf("model record = %+v", mr)
	}
	var destroyed struct{ Success bool }
	_ = json.Unmarshal(c.call("session.destroy", map[string]any{"sessionId": "s1"}), &destroyed)
	if !destroyed.Success {
		t.Fatal("session.destroy did not succeed")
	}
	_ = json.Unmarshal(c.call("session.destroy", map[string]any{"sessionId": "s1"}), &destroyed)
	if destroyed.Success {
		t.Fatal("second session.destroy succeeded")
	}
	if e := c.rpcError("session.send", map[string]any{"sessionId": "s1", "prompt": "x"}); !strings.Contains(e.Message, "Session not found for sessionId: s1") {
		t.Fatalf("send after destroy: %v", e)
	}
}

// TestWireShapes pins the exact bytes of the messages whose shape was
// copied from Copilot CLI 1.0.102.
func TestWireShapes(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	var w syncbuf.Buffer
	c := connectTee(t, New(Options{Dialect: GetToken}), func(n int, _ string, _ json.RawMessage) (any, error) {
		if n == 1 {
			return map[string]any{"token": "t", "expiresOnTimestamp": 1}, nil
		}
		return map[string]any{"token": "t"}, nil
	}, &w)
	c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true}))
	c.send("s", "p")
	c.send("s", "p")
	want := []string{
		`"method":"providerToken.getToken","params":{"providerName":"default","sessionId":"s"}`,
		`"method":"session.lifecycle","params":{"type":"session.created","sessionId":"s","metadata":{"startTime":"`,
		`"result":{"sessionId":"s","nativeSessionId":"s","startTime":"`,
		`"method":"session.event","params":{"sessionId":"s","event":{"type":"session.error","data":{"errorType":"query","message":"Provider token response was invalid: unknown field ` + "`expiresOnTimestamp`, expected `token`" + `","originatingMessageId":"`,
		`"method":"session.event","params":{"sessionId":"s","event":{"type":"session.idle","data":{"mode":"interactive"},"ephemeral":true,"id":"`,
		`"method":"session.event","params":{"sessionId":"s","event":{"type":"assistant.message","data":{"content":"Hello from the fake model","messageId":"`,
		`"id":1,`,
	}
	for _, frag := range want {
		if !strings.Contains(w.String(), frag) {
			t.Errorf("wire lacks %s", frag)
		}
	}
}

func TestGetTokenAsksBeforeEveryRequest(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	rt := New(Options{Dialect: GetToken, TurnRequests: 2})
	c := connect(t, rt, tokenN)
	c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true}))
	for range 2 {
		if texts, sErr := c.send("s", "p"); len(texts) != 2 || sErr != nil {
			t.Fatalf("turn: %q %v", texts, sErr)
		}
	}
	if got, want := bearers(model), []string{"tok-1", "tok-2", "tok-3", "tok-4"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("bearer tokens %q, want %q", got, want)
	}
}

func TestGetTokenRejectsInvalidResults(t *testing.T) {
	cases := []struct {
		name   string
		result any
		want   string
	}{
		{"expiry", map[string]any{"token": "tok", "expiresOnTimestamp": 1795000000000}, "unknown field `expiresOnTimestamp`, expected `token`"},
		{"null", nil, "invalid type: null, expected struct ProviderTokenAcquireResult"},
		{"bare string", "secret-bare-token", "invalid type: string, expected struct ProviderTokenAcquireResult"},
		{"number token", map[string]any{"token": 42}, "invalid type: integer `42`, expected a string"},
		{"missing token", map[string]any{}, "missing field `token`"},
		{"empty token", map[string]any{"token": ""}, "empty token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			model := fake(t, fakemodel.Options{})
			rt := New(Options{Dialect: GetToken, TokenRetries: 3})
			c := connect(t, rt, func(int, string, json.RawMessage) (any, error) { return tc.result, nil })
			c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true}))
			_, sErr := c.send("s", "p")
			want := "Provider token response was invalid: " + tc.want
			if sErr == nil || sErr["message"] != want || sErr["errorType"] != "query" {
				t.Fatalf("session.error = %v, want message %q", sErr, want)
			}
			if strings.Contains(sErr["message"].(string), "secret") {
				t.Fatal("token value echoed in the error")
			}
			if model.Count() != 0 || len(c.tokenCalls()) != 1 || rt.Stats().TokenInvalid != 1 {
				t.Fatalf("model requests %d, token requests %d (invalid results are not retried)", model.Count(), len(c.tokenCalls()))
			}
		})
	}
}

func TestTokenErrorReply(t *testing.T) {
	for _, retries := range []int{0, 2} {
		model := fake(t, fakemodel.Options{})
		rt := New(Options{Dialect: GetToken, TokenRetries: retries})
		c := connect(t, rt, func(int, string, json.RawMessage) (any, error) { return nil, errors.New("vault is down") })
		c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true}))
		_, sErr := c.send("s", "p")
		msg, _ := sErr["message"].(string)
		if sErr["errorType"] != "query" || !strings.HasSuffix(msg, "Provider token request failed: vault is down") {
			t.Fatalf("retries=%d: session.error = %v", retries, sErr)
		}
		if retries > 0 && !strings.HasPrefix(msg, "Failed to get response from the AI model; retried 2 times") {
			t.Fatalf("retries=%d: message %q", retries, msg)
		}
		if n := len(c.tokenCalls()); n != retries+1 || model.Count() != 0 {
			t.Fatalf("retries=%d: %d token requests, %d model requests", retries, n, model.Count())
		}
		if st := rt.Stats(); st.TokenErrors != retries+1 || st.TurnErrors != 1 {
			t.Fatalf("stats %+v", st)
		}
	}
}

func TestUnauthorizedRetriesWithFreshToken(t *testing.T) {
	model := fake(t, fakemodel.Options{RequireToken: func(auth string) bool { return auth == "Bearer tok-3" }})
	rt := New(Options{Dialect: GetToken})
	c := connect(t, rt, tokenN)
	c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true}))
	// Two 401s are retried (as 1.0.102 does), each with a new token.
	if texts, sErr := c.send("s", "p"); len(texts) != 1 || sErr != nil {
		t.Fatalf("turn: %q %v", texts, sErr)
	}
	if got := bearers(model); !reflect.DeepEqual(got, []string{"tok-1", "tok-2", "tok-3"}) {
		t.Fatalf("bearer tokens %q", got)
	}
	// A third 401 ends the turn.
	_, sErr := c.send("s", "p")
	if sErr["errorType"] != "authentication" || sErr["statusCode"] != float64(401) ||
		!strings.HasPrefix(sErr["message"].(string), "Authentication failed with provider at "+model.URL()+" (HTTP 401).") {
		t.Fatalf("session.error = %v", sErr)
	}
	if n := len(c.tokenCalls()); n != 6 {
		t.Fatalf("%d token requests, want 6", n)
	}
}

func TestServerErrorRetries(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	rt := New(Options{Dialect: GetToken})
	c := connect(t, rt, tokenN)
	c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true}))
	model.FailNext(http.StatusInternalServerError, 2)
	if texts, sErr := c.send("s", "p"); len(texts) != 1 || sErr != nil {
		t.Fatalf("turn: %q %v", texts, sErr)
	}
	if n := len(c.tokenCalls()); n != 3 {
		t.Fatalf("%d token requests for 3 attempts", n)
	}
	model.FailNext(http.StatusServiceUnavailable, 10)
	_, sErr := c.send("s", "p")
	want := "Failed to get response from the AI model; retried 2 times (total retry wait time: 0.00 seconds) Last error: 503 fakemodel: injected failure 503"
	if sErr["errorType"] != "query" || sErr["statusCode"] != float64(503) || sErr["message"] != want {
		t.Fatalf("session.error = %v", sErr)
	}
	if st := rt.Stats(); st.ModelRequests != 6 || st.TokenRequests != 6 {
		t.Fatalf("stats %+v", st)
	}
}

// expiring answers acquire requests with tokens valid for ttl (bare when 0).
func expiring(ttl time.Duration) answerFunc {
	return func(n int, _ string, _ json.RawMessage) (any, error) {
		res := map[string]any{"token": "a-" + strconv.Itoa(n)}
		if ttl != 0 {
			res["expiresOnTimestamp"] = time.Now().Add(ttl).UnixMilli()
		}
		return res, nil
	}
}

func TestAcquireCachesUntilExpiry(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	rt := New(Options{Dialect: Acquire, TurnRequests: 2})
	c := connect(t, rt, expiring(time.Hour))
	c.call("session.create", wholeSessionParams("s", map[string]any{
		"baseUrl": model.URL(), "bearerTokenProvider": true, "bearerTokenScope": "api://x/.default",
	}))
	c.send("s", "p")
	c.send("s", "p")
	calls := c.tokenCalls()
	if len(calls) != 1 || calls[0].method != "providerToken.acquire" ||
		!sameJSON(calls[0].params, `{"sessionId":"s","providerName":"default","scope":"api://x/.default"}`) {
		t.Fatalf("token requests %+v", calls)
	}
	if got := bearers(model); !reflect.DeepEqual(got, []string{"a-1", "a-1", "a-1", "a-1"}) {
		t.Fatalf("bearer tokens %q", got)
	}
	if st := rt.Stats(); st.TokenCacheHits != 3 {
		t.Fatalf("stats %+v", st)
	}
	if tr := rt.TokenRequests()[0]; tr.Scope != "api://x/.default" || tr.ExpiresOn.IsZero() {
		t.Fatalf("token record %+v", tr)
	}
}

func TestAcquireRefetches(t *testing.T) {
	cases := []struct {
		name string
		ttl  time.Duration
	}{
		{"inside refreshBefore", 10 * time.Second},
		{"already expired", -time.Minute},
		{"bare token", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			model := fake(t, fakemodel.Options{})
			c := connect(t, New(Options{Dialect: Acquire}), expiring(tc.ttl))
			c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "bearerTokenProvider": true}))
			c.send("s", "p")
			c.send("s", "p")
			calls := c.tokenCalls()
			if len(calls) != 2 || !sameJSON(calls[0].params, `{"sessionId":"s","providerName":"default","scope":""}`) {
				t.Fatalf("token requests %+v", calls)
			}
			if got := bearers(model); !reflect.DeepEqual(got, []string{"a-1", "a-2"}) {
				t.Fatalf("bearer tokens %q", got)
			}
		})
	}
}

func TestAcquireDropsRejectedToken(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	c := connect(t, New(Options{Dialect: Acquire}), expiring(time.Hour))
	c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "bearerTokenProvider": true}))
	c.send("s", "p")
	model.FailNext(http.StatusUnauthorized, 1)
	if texts, sErr := c.send("s", "p"); len(texts) != 1 || sErr != nil {
		t.Fatalf("turn: %q %v", texts, sErr)
	}
	if got := bearers(model); !reflect.DeepEqual(got, []string{"a-1", "a-1", "a-2"}) {
		t.Fatalf("bearer tokens %q", got)
	}
}

func TestCredentialsPerDialect(t *testing.T) {
	cases := []struct {
		name     string
		dialect  Dialect
		provider map[string]any
		wantAuth string // "" means no Authorization header at all
		wantKey  string
		asks     bool
	}{
		{"getToken ignores bearerTokenProvider", GetToken, map[string]any{"bearerTokenProvider": true}, "", "", false},
		{"acquire ignores hasBearerTokenProvider", Acquire, map[string]any{"hasBearerTokenProvider": true}, "", "", false},
		{"both flags", GetToken, map[string]any{"bearerTokenProvider": true, "hasBearerTokenProvider": true, "bearerTokenScope": "s"}, "Bearer tok-1", "", true},
		{"static apiKey", GetToken, map[string]any{"apiKey": "k1"}, "Bearer k1", "", false},
		{"static bearerToken", Acquire, map[string]any{"bearerToken": "b1"}, "Bearer b1", "", false},
		{"azure apiKey", GetToken, map[string]any{"type": "azure", "apiKey": "k2"}, "", "k2", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			model := fake(t, fakemodel.Options{})
			c := connect(t, New(Options{Dialect: tc.dialect}), tokenN)
			tc.provider["baseUrl"] = model.URL()
			c.call("session.create", wholeSessionParams("s", tc.provider))
			if _, sErr := c.send("s", "p"); sErr != nil {
				t.Fatalf("session.error %v", sErr)
			}
			r := model.Requests()[0]
			if r.HasAuthorization != (tc.wantAuth != "") || r.Authorization != tc.wantAuth || r.APIKey != tc.wantKey {
				t.Fatalf("model request %v api-key set=%t", r, r.APIKey != "")
			}
			if asked := len(c.tokenCalls()) > 0; asked != tc.asks {
				t.Fatalf("asked the client: %t, want %t", asked, tc.asks)
			}
		})
	}
}

func namedParams(id, model string, baseURL string) map[string]any {
	return map[string]any{
		"sessionId": id,
		"model":     model,
		"models": []any{
			map[string]any{"id": "default", "provider": "mi", "wireModel": "gpt-4o"},
			map[string]any{"id": "other", "provider": "static"},
		},
		"providers": []any{
			map[string]any{"name": "mi", "type": "openai", "wireApi": "completions", "baseUrl": baseURL,
				"hasBearerTokenProvider": true, "bearerTokenProvider": true, "bearerTokenScope": "https://cognitiveservices.azure.com/.default"},
			map[string]any{"name": "static", "baseUrl": baseURL, "apiKey": "k"},
		},
	}
}

func TestNamedProviders(t *testing.T) {
	for _, d := range []Dialect{Acquire, GetToken} {
		t.Run(d.String(), func(t *testing.T) {
			model := fake(t, fakemodel.Options{})
			c := connect(t, New(Options{Dialect: d}), tokenN)
			c.call("session.create", namedParams("tenant-a", "mi/default", model.URL()))
			if _, sErr := c.send("tenant-a", "p"); sErr != nil {
				t.Fatalf("session.error %v", sErr)
			}
			calls := c.tokenCalls()
			want := `{"providerName":"mi","sessionId":"tenant-a"}`
			if d == Acquire {
				want = `{"sessionId":"tenant-a","providerName":"mi","scope":"https://cognitiveservices.azure.com/.default"}`
			}
			if len(calls) != 1 || !sameJSON(calls[0].params, want) {
				t.Fatalf("token requests %+v", calls)
			}
			if r := model.Requests()[0]; r.Model != "gpt-4o" || r.BearerToken() != "tok-1" {
				t.Fatalf("model request %v", r)
			}
			// Only the selected model's provider is asked.
			c.call("session.create", namedParams("tenant-b", "static/other", model.URL()))
			c.send("tenant-b", "p")
			if len(c.tokenCalls()) != 1 || model.Requests()[1].Model != "other" {
				t.Fatal("a static-key provider was asked for a token")
			}
		})
	}
}

func TestUnresolvedModelFailsTheTurn(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	c := connect(t, New(Options{Dialect: GetToken}), tokenN)
	for _, m := range []string{"default", "mi/nosuch", "zz/default"} {
		c.call("session.create", namedParams("s-"+m, m, model.URL()))
		_, sErr := c.send("s-"+m, "p")
		if sErr["message"] != "Execution failed: InvalidArg, No GitHub OAuth token or Copilot HMAC key provided" {
			t.Fatalf("model %q: session.error %v", m, sErr)
		}
	}
	if model.Count() != 0 || len(c.tokenCalls()) != 0 {
		t.Fatal("an unresolved model reached a provider")
	}
}

func TestCreateValidation(t *testing.T) {
	base := "http://127.0.0.1:1/v1"
	prov := func(extra map[string]any) map[string]any {
		p := map[string]any{"name": "mi", "type": "openai", "baseUrl": base, "hasBearerTokenProvider": true}
		for k, v := range extra {
			p[k] = v
		}
		return p
	}
	named := func(model string, models []any, providers ...any) map[string]any {
		return map[string]any{"sessionId": "v", "model": model, "models": models, "providers": providers}
	}
	modelOf := func(provider string) []any { return []any{map[string]any{"id": "default", "provider": provider}} }
	cases := []struct {
		name   string
		params any
		want   string
	}{
		{"not an object", "x", "session lifecycle params must be an object"},
		{"sessionId type", map[string]any{"sessionId": 42}, "session.create sessionId must be a string"},
		{"slash in name", named("a/b/default", modelOf("a/b"), prov(map[string]any{"name": "a/b"})), `BYOK provider name "a/b" must not contain "/".`},
		{"unknown provider", named("zz/default", modelOf("zz"), prov(nil)), `BYOK model "default" references unknown provider "zz".`},
		{"flag as string", named("mi/default", modelOf("mi"), prov(map[string]any{"hasBearerTokenProvider": "true"})),
			`Invalid named provider configuration: invalid type: string "true", expected a boolean`},
		{"whole-session flag as string", wholeSessionParams("v", map[string]any{"baseUrl": base, "hasBearerTokenProvider": "yes"}),
			`Invalid provider configuration: invalid type: string "yes", expected a boolean`},
		{"missing baseUrl", wholeSessionParams("v", map[string]any{"hasBearerTokenProvider": true}), "Invalid provider configuration: missing field `baseUrl`"},
		{"missing name", named("mi/default", modelOf("mi"), map[string]any{"baseUrl": base}), "Invalid named provider configuration: missing field `name`"},
		{"model without provider", named("mi/default", []any{map[string]any{"id": "default"}}, prov(nil)), "Invalid provider model configuration: missing field `provider`"},
		{"duplicate name", named("mi/default", modelOf("mi"), prov(nil), prov(nil)), `Duplicate BYOK provider name "mi".`},
		{"secret not echoed", wholeSessionParams("v", map[string]any{"baseUrl": base, "apiKey": []string{"secret"}}),
			"Invalid provider configuration: invalid type: sequence, expected a string"},
		{"provider and providers", map[string]any{"provider": prov(nil), "providers": []any{prov(nil)}},
			"Cannot combine the legacy singular `provider` option with the `providers`/`models` registry."},
	}
	c := connect(t, New(Options{Dialect: GetToken}), tokenN)
	for _, tc := range cases {
		e := c.rpcError("session.create", tc.params)
		if want := "Request session.create failed with message: " + tc.want; e.Code != jsonrpc2.CodeInternalError || e.Message != want {
			t.Errorf("%s: got %d %q, want %q", tc.name, e.Code, e.Message, want)
		}
	}
	// A generated id when none is given.
	var res struct{ SessionID string }
	_ = json.Unmarshal(c.call("session.create", map[string]any{"provider": map[string]any{"baseUrl": base}}), &res)
	if len(res.SessionID) != 36 {
		t.Fatalf("generated session id %q", res.SessionID)
	}
}

func TestOtherMethodErrors(t *testing.T) {
	c := connect(t, New(Options{}), tokenN)
	cases := []struct {
		method string
		params any
		want   string
	}{
		{"session.send", map[string]any{"prompt": "x"}, "Missing sessionId in session.send request"},
		{"session.send", map[string]any{"sessionId": "nope", "prompt": "x"}, "Session not found for sessionId: nope"},
		{"session.abort", map[string]any{"sessionId": "nope"}, "Session not found for sessionId: nope"},
		{"session.destroy", map[string]any{}, "Missing sessionId parameter"},
		{"session.resume", map[string]any{"provider": map[string]any{"baseUrl": "http://127.0.0.1:1"}}, "Missing sessionId parameter"},
	}
	for _, tc := range cases {
		if e := c.rpcError(tc.method, tc.params); e.Message != "Request "+tc.method+" failed with message: "+tc.want {
			t.Errorf("%s %v: %q", tc.method, tc.params, e.Message)
		}
	}
}

func TestResume(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	rt := New(Options{Dialect: GetToken})
	c := connect(t, rt, tokenN)
	prov := map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true}

	// An id this connection never saw (as after a runtime restart) is
	// created from the providers the resume carries.
	var res struct{ SessionID string }
	_ = json.Unmarshal(c.call("session.resume", wholeSessionParams("r1", prov)), &res)
	if res.SessionID != "r1" {
		t.Fatalf("session.resume = %+v", res)
	}
	select {
	case n := <-c.queue("r1"):
		if n.method != "session.lifecycle" || n.ev.Type != "session.updated" {
			t.Fatalf("first notification %s", n.raw)
		}
	case <-time.After(waitFor):
		t.Fatal("no session.lifecycle notification after session.resume")
	}
	if _, sErr := c.send("r1", "p"); sErr != nil {
		t.Fatalf("session.error %v", sErr)
	}
	// A resume without providers keeps the session's (same process).
	c.call("session.resume", map[string]any{"sessionId": "r1"})
	if _, sErr := c.send("r1", "p"); sErr != nil {
		t.Fatalf("session.error %v", sErr)
	}
	// New providers replace the old ones.
	c.call("session.resume", wholeSessionParams("r1", map[string]any{"baseUrl": model.URL(), "apiKey": "k"}))
	c.send("r1", "p")
	if got := bearers(model); !reflect.DeepEqual(got, []string{"tok-1", "tok-2", "k"}) {
		t.Fatalf("bearer tokens %q", got)
	}
	// Without providers a restarted runtime has none: the turn fails.
	c.call("session.resume", map[string]any{"sessionId": "r2"})
	if _, sErr := c.send("r2", "p"); sErr["errorType"] != "query" {
		t.Fatalf("session.error %v", sErr)
	}
	// Resume validates like create.
	bad := namedParams("r1", "a/b/default", model.URL())
	bad["providers"] = []any{map[string]any{"name": "a/b", "baseUrl": model.URL()}}
	bad["models"] = []any{map[string]any{"id": "default", "provider": "a/b"}}
	if e := c.rpcError("session.resume", bad); e.Message != `Request session.resume failed with message: BYOK provider name "a/b" must not contain "/".` {
		t.Fatalf("resume validation: %q", e.Message)
	}
	if st := rt.Stats(); st.Sessions != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAbortCancelsPendingTokenRequest(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	asked := make(chan struct{}, 1)
	c := connect(t, New(Options{Dialect: GetToken}), func(int, string, json.RawMessage) (any, error) {
		asked <- struct{}{}
		<-release
		return map[string]any{"token": "late"}, nil
	})
	c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true}))
	c.call("session.send", map[string]any{"sessionId": "s", "prompt": "p"})
	<-asked
	c.call("session.abort", map[string]any{"sessionId": "s"})
	if texts, sErr := c.turnResult("s"); texts != nil || sErr != nil {
		t.Fatalf("aborted turn: %q %v", texts, sErr)
	}
	if model.Count() != 0 {
		t.Fatal("aborted turn reached the model")
	}
}

func TestTokenTimeout(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	rt := New(Options{Dialect: GetToken, TokenTimeout: 50 * time.Millisecond})
	c := connect(t, rt, func(int, string, json.RawMessage) (any, error) {
		<-release
		return nil, errors.New("too late")
	})
	c.call("session.create", wholeSessionParams("s", map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true}))
	_, sErr := c.send("s", "p")
	if sErr["message"] != "Provider token request failed: no reply within 50ms" {
		t.Fatalf("session.error %v", sErr)
	}
	if tr := rt.TokenRequests()[0]; tr.Err != "no reply within 50ms" || rt.Stats().TokenErrors != 1 {
		t.Fatalf("token record %+v", tr)
	}
}

func TestSessionsArePerConnection(t *testing.T) {
	model := fake(t, fakemodel.Options{})
	rt := New(Options{Dialect: GetToken})
	answer := func(tok string) answerFunc {
		return func(int, string, json.RawMessage) (any, error) { return map[string]string{"token": tok}, nil }
	}
	a := connect(t, rt, answer("tenant-a"))
	b := connect(t, rt, answer("tenant-b"))
	params := wholeSessionParams("same-id", map[string]any{"baseUrl": model.URL(), "hasBearerTokenProvider": true})
	a.call("session.create", params)
	if e := b.rpcError("session.send", map[string]any{"sessionId": "same-id", "prompt": "x"}); !strings.Contains(e.Message, "Session not found") {
		t.Fatalf("session visible on another connection: %v", e)
	}
	b.call("session.create", params)
	// Both turns run at once: session.send is answered when the turn
	// starts. (The client helpers call t.Fatal, so they stay on this
	// goroutine.)
	a.call("session.send", map[string]any{"sessionId": "same-id", "prompt": "from a"})
	b.call("session.send", map[string]any{"sessionId": "same-id", "prompt": "from b"})
	for _, c := range []*client{a, b} {
		if texts, sErr := c.turnResult("same-id"); len(texts) != 1 || sErr != nil {
			t.Fatalf("turn: %q %v", texts, sErr)
		}
	}
	got := map[string]string{}
	for _, r := range model.Requests() {
		got[r.Prompt] = r.BearerToken()
	}
	if got["from a"] != "tenant-a" || got["from b"] != "tenant-b" {
		t.Fatalf("tokens by prompt %v", got)
	}
	if len(a.tokenCalls()) != 1 || len(b.tokenCalls()) != 1 {
		t.Fatal("a token request went to the wrong connection")
	}
}

func TestServeReturnsWhenContextEnds(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- New(Options{}).Serve(ctx, a) }()
	cancel()
	select {
	case err := <-served:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Serve did not return")
	}
}

func TestLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:80": true, "127.9.9.9:1": true, "[::1]:443": true,
		"10.0.0.1:80": false, "[2001:db8::1]:80": false, "example.com:80": false, "nonsense": false,
	} {
		if err := loopbackOnly("tcp", addr, nil); (err == nil) != ok {
			t.Errorf("loopbackOnly(%q) = %v", addr, err)
		}
	}
}
