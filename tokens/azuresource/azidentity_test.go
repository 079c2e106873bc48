package azuresource_test

// These tests run the real azidentity (and MSAL) code against fake identity
// endpoints on 127.0.0.1 (azuretest), through a Broker, and
// count the requests that reach the fake. The Azure environment is cleared
// first and the credentials' transport dials loopback addresses only, so
// nothing can reach 169.254.169.254 or any other host.
//
// azidentity keeps one process-wide managed-identity token cache keyed by
// identity and resource: every test uses its own client id and scope.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/testenv"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource/azuretest"
)

func unique(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// identity is a fresh managed identity (client id) and resource for one
// test, so azidentity's process-wide cache starts cold.
type identity struct {
	clientID, resource, scope string
}

func newIdentity() identity {
	res := "api://" + unique("tokenbroker-test")
	return identity{clientID: unique("client"), resource: res, scope: res + "/.default"}
}

// useIdentity clears the Azure environment and points
// ManagedIdentityCredential at fake until the end of t.
func useIdentity(t *testing.T, fake *azuretest.Server) {
	t.Helper()
	testenv.ClearAzure(t)
	for k, v := range fake.Env() {
		t.Setenv(k, v)
	}
}

func newManagedIdentity(t *testing.T, fake *azuretest.Server, id identity) azcore.TokenCredential {
	t.Helper()
	opts := fake.ManagedIdentityCredentialOptions()
	opts.ID = azidentity.ClientID(id.clientID) // checked in the fake's log
	cred, err := azidentity.NewManagedIdentityCredential(opts)
	if err != nil {
		t.Fatal(err)
	}
	return cred
}

func closeBroker(t *testing.T, b *actors.Broker) {
	t.Helper()
	if err := b.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// N sessions × 10 concurrent cold requests, then M turns each, through one
// shared Credential over a real ManagedIdentityCredential: one request
// reaches the identity endpoint.
func TestManagedIdentityOneRequestForManySessions(t *testing.T) {
	fake := azuretest.NewManagedIdentity(azuretest.Options{Latency: 20 * time.Millisecond})
	defer fake.Close()
	useIdentity(t, fake)
	id := newIdentity()
	cred := newManagedIdentity(t, fake, id)

	b := actors.NewBroker(actors.Options{})
	defer closeBroker(t, b)
	shared, err := b.NewCredential("mi", id.scope, azuresource.New(cred))
	if err != nil {
		t.Fatal(err)
	}
	routers := []*actors.Router{b.NewRouter(), b.NewRouter()}
	const sessions, concurrent, turns = 200, 10, 20
	for i := range sessions {
		if err := routers[i%2].Open(fmt.Sprint("s", i), []actors.Provider{{Name: "mi", Scope: id.scope, Source: shared}}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	fingerprints := map[string]int{}
	var failures atomic.Int64
	ask := func(i int) {
		g, err := routers[i%2].Acquire(context.Background(), tokens.Request{SessionID: fmt.Sprint("s", i), ProviderName: "mi", Scope: id.scope})
		if err != nil {
			failures.Add(1)
			t.Errorf("session %d: %v", i, err)
			return
		}
		mu.Lock()
		fingerprints[tokens.Fingerprint(g.Token.Value)]++
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for i := range sessions {
		for range concurrent {
			wg.Go(func() { ask(i) })
		}
	}
	wg.Wait()
	if n := fake.Issued(); n != 1 {
		t.Fatalf("%d cold requests made %d requests to the identity endpoint, want 1", sessions*concurrent, n)
	}
	for i := range sessions {
		wg.Go(func() {
			for range turns {
				ask(i)
			}
		})
	}
	wg.Wait()
	reqs := fake.Requests()
	if n := fake.Issued(); n != 1 || len(reqs) != 1 {
		t.Fatalf("after %d turns: %d tokens issued, %d requests, want 1", sessions*turns, n, len(reqs))
	}
	if r := reqs[0]; r.Resource != id.resource || r.ClientID != id.clientID {
		t.Fatalf("identity endpoint asked for resource %q client %q, want %q %q", r.Resource, r.ClientID, id.resource, id.clientID)
	}
	if len(fingerprints) != 1 || fingerprints[reqs[0].Fingerprint] != sessions*(concurrent+turns) {
		t.Fatalf("tokens served: %v, want all %d to be the issued one (%s)", fingerprints, sessions*(concurrent+turns), reqs[0].Fingerprint)
	}
	if u := fake.Unexpected(); len(u) > 0 {
		t.Fatalf("unexpected requests: %v", u)
	}

	// Why the broker is needed: the same credential type without it, cold,
	// sends one request per concurrent caller (measured, not asserted: a
	// future azidentity may coalesce).
	bare := newManagedIdentity(t, fake, newIdentity())
	before := fake.Issued()
	for range 50 {
		wg.Go(func() {
			_, _ = azuresource.New(bare).Token(context.Background(), tokens.Request{Scope: id.scope})
		})
	}
	wg.Wait()
	t.Logf("without the broker, 50 concurrent cold calls sent %d requests to the identity endpoint", fake.Issued()-before)
}

// Ten simulated hours of traffic through a real ManagedIdentityCredential
// (a testing/synctest bubble: azidentity, MSAL's cache and the broker all
// run on the fake clock; the fake endpoint answers with relative
// lifetimes): one request to the identity endpoint per token lifetime.
func TestManagedIdentityOneRequestPerLifetime(t *testing.T) {
	cases := []struct {
		name    string
		opts    azuretest.Options
		span    time.Duration
		periods int // the issuer's refresh periods in span
	}{
		// 1 h tokens: MSAL hands its token out until 5 min before expiry.
		{"1h tokens", azuretest.Options{Lifetime: time.Hour}, 10 * time.Hour, 10},
		// 24 h tokens with a 12 h refresh_in, like App Service.
		{"24h tokens, refresh_in 12h", azuretest.Options{Lifetime: 24 * time.Hour, RefreshIn: 12 * time.Hour}, 72 * time.Hour, 6},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fake := azuretest.NewManagedIdentity(c.opts)
			defer fake.Close()
			useIdentity(t, fake)
			id := newIdentity()
			var calls atomic.Int64
			synctest.Test(t, func(t *testing.T) {
				// Made inside the bubble: the transport's goroutines and
				// timers belong to it.
				cred := newManagedIdentity(t, fake, id)
				b := actors.NewBroker(actors.Options{})
				defer func() {
					closeBroker(t, b)
					time.Sleep(2 * time.Second) // protoactor's dead-letter throttle period
				}()
				az := azuresource.New(cred)
				counting := tokens.Func(func(ctx context.Context, req tokens.Request) (tokens.Token, error) {
					calls.Add(1)
					return az.Token(ctx, req)
				})
				shared, err := b.NewCredential("mi", id.scope, counting)
				if err != nil {
					t.Fatal(err)
				}
				r := b.NewRouter()
				const sessions = 20
				for i := range sessions {
					if err := r.Open(fmt.Sprint("s", i), []actors.Provider{{Name: "mi", Source: shared}}); err != nil {
						t.Fatal(err)
					}
				}
				turns := 0
				for start := time.Now(); time.Since(start) < c.span; time.Sleep(2 * time.Minute) {
					for i := range sessions {
						g, err := r.Acquire(context.Background(), tokens.Request{SessionID: fmt.Sprint("s", i), ProviderName: "mi"})
						if err != nil {
							t.Fatalf("+%s: %v", time.Since(start), err)
						}
						if left := time.Until(g.Token.ExpiresOn); left < b.Policy().Floor {
							t.Fatalf("+%s: served a token with %s left", time.Since(start), left)
						}
						turns++
					}
				}
				t.Logf("%d turns over %s: %d requests to the identity endpoint, %d credential calls", turns, c.span, fake.Issued(), calls.Load())
			})
			if n := fake.Issued(); n < c.periods || n > c.periods+1 {
				t.Fatalf("%d requests to the identity endpoint in %d token refresh periods, want one per period", n, c.periods)
			}
			if n := int(calls.Load()); n > 4*(c.periods+1) {
				t.Fatalf("%d credential calls for %d refresh periods", n, c.periods)
			}
		})
	}
}

// A failing identity endpoint: the error reaching the caller names the
// status and the endpoint's error, never its raw response.
func TestManagedIdentityErrorIsSanitized(t *testing.T) {
	fake := azuretest.NewManagedIdentity(azuretest.Options{})
	defer fake.Close()
	useIdentity(t, fake)
	fake.Fail(400, `{"statusCode":400,"message":"Unable to load the proper Managed Identity.","correlationId":"`+secret+`"}`)
	b := actors.NewBroker(actors.Options{})
	defer closeBroker(t, b)
	r := b.NewRouter()
	id := newIdentity()
	if err := r.Open("s", []actors.Provider{{Name: "mi", Scope: id.scope, Source: azuresource.New(newManagedIdentity(t, fake, id))}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := r.Acquire(ctx, tokens.Request{SessionID: "s", ProviderName: "mi"})
	if !errors.Is(err, actors.ErrCredential) {
		t.Fatalf("err = %v, want ErrCredential", err)
	}
	msg := err.Error()
	if strings.Contains(msg, secret) || strings.Contains(msg, "correlationId") {
		t.Fatalf("raw response in the error: %s", strings.ReplaceAll(msg, secret, "<SECRET>"))
	}
	for _, want := range []string{"ManagedIdentityCredential", "400", "Unable to load the proper Managed Identity."} {
		if !strings.Contains(msg, want) {
			t.Fatalf("error lacks %q: %s", want, msg)
		}
	}
}

// A hanging identity endpoint: the caller's deadline still holds.
func TestManagedIdentityHangBoundedByDeadline(t *testing.T) {
	fake := azuretest.NewManagedIdentity(azuretest.Options{Latency: time.Minute})
	defer fake.Close()
	useIdentity(t, fake)
	id := newIdentity()
	b := actors.NewBroker(actors.Options{RequestTimeout: 100 * time.Millisecond})
	defer closeBroker(t, b)
	shared, err := b.NewCredential("mi", id.scope, azuresource.New(newManagedIdentity(t, fake, id)))
	if err != nil {
		t.Fatal(err)
	}
	r := b.NewRouter()
	if err := r.Open("s", []actors.Provider{{Name: "mi", Source: shared}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = r.Acquire(context.Background(), tokens.Request{SessionID: "s", ProviderName: "mi"})
	if !errors.Is(err, actors.ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("answered after %s with a 100 ms deadline", d)
	}
}

func newClientSecret(t *testing.T, fake *azuretest.Server, tenant, clientID, clientSecret string) azcore.TokenCredential {
	t.Helper()
	cred, err := azidentity.NewClientSecretCredential(tenant, clientID, clientSecret, fake.ClientSecretCredentialOptions())
	if err != nil {
		t.Fatal(err)
	}
	return cred
}

// ClientSecretCredential against a fake Entra token endpoint over TLS:
// two tenants, many sessions each, one shared Credential per tenant. One
// token request per tenant, and each tenant's sessions only ever get their
// tenant's token.
func TestClientSecretTwoTenants(t *testing.T) {
	testenv.ClearAzure(t)
	fake := azuretest.NewEntra(azuretest.Options{ClientSecret: "s3cret"})
	defer fake.Close()
	b := actors.NewBroker(actors.Options{})
	defer closeBroker(t, b)
	const scope = "https://cognitiveservices.azure.com/.default"
	tenants := []string{unique("tenant-a"), unique("tenant-b")}
	creds := map[string]*actors.Credential{}
	for _, tenant := range tenants {
		c, err := b.NewCredential("foundry", scope, azuresource.New(newClientSecret(t, fake, tenant, unique("app"), "s3cret")))
		if err != nil {
			t.Fatal(err)
		}
		creds[tenant] = c
	}
	r := b.NewRouter()
	const sessions, turns = 50, 10
	for _, tenant := range tenants {
		for i := range sessions {
			if err := r.Open(fmt.Sprintf("%s-%d", tenant, i), []actors.Provider{{Name: "foundry", Scope: scope, Source: creds[tenant]}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var mu sync.Mutex
	seen := map[string]map[string]bool{} // tenant -> fingerprints
	var wg sync.WaitGroup
	for _, tenant := range tenants {
		seen[tenant] = map[string]bool{}
		for i := range sessions {
			wg.Go(func() {
				for range turns {
					g, err := r.Acquire(context.Background(), tokens.Request{SessionID: fmt.Sprintf("%s-%d", tenant, i), ProviderName: "foundry", Scope: scope})
					if err != nil {
						t.Errorf("%s: %v", tenant, err)
						return
					}
					mu.Lock()
					seen[tenant][tokens.Fingerprint(g.Token.Value)] = true
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	issuedTo := map[string]string{} // fingerprint -> tenant, from the fake's log
	for _, req := range fake.Requests() {
		if req.Scope != scope {
			t.Fatalf("token endpoint asked for scope %q", req.Scope)
		}
		issuedTo[req.Fingerprint] = req.Tenant
	}
	if len(issuedTo) != 2 || fake.Issued() != 2 {
		t.Fatalf("%d token requests for 2 tenants × %d sessions × %d turns, want 2", fake.Issued(), sessions, turns)
	}
	for _, tenant := range tenants {
		if len(seen[tenant]) != 1 {
			t.Fatalf("tenant %s's sessions saw %d distinct tokens", tenant, len(seen[tenant]))
		}
		for fp := range seen[tenant] {
			if issuedTo[fp] != tenant {
				t.Fatalf("tenant %s's sessions got a token issued to %q", tenant, issuedTo[fp])
			}
		}
	}
	if u := fake.Unexpected(); len(u) > 0 {
		t.Fatalf("unexpected requests (instance discovery?): %v", u)
	}
}

// A wrong client secret: a readable error with Entra's code and
// description, and nothing of the request or raw response.
func TestClientSecretWrongSecret(t *testing.T) {
	testenv.ClearAzure(t)
	fake := azuretest.NewEntra(azuretest.Options{ClientSecret: "right"})
	defer fake.Close()
	const wrong = "wrong-secret-value-do-not-print"
	src := azuresource.New(newClientSecret(t, fake, unique("tenant"), unique("app"), wrong))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := src.Token(ctx, tokens.Request{Scope: "https://cognitiveservices.azure.com/.default"})
	var e *azuresource.Error
	if !errors.As(err, &e) || e.StatusCode != 401 || e.Code != "invalid_client" {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), "error_codes") {
		t.Fatalf("error shows the request or the raw response: %s", strings.ReplaceAll(err.Error(), wrong, "<SECRET>"))
	}
	if !strings.Contains(err.Error(), "AADSTS7000215") || !strings.Contains(err.Error(), "ClientSecretCredential") {
		t.Fatalf("error lacks the credential or Entra's description: %s", err)
	}
}

// An identity endpoint whose error quotes a token, in an OAuth2
// error_description, an App Service message or an access_token=value: the
// error, its Description included, holds none of them. The token it quotes
// in free text is one this Source served before.
func TestErrorsQuotingTokens(t *testing.T) {
	fake := azuretest.NewManagedIdentity(azuretest.Options{})
	defer fake.Close()
	useIdentity(t, fake)
	id := newIdentity()
	src := azuresource.New(newManagedIdentity(t, fake, id))
	served, err := src.Token(context.Background(), tokens.Request{Scope: id.scope})
	if err != nil {
		t.Fatal(err)
	}
	opaque := unique("opaque")
	for i, tc := range []struct{ body, says string }{
		{`{"error":"invalid_request","error_description":"token ` + served.Value + ` was revoked"}`, "was revoked"},
		{`{"statusCode":400,"message":"Managed identity token ` + served.Value + ` is not valid"}`, "is not valid"},
		{`{"statusCode":400,"message":"request rejected: access_token=` + opaque + ` resource=x"}`, "request rejected"},
	} {
		fake.Fail(http.StatusBadRequest, tc.body)
		// A scope of its own: azidentity answers a cached one itself.
		_, err := src.Token(context.Background(), tokens.Request{Scope: fmt.Sprintf("%s-%d/.default", id.resource, i)})
		var e *azuresource.Error
		if !errors.As(err, &e) {
			t.Fatalf("case %d: err %v, want *azuresource.Error", i, err)
		}
		for _, text := range []string{err.Error(), e.Description} {
			if strings.Contains(text, served.Value) || strings.Contains(text, opaque) {
				t.Errorf("case %d: a token in %q", i, strings.NewReplacer(served.Value, "<SERVED>", opaque, "<OPAQUE>").Replace(text))
			}
		}
		if !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), tokens.Redacted) || e.StatusCode != http.StatusBadRequest {
			t.Errorf("case %d: error lost what it says: %s", i, err)
		}
	}
}

// A failing identity endpoint costs one call one quick retry, not
// azidentity's whole chain; WithRetry(nil) gives the credential's own
// chain back.
func TestCallRetriesBounded(t *testing.T) {
	fake := azuretest.NewManagedIdentity(azuretest.Options{})
	defer fake.Close()
	useIdentity(t, fake)
	fake.Fail(http.StatusInternalServerError, `{"statusCode":500,"message":"identity service unavailable"}`)
	for _, tc := range []struct {
		name     string
		opts     []azuresource.Option
		requests int
	}{
		{"default", nil, 2},
		{"credential's own retries", []azuresource.Option{azuresource.WithRetry(nil)}, 4}, // azcore: 3 retries
		{"no retry", []azuresource.Option{azuresource.WithRetry(&policy.RetryOptions{MaxRetries: -1})}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := newIdentity()
			src := azuresource.New(newManagedIdentity(t, fake, id), tc.opts...)
			before := fake.Received()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := src.Token(ctx, tokens.Request{Scope: id.scope})
			if err == nil || !strings.Contains(err.Error(), "500") {
				t.Fatalf("err = %v, want the endpoint's 500", err)
			}
			if n := fake.Received() - before; n != tc.requests {
				t.Fatalf("identity endpoint got %d requests, want %d", n, tc.requests)
			}
		})
	}
}
