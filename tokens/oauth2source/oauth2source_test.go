package oauth2source_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource/azuretest"
	"github.com/tokenbroker/tokenbroker/tokens/oauth2source"
)

// protoactor-go's dead-letter throttle goroutine (1 s after a message
// reaches a stopped actor) may outlive a broker test; nothing else may.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
		goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.NewThrottle.func1"))
}

type tsFunc func() (*oauth2.Token, error)

func (f tsFunc) Token() (*oauth2.Token, error) { return f() }

func token(ctx context.Context, ts oauth2.TokenSource) (tokens.Token, error) {
	return oauth2source.New(ts).Token(ctx, tokens.Request{ProviderName: "p", Scope: "s"})
}

func TestMapping(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	cases := []struct {
		name string
		in   *oauth2.Token
		bare bool
		err  bool
	}{
		{"bearer with expiry", &oauth2.Token{AccessToken: "a", TokenType: "Bearer", Expiry: exp}, false, false},
		{"lower-case type", &oauth2.Token{AccessToken: "a", TokenType: "bearer", Expiry: exp}, false, false},
		{"no type", &oauth2.Token{AccessToken: "a", Expiry: exp}, false, false},
		{"no expiry: bare", &oauth2.Token{AccessToken: "a", TokenType: "Bearer"}, true, false},
		{"mac token", &oauth2.Token{AccessToken: "a", TokenType: "MAC", Expiry: exp}, false, true},
		{"nil token", nil, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := token(context.Background(), tsFunc(func() (*oauth2.Token, error) { return c.in, nil }))
			if (err != nil) != c.err {
				t.Fatalf("err = %v", err)
			}
			if c.err {
				if c.in != nil && !errors.Is(err, oauth2source.ErrNotBearer) {
					t.Fatalf("err = %v, want ErrNotBearer", err)
				}
				return
			}
			if got.Value != "a" || got.Bare() != c.bare || (!c.bare && !got.ExpiresOn.Equal(exp)) {
				t.Fatalf("got %v", got)
			}
		})
	}
}

// oauth2.RetrieveError prints the token endpoint's whole body when the
// body is not an OAuth2 error; the adapter keeps the status, the OAuth2
// error code and its description only.
func TestRetrieveErrorSanitized(t *testing.T) {
	const secret = "TOPSECRET-echoed-by-a-bad-endpoint"
	cases := []struct {
		name string
		re   *oauth2.RetrieveError
		want []string
	}{
		{"oauth2 error", &oauth2.RetrieveError{
			Response:         &http.Response{StatusCode: 401, Status: "401 Unauthorized"},
			Body:             []byte(`{"error":"invalid_client","error_description":"bad secret","debug":"` + secret + `"}`),
			ErrorCode:        "invalid_client",
			ErrorDescription: "bad secret",
		}, []string{"401", "invalid_client", "bad secret"}},
		{"raw body", &oauth2.RetrieveError{
			Response: &http.Response{StatusCode: 502, Status: "502 Bad Gateway"},
			Body:     []byte("<html>proxy error " + secret + "</html>"),
		}, []string{"502"}},
		{"token in the description", &oauth2.RetrieveError{
			Response:         &http.Response{StatusCode: 400, Status: "400 Bad Request"},
			ErrorCode:        "invalid_grant",
			ErrorDescription: "refresh_token=" + secret + " expired",
		}, []string{"400", "invalid_grant", "refresh_token=" + tokens.Redacted + " expired"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := token(context.Background(), tsFunc(func() (*oauth2.Token, error) { return nil, c.re }))
			if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "html") {
				t.Fatalf("err = %v", strings.ReplaceAll(fmt.Sprint(err), secret, "<SECRET>"))
			}
			for _, want := range c.want {
				if !strings.Contains(err.Error(), want) {
					t.Fatalf("error lacks %q: %v", want, err)
				}
			}
		})
	}
}

// An error of another kind (a custom TokenSource's) is scrubbed too, and
// still matches what it wraps.
func TestOtherErrorsScrubbed(t *testing.T) {
	const secret = "TOPSECRET-client-secret-value"
	cause := errors.New("cannot reach the vault")
	_, err := token(context.Background(), tsFunc(func() (*oauth2.Token, error) {
		return nil, fmt.Errorf("exchange with client_secret=%s failed: %w", secret, cause)
	}))
	if err == nil || strings.Contains(err.Error(), secret) || !errors.Is(err, cause) ||
		!strings.Contains(err.Error(), "client_secret="+tokens.Redacted+" failed: cannot reach the vault") {
		t.Fatalf("err = %v", strings.ReplaceAll(fmt.Sprint(err), secret, "<SECRET>"))
	}
}

// oauth2.TokenSource has no context: a hanging one still gives the caller
// an error at its deadline. In a synctest bubble, so that the deadline is
// exact and synctest.Wait can tell whether a call was started at all.
func TestHangBoundedByContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		defer close(release) // let the stuck goroutine end before the bubble does
		ts := tsFunc(func() (*oauth2.Token, error) {
			<-release
			return &oauth2.Token{AccessToken: "late"}, nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := token(ctx, ts)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if d := time.Since(start); d != 20*time.Millisecond {
			t.Fatalf("answered after %s, want at the 20ms deadline", d)
		}
		// An already-ended context does not even start the call.
		var called atomic.Bool
		_, err = token(ctx, tsFunc(func() (*oauth2.Token, error) { called.Store(true); return nil, nil }))
		synctest.Wait() // a call started in the background has run by now
		if !errors.Is(err, context.DeadlineExceeded) || called.Load() {
			t.Fatalf("ended context: err %v, called %v", err, called.Load())
		}
	})
}

func TestPanicRecovered(t *testing.T) {
	_, err := token(context.Background(), tsFunc(func() (*oauth2.Token, error) { panic("secret in a panic") }))
	if err == nil || strings.Contains(err.Error(), "secret in a panic") {
		t.Fatalf("err = %v", err)
	}
}

// A real clientcredentials TokenSource against the fake Entra token
// endpoint (OAuth2 client credentials over TLS on 127.0.0.1), through a
// broker: many sessions and turns, one token request.
func TestClientCredentialsThroughBroker(t *testing.T) {
	fake := azuretest.NewEntra(azuretest.Options{ClientSecret: "s3cret"})
	defer fake.Close()
	cfg := clientcredentials.Config{
		ClientID:     "app",
		ClientSecret: "s3cret",
		TokenURL:     fake.URL + "/tenant/oauth2/v2.0/token",
		Scopes:       []string{"https://cognitiveservices.azure.com/.default"},
	}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, fake.Client())
	b := actors.NewBroker(actors.Options{})
	defer func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	}()
	cred, err := b.NewCredential("llm", "", oauth2source.New(cfg.TokenSource(ctx)))
	if err != nil {
		t.Fatal(err)
	}
	r := b.NewRouter()
	const sessions, turns = 50, 20
	for i := range sessions {
		if err := r.Open(fmt.Sprint("s", i), []actors.Provider{{Name: "llm", Source: cred}}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Go(func() {
			for range turns {
				g, err := r.Acquire(context.Background(), tokens.Request{SessionID: fmt.Sprint("s", i), ProviderName: "llm"})
				if err != nil {
					t.Errorf("session %d: %v", i, err)
					return
				}
				if left := time.Until(g.Token.ExpiresOn); left < 59*time.Minute {
					t.Errorf("token expires in %s", left)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := fake.Issued(); n != 1 {
		t.Fatalf("%d token requests for %d sessions × %d turns, want 1", n, sessions, turns)
	}
	// The wrong secret: a readable error naming the OAuth2 error.
	cfg.ClientSecret = "wrong"
	_, err = oauth2source.New(cfg.TokenSource(ctx)).Token(context.Background(), tokens.Request{})
	if err == nil || !strings.Contains(err.Error(), "invalid_client") || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("wrong secret: %v", err)
	}
}
