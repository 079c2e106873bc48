package azuretest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// Every test ends with no goroutine left: held requests are released by
// Close or by their client giving up.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// miRequest is a token request as ManagedIdentityCredential sends it.
func miRequest(ctx context.Context, s *Server, header, query string) *http.Request {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.Env()["IDENTITY_ENDPOINT"]+"?"+query, nil)
	if header != "" {
		req.Header.Set("X-IDENTITY-HEADER", header)
	}
	return req
}

const goodQuery = "api-version=2019-08-01&resource=api%3A%2F%2Fr&client_id=c1"

// do sends req and returns the status and the decoded JSON body.
func do(t *testing.T, c *http.Client, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("status %d, body not JSON: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, m
}

func TestManagedIdentityProtocol(t *testing.T) {
	s := NewManagedIdentity(Options{Lifetime: 2 * time.Hour, RefreshIn: time.Hour})
	defer s.Close()
	env := s.Env()
	if !strings.HasPrefix(env["IDENTITY_ENDPOINT"], "http://127.0.0.1:") || env["IDENTITY_HEADER"] == "" {
		t.Fatalf("Env %v", env)
	}
	if v, ok := env["IDENTITY_SERVER_THUMBPRINT"]; !ok || v != "" {
		t.Fatalf("Env does not clear IDENTITY_SERVER_THUMBPRINT: %v", env)
	}
	c := s.Client()
	ctx := context.Background()
	if code, body := do(t, c, miRequest(ctx, s, "wrong", goodQuery)); code != 401 || body["statusCode"] != float64(401) {
		t.Fatalf("wrong header: %d %v", code, body)
	}
	if code, _ := do(t, c, miRequest(ctx, s, env["IDENTITY_HEADER"], "resource=x")); code != 400 {
		t.Fatalf("no api-version: %d", code)
	}
	code, body := do(t, c, miRequest(ctx, s, env["IDENTITY_HEADER"], goodQuery))
	tok, _ := body["access_token"].(string)
	if code != 200 || tok == "" || body["token_type"] != "Bearer" || body["expires_in"] != float64(7200) || body["refresh_in"] != float64(3600) ||
		body["resource"] != "api://r" || body["client_id"] != "c1" {
		t.Fatalf("token answer %d, fields %v %v %v %v", code, body["token_type"], body["expires_in"], body["refresh_in"], body["resource"])
	}
	reqs := s.Requests()
	want := Request{Resource: "api://r", ClientID: "c1", Status: 200, Fingerprint: tokens.Fingerprint(tok)}
	if len(reqs) != 3 || reqs[2] != want || reqs[0].Status != 401 || reqs[1].Status != 400 {
		t.Fatalf("requests %+v", reqs)
	}
	if s.Received() != 3 || s.Issued() != 1 {
		t.Fatalf("received %d, issued %d", s.Received(), s.Issued())
	}
	resp, err := c.Get(s.URL + "/metadata/identity/oauth2/token")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if u := s.Unexpected(); resp.StatusCode != 404 || len(u) != 1 || u[0] != "GET /metadata/identity/oauth2/token" || s.Received() != 3 {
		t.Fatalf("unexpected %v, status %d", u, resp.StatusCode)
	}
}

func TestEntraProtocol(t *testing.T) {
	s := NewEntra(Options{ClientSecret: "right"})
	defer s.Close()
	if s.Env() != nil || !strings.HasPrefix(s.URL, "https://127.0.0.1:") {
		t.Fatalf("Env %v, URL %s", s.Env(), s.URL)
	}
	c := s.Client()
	req, _ := http.NewRequest(http.MethodGet, s.URL+"/tenant1/v2.0/.well-known/openid-configuration", nil)
	if code, cfg := do(t, c, req); code != 200 || cfg["token_endpoint"] != s.URL+"/tenant1/oauth2/v2.0/token" || cfg["issuer"] != s.URL+"/tenant1/v2.0" {
		t.Fatalf("openid configuration %d %v", code, cfg)
	}
	post := func(grant, secret string) (int, map[string]any) {
		form := url.Values{"grant_type": {grant}, "client_id": {"app"}, "client_secret": {secret}, "scope": {"api://s/.default openid offline_access profile"}}
		req, _ := http.NewRequest(http.MethodPost, s.URL+"/tenant1/oauth2/v2.0/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return do(t, c, req)
	}
	if code, body := post("client_credentials", "wrong"); code != 401 || body["error"] != "invalid_client" {
		t.Fatalf("wrong secret: %d %v", code, body)
	}
	if code, body := post("password", "right"); code != 400 || body["error"] != "unsupported_grant_type" {
		t.Fatalf("other grant: %d %v", code, body)
	}
	code, body := post("client_credentials", "right")
	tok, _ := body["access_token"].(string)
	if code != 200 || tok == "" || body["expires_in"] != float64(3600) || body["ext_expires_in"] != float64(3600) || body["refresh_in"] != nil {
		t.Fatalf("token answer %d %v %v %v", code, body["expires_in"], body["ext_expires_in"], body["refresh_in"])
	}
	want := Request{Scope: "api://s/.default", ClientID: "app", Tenant: "tenant1", Status: 200, Fingerprint: tokens.Fingerprint(tok)}
	if reqs := s.Requests(); len(reqs) != 3 || reqs[2] != want {
		t.Fatalf("requests %+v", reqs)
	}
	if s.Issued() != 1 || len(s.Unexpected()) != 0 {
		t.Fatalf("issued %d, unexpected %v", s.Issued(), s.Unexpected())
	}
	// Nothing but Client trusts the certificate.
	if resp, err := http.Get(s.URL + "/tenant1/v2.0/.well-known/openid-configuration"); err == nil {
		resp.Body.Close()
		t.Fatal("the default client trusted the fake's certificate")
	}
}

func TestClientDialsLoopbackOnly(t *testing.T) {
	s := NewManagedIdentity(Options{})
	defer s.Close()
	_, err := s.Client().Get("http://169.254.169.254/metadata/identity/oauth2/token")
	if err == nil || !strings.Contains(err.Error(), "refusing to dial non-loopback") {
		t.Fatalf("err = %v", err)
	}
}

// Fail answers with the status and body given, or the endpoint's usual
// error body; Fail(0, "") issues tokens again.
func TestFail(t *testing.T) {
	mi := NewManagedIdentity(Options{})
	defer mi.Close()
	entra := NewEntra(Options{})
	defer entra.Close()
	ctx := context.Background()
	miToken := func() (int, map[string]any) {
		return do(t, mi.Client(), miRequest(ctx, mi, mi.Env()["IDENTITY_HEADER"], goodQuery))
	}
	entraToken := func() (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, entra.URL+"/t/oauth2/v2.0/token", strings.NewReader("grant_type=client_credentials&scope=s"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return do(t, entra.Client(), req)
	}

	mi.Fail(500, "")
	if code, body := miToken(); code != 500 || body["statusCode"] != float64(500) || body["message"] != "Internal Server Error" {
		t.Fatalf("managed identity 500: %d %v", code, body)
	}
	mi.Fail(400, `{"statusCode":400,"message":"Unable to load the proper Managed Identity."}`)
	if code, body := miToken(); code != 400 || body["message"] != "Unable to load the proper Managed Identity." {
		t.Fatalf("managed identity 400: %d %v", code, body)
	}
	for status, code := range map[int]string{400: "invalid_request", 401: "invalid_client", 503: "temporarily_unavailable"} {
		entra.Fail(status, "")
		if got, body := entraToken(); got != status || body["error"] != code || !strings.Contains(body["error_description"].(string), http.StatusText(status)) {
			t.Fatalf("entra %d: %d %v", status, got, body)
		}
	}
	mi.Fail(0, "")
	entra.Fail(0, "")
	if code, _ := miToken(); code != 200 {
		t.Fatalf("managed identity recovered: %d", code)
	}
	if code, _ := entraToken(); code != 200 {
		t.Fatalf("entra recovered: %d", code)
	}
	if mi.Issued() != 1 || mi.Received() != 3 || entra.Issued() != 1 || entra.Received() != 4 {
		t.Fatalf("managed identity issued %d of %d, entra %d of %d", mi.Issued(), mi.Received(), entra.Issued(), entra.Received())
	}
}

// waitFor polls cond, with a generous real-time bound for a busy machine.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// A held request ends when its client gives up: unanswered, never issued.
func TestHangEndsWithClient(t *testing.T) {
	s := NewManagedIdentity(Options{})
	defer s.Close()
	s.Hang()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		resp, err := s.Client().Do(miRequest(ctx, s, s.Env()["IDENTITY_HEADER"], goodQuery))
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	waitFor(t, "the request is held", func() bool { return s.MaxInFlight() == 1 })
	select {
	case err := <-done:
		t.Fatalf("a hanging endpoint answered: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if reqs := s.Requests(); len(reqs) != 1 || reqs[0].Status != 0 || s.Issued() != 0 {
		t.Fatalf("requests %+v, issued %d", reqs, s.Issued())
	}
	waitFor(t, "the handler returns, before Close", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.inFlight == 0
	})
}

// Close ends held requests: their clients see the connection close, not
// an answer, and Close does not wait for them.
func TestHangEndsWithClose(t *testing.T) {
	for _, newServer := range []func(Options) *Server{NewManagedIdentity, NewEntra} {
		s := newServer(Options{})
		s.Hang()
		var req *http.Request
		if s.entra {
			req, _ = http.NewRequest(http.MethodPost, s.URL+"/t/oauth2/v2.0/token", strings.NewReader("grant_type=client_credentials&scope=s"))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		} else {
			req = miRequest(context.Background(), s, s.Env()["IDENTITY_HEADER"], goodQuery)
		}
		done := make(chan error, 1)
		go func() {
			resp, err := s.Client().Do(req)
			if err == nil {
				resp.Body.Close()
				err = errors.New(resp.Status)
			}
			done <- err
		}()
		waitFor(t, "the request is held", func() bool { return s.MaxInFlight() == 1 })
		s.Close()
		err := <-done
		if err == nil || !strings.Contains(err.Error(), "EOF") {
			t.Fatalf("entra %v: held request ended with %v, want the connection closed", s.entra, err)
		}
	}
}

// Release answers the held requests as scripted at that moment.
func TestRelease(t *testing.T) {
	s := NewManagedIdentity(Options{})
	defer s.Close()
	s.Hang()
	const n = 5
	codes := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			resp, err := s.Client().Do(miRequest(context.Background(), s, s.Env()["IDENTITY_HEADER"], goodQuery))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		})
	}
	waitFor(t, "all requests are held", func() bool { return s.MaxInFlight() == n })
	s.Fail(503, "")
	s.Release()
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != 503 {
			t.Fatalf("released request answered %d, want the failure scripted before Release", code)
		}
	}
	s.Fail(0, "")
	if code, _ := do(t, s.Client(), miRequest(context.Background(), s, s.Env()["IDENTITY_HEADER"], goodQuery)); code != 200 {
		t.Fatalf("after Release: %d", code)
	}
	if s.Received() != n+1 || s.Issued() != 1 {
		t.Fatalf("received %d, issued %d", s.Received(), s.Issued())
	}
}

// serveInBubble runs one request through the handler, without a network,
// so that its timers run on the bubble's clock. It gives the recorded
// answer when the handler returns (Code 0: aborted unanswered).
func serveInBubble(s *Server, ctx context.Context) <-chan *httptest.ResponseRecorder {
	out := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		rec := httptest.NewRecorder()
		defer func() {
			if p := recover(); p != nil && p != http.ErrAbortHandler {
				panic(p)
			}
			out <- rec
		}()
		rec.Code = 0 // stays 0 unless the handler writes a header
		s.serve(rec, miRequest(ctx, s, s.header, goodQuery))
	}()
	return out
}

// Latency holds each answer exactly that long, on the bubble's clock; a
// change applies to the requests that arrive after it; a client that gives
// up ends its wait.
func TestLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newServer(Options{Latency: 10 * time.Second})
		s.header = "h"
		s.URL = "http://127.0.0.1:1"
		start := time.Now()
		first := serveInBubble(s, context.Background())
		synctest.Wait()
		s.SetLatency(time.Second)
		second := serveInBubble(s, context.Background())
		if rec := <-second; rec.Code != 200 || time.Since(start) != time.Second {
			t.Fatalf("second: %d after %s, want 200 after 1s", rec.Code, time.Since(start))
		}
		if rec := <-first; rec.Code != 200 || time.Since(start) != 10*time.Second {
			t.Fatalf("first: %d after %s, want 200 after 10s", rec.Code, time.Since(start))
		}
		s.SetLatency(10 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		start = time.Now()
		if rec := <-serveInBubble(s, ctx); rec.Code != 0 || time.Since(start) != 3*time.Second {
			t.Fatalf("given up: %d after %s, want no answer after 3s", rec.Code, time.Since(start))
		}
		if reqs := s.Requests(); len(reqs) != 3 || reqs[2].Status != 0 || s.Issued() != 2 {
			t.Fatalf("requests %+v", reqs)
		}
	})
}

// Scripting changes while many requests run (run with -race): every
// request ends, and what the clients saw is what the server recorded.
func TestScriptingWhileRequestsRun(t *testing.T) {
	s := NewManagedIdentity(Options{})
	defer s.Close()
	const clients, each = 8, 25
	var mu sync.Mutex
	seen := map[int]int{}
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			c := s.Client()
			for range each {
				resp, err := c.Do(miRequest(context.Background(), s, s.Env()["IDENTITY_HEADER"], goodQuery))
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				seen[resp.StatusCode]++
				mu.Unlock()
			}
		})
	}
	stop := make(chan struct{})
	scripted := make(chan struct{})
	go func() {
		defer close(scripted)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			switch i % 5 {
			case 0:
				s.Fail(503, "")
			case 1:
				s.Fail(0, "")
			case 2:
				s.Hang()
			case 3:
				s.SetLatency(time.Duration(i%3) * time.Millisecond)
				s.SetLifetime(time.Duration(i)*time.Minute, 0)
			case 4:
				s.Release()
			}
			time.Sleep(time.Millisecond)
		}
	}()
	// Hangs are released at most a few milliseconds later, so every
	// client finishes.
	wg.Wait()
	close(stop)
	<-scripted
	recorded := map[int]int{}
	for _, r := range s.Requests() {
		recorded[r.Status]++
	}
	if seen[200]+seen[503] != clients*each || recorded[200] != seen[200] || recorded[503] != seen[503] || s.Issued() != seen[200] {
		t.Fatalf("clients saw %v, server recorded %v, issued %d", seen, recorded, s.Issued())
	}
	t.Logf("statuses %v, at most %d in flight", seen, s.MaxInFlight())
}

// The facts the package documentation states about azidentity, checked
// against the real ManagedIdentityCredential: each
// ManagedIdentityCredentialOptions starts cold; a token is cached and its
// refresh_in becomes RefreshOn; a token with 5 minutes or less left is not
// cached.
func TestManagedIdentityCredential(t *testing.T) {
	s := NewManagedIdentity(Options{Lifetime: 24 * time.Hour, RefreshIn: 12 * time.Hour})
	defer s.Close()
	for k, v := range s.Env() {
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := policy.TokenRequestOptions{Scopes: []string{"api://azuretest-doc-check/.default"}}
	get := func(cred *azidentity.ManagedIdentityCredential) time.Time {
		t.Helper()
		tok, err := cred.GetToken(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		return tok.RefreshOn
	}
	a, err := azidentity.NewManagedIdentityCredential(s.ManagedIdentityCredentialOptions())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	refreshOn := get(a)
	get(a)
	if s.Issued() != 1 {
		t.Fatalf("a cached token: %d requests", s.Issued())
	}
	if d := refreshOn.Sub(start); d < 12*time.Hour-time.Minute || d > 12*time.Hour+time.Minute {
		t.Fatalf("RefreshOn in %s, want 12h", d)
	}
	b, err := azidentity.NewManagedIdentityCredential(s.ManagedIdentityCredentialOptions())
	if err != nil {
		t.Fatal(err)
	}
	get(b)
	if s.Issued() != 2 {
		t.Fatalf("new options, same resource: %d requests, want 2", s.Issued())
	}
	s.SetLifetime(5*time.Minute, 0)
	c, err := azidentity.NewManagedIdentityCredential(s.ManagedIdentityCredentialOptions())
	if err != nil {
		t.Fatal(err)
	}
	get(c)
	get(c)
	if s.Issued() != 4 {
		t.Fatalf("5-minute tokens: %d requests, want 4 (none cached)", s.Issued())
	}
}
