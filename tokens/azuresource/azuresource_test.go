package azuresource_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
)

// protoactor-go's dead-letter throttle (a goroutine waiting out 1 s after a
// message reaches a stopped actor, which a broker's Close may cause) is the
// only goroutine allowed to outlive a test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
		goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.NewThrottle.func1"))
}

// credFunc is an azcore.TokenCredential made of a function.
type credFunc func(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error)

func (f credFunc) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return f(ctx, opts)
}

func TestScopeAndRefreshHint(t *testing.T) {
	exp := time.Now().Add(24 * time.Hour).Truncate(time.Second)
	refresh := time.Now().Add(12 * time.Hour).Truncate(time.Second)
	var got policy.TokenRequestOptions
	cred := credFunc(func(_ context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
		got = opts
		return azcore.AccessToken{Token: "v", ExpiresOn: exp, RefreshOn: refresh}, nil
	})
	src := azuresource.New(cred, azuresource.WithTenantID("tenant-x"))
	tok, err := src.Token(context.Background(), tokens.Request{SessionID: "s", ProviderName: "p", Scope: "https://cognitiveservices.azure.com/.default"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Value != "v" || !tok.ExpiresOn.Equal(exp) || !tok.RefreshOn.Equal(refresh) {
		t.Fatalf("token %v, refresh %v", tok, tok.RefreshOn)
	}
	if len(got.Scopes) != 1 || got.Scopes[0] != "https://cognitiveservices.azure.com/.default" || got.TenantID != "tenant-x" || got.EnableCAE {
		t.Fatalf("credential asked with %+v", got)
	}
}

func TestNoScopeIsAnError(t *testing.T) {
	called := false
	cred := credFunc(func(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
		called = true
		return azcore.AccessToken{}, nil
	})
	_, err := azuresource.New(cred).Token(context.Background(), tokens.Request{ProviderName: "p"})
	if !errors.Is(err, azuresource.ErrNoScope) || called {
		t.Fatalf("err = %v, credential called: %v", err, called)
	}
	if !strings.Contains(err.Error(), "BearerTokenScope") {
		t.Fatalf("error does not say what to set: %v", err)
	}
}

const (
	secret      = "TOPSECRET-client-assertion-value"
	jwtSecret   = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlY3JldA"
	description = "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value."
)

func response(status int, body string) *http.Response {
	req, _ := http.NewRequest(http.MethodPost, "https://login.example/tenant/oauth2/v2.0/token", nil)
	return &http.Response{
		StatusCode: status,
		Status:     fmt.Sprintf("%d %s", status, http.StatusText(status)),
		Body:       io.NopCloser(bytes.NewBufferString(body)),
		Request:    req,
		Header:     http.Header{},
	}
}

// azidentity's AuthenticationFailedError prints the raw response; the
// adapter keeps the status, the error code and the description only.
func TestErrorsKeepNoRawResponse(t *testing.T) {
	cases := []struct {
		name, body     string
		status         int
		code, desc     string
		mustNotContain []string
	}{
		{"oauth2", `{"error":"invalid_client","error_description":"` + description + `","error_codes":[7000215],"trace_id":"abc","debug":"` + secret + `","echo":"` + jwtSecret + `"}`,
			401, "invalid_client", description, []string{secret, jwtSecret, "trace_id", "debug"}},
		{"nested", `{"error":{"code":"Unauthorized","message":"bad header"},"x":"` + secret + `"}`,
			401, "Unauthorized", "bad header", []string{secret}},
		{"app service", `{"statusCode":400,"message":"Unable to load the proper Managed Identity.","x":"` + secret + `"}`,
			400, "", "Unable to load the proper Managed Identity.", []string{secret}},
		{"description with a token", `{"error":"invalid_grant","error_description":"assertion ` + jwtSecret + ` rejected"}`,
			400, "invalid_grant", "assertion [redacted] rejected", []string{jwtSecret}},
		{"not json", "<html>" + secret + "</html>", 502, "", "", []string{secret, "html"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw := &azidentity.AuthenticationFailedError{RawResponse: response(c.status, c.body)}
			if !strings.Contains(raw.Error(), c.mustNotContain[0]) {
				t.Fatal("test premise: azidentity's own error would show the body")
			}
			cred := credFunc(func(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
				return azcore.AccessToken{}, raw
			})
			_, err := azuresource.New(cred).Token(context.Background(), tokens.Request{Scope: "s/.default"})
			var e *azuresource.Error
			if !errors.As(err, &e) {
				t.Fatalf("err %T, want *azuresource.Error", err)
			}
			for _, s := range c.mustNotContain {
				if strings.Contains(err.Error(), s) {
					t.Fatalf("error shows %q: %s", s, strings.ReplaceAll(err.Error(), secret, "<SECRET>"))
				}
			}
			if e.StatusCode != c.status || e.Code != c.code {
				t.Fatalf("status %d code %q, want %d %q", e.StatusCode, e.Code, c.status, c.code)
			}
			if !strings.Contains(err.Error(), fmt.Sprint(c.status)) || !strings.Contains(err.Error(), c.code) || !strings.Contains(err.Error(), c.desc) {
				t.Fatalf("error lacks status, code or description: %s", err)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Fatalf("multi-line error: %q", err)
			}
		})
	}
}

// A chain (DefaultAzureCredential) inlines each member's error, response
// dump included; only the status lines survive.
func TestChainedErrorsStripped(t *testing.T) {
	member := (&azidentity.AuthenticationFailedError{RawResponse: response(400, `{"error":"invalid_request","debug":"`+secret+`"}`)}).Error()
	chained := errors.New("DefaultAzureCredential: failed to acquire a token.\nAttempted credentials:\n\tEnvironmentCredential: missing environment variables\n\t" +
		strings.ReplaceAll(member, "\n", "\n\t\t"))
	if !strings.Contains(chained.Error(), secret) {
		t.Fatal("test premise")
	}
	cred := credFunc(func(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
		return azcore.AccessToken{}, chained
	})
	_, err := azuresource.New(cred).Token(context.Background(), tokens.Request{Scope: "s/.default"})
	if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "invalid_request") {
		t.Fatalf("chained error not stripped: %v", strings.ReplaceAll(fmt.Sprint(err), secret, "<SECRET>"))
	}
	for _, want := range []string{"DefaultAzureCredential", "EnvironmentCredential: missing environment variables", "RESPONSE 400"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error lost %q: %s", want, err)
		}
	}
}

// azidentity's errors do not unwrap to context errors; the adapter's do,
// so the broker can tell a timeout from a failure.
func TestContextErrorsUnwrap(t *testing.T) {
	cred := credFunc(func(ctx context.Context, _ policy.TokenRequestOptions) (azcore.AccessToken, error) {
		<-ctx.Done()
		return azcore.AccessToken{}, errors.New("ManagedIdentityCredential: request failed")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err := azuresource.New(cred).Token(ctx, tokens.Request{Scope: "s/.default"})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "ManagedIdentityCredential") {
		t.Fatalf("err = %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	var n atomic.Int64
	cred := credFunc(func(_ context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
		n.Add(1)
		return azcore.AccessToken{Token: opts.Scopes[0], ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
	src := azuresource.New(cred)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			scope := fmt.Sprint("scope-", i)
			tok, err := src.Token(context.Background(), tokens.Request{Scope: scope})
			if err != nil || tok.Value != scope {
				t.Errorf("scope %s: %v", scope, err)
			}
		})
	}
	wg.Wait()
	if n.Load() != 20 {
		t.Fatalf("%d calls", n.Load())
	}
}
