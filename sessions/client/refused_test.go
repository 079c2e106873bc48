package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
)

// unusedAzureCredential fails the test if anything asks it for a token: a
// refused configuration must not reach the credential either.
type unusedAzureCredential struct{ t *testing.T }

func (c unusedAzureCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.t.Error("the credential of a refused configuration was called")
	return azcore.AccessToken{}, errors.New("unused")
}

// Every configuration mistake is refused by CreateSession, ResumeSession and
// sessions.Open with its sentinel, and the runtime receives nothing: no
// request after the handshake, no session, no token request.
func TestRefusedConfigurations(t *testing.T) {
	srv := newSimServer(t, runtimesim.Options{Dialect: runtimesim.Acquire}, fakemodel.Options{})
	b := simBroker(t)
	c := connectTo(t, b, srv)
	url := srv.Model.URL()
	src := tokens.Static(tokens.Token{Value: "never-sent"})
	azure := azuresource.New(unusedAzureCredential{t})
	named := func(p sessions.ProviderConfig) sessions.SessionConfig {
		return sessions.SessionConfig{
			Model:     "p/m",
			Models:    []sessions.ModelConfig{{ID: "m", Provider: "p"}},
			Providers: []sessions.NamedProviderConfig{{Name: "p", ProviderConfig: p}},
		}
	}
	whole := func(p sessions.ProviderConfig) sessions.SessionConfig {
		return sessions.SessionConfig{Model: "gpt-4o", Provider: &p}
	}
	ok := sessions.ProviderConfig{BaseURL: url, BearerTokenSource: src}
	scoped, err := b.NewCredential("scoped", "api://a/.default", src)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  sessions.SessionConfig
		want error
	}{
		{"whole-session provider without any credential", whole(sessions.ProviderConfig{BaseURL: url}), sessions.ErrNoCredential},
		{"named provider without any credential", named(sessions.ProviderConfig{BaseURL: url}), sessions.ErrNoCredential},
		{"scope without a source", whole(sessions.ProviderConfig{BaseURL: url, APIKey: "k", BearerTokenScope: "s"}), sessions.ErrScopeNoSource},
		{"scope alone", named(sessions.ProviderConfig{BaseURL: url, BearerTokenScope: "s"}), sessions.ErrScopeNoSource},
		{"source and APIKey", whole(sessions.ProviderConfig{BaseURL: url, BearerTokenSource: src, APIKey: "k"}), sessions.ErrTwoCredentials},
		{"source and BearerToken", named(sessions.ProviderConfig{BaseURL: url, BearerTokenSource: src, BearerToken: "b"}), sessions.ErrTwoCredentials},
		{"Provider and Providers", sessions.SessionConfig{Provider: &ok, Providers: named(ok).Providers}, sessions.ErrProviderAndList},
		{"Provider and Models", sessions.SessionConfig{Provider: &ok, Models: named(ok).Models}, sessions.ErrProviderAndList},
		{"azuresource without a scope", whole(sessions.ProviderConfig{BaseURL: url, BearerTokenSource: azure}), sessions.ErrScopeRequired},
		{"named azuresource without a scope", named(sessions.ProviderConfig{BaseURL: url, BearerTokenSource: azure}), sessions.ErrScopeRequired},
		{"a scope other than its Credential's", whole(sessions.ProviderConfig{BaseURL: url, BearerTokenSource: scoped, BearerTokenScope: "api://b/.default"}), actors.ErrScopeMismatch},
		{"a nil tokens.Func", whole(sessions.ProviderConfig{BaseURL: url, BearerTokenSource: tokens.Func(nil)}), sessions.ErrNoCredential},
		{"a nil *actors.Credential", named(sessions.ProviderConfig{BaseURL: url, BearerTokenSource: (*actors.Credential)(nil)}), sessions.ErrNoCredential},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.SessionID = "refused"
			if _, err := c.CreateSession(ctxT(t), tc.cfg); !errors.Is(err, tc.want) {
				t.Errorf("CreateSession: %v, want %v", err, tc.want)
			}
			if _, err := c.ResumeSession(ctxT(t), tc.cfg); !errors.Is(err, tc.want) {
				t.Errorf("ResumeSession: %v, want %v", err, tc.want)
			}
			if _, err := sessions.Open(c.Router(), tc.cfg); !errors.Is(err, tc.want) {
				t.Errorf("Open: %v, want %v", err, tc.want)
			}
			if c.Router().Len() != 0 {
				t.Errorf("a refused session was registered")
			}
		})
	}
	// A shared Credential cannot be built without the scope its source
	// needs, nor from a nil source; the sentinels are the same ones.
	if _, err := b.NewCredential("mi", "", azure); !errors.Is(err, sessions.ErrScopeRequired) || !errors.Is(err, azuresource.ErrNoScope) {
		t.Errorf("NewCredential of an azuresource without a scope: %v", err)
	}
	if _, err := b.NewCredential("mi", "s", tokens.BareFunc(nil)); !errors.Is(err, sessions.ErrNoCredential) {
		t.Errorf("NewCredential of a nil BareFunc: %v", err)
	}

	st := srv.Stats()
	if st.Calls != 1 || st.Sessions != 0 || st.TokenRequests != 0 || st.ModelRequests != 0 {
		t.Errorf("the runtime received something: %+v (want only the connect handshake)", st)
	}

	// The same connection still opens a correct session, whose provider on a
	// shared credential carries the credential's scope on the wire.
	cred, err := b.NewCredential("mi", "api://model/.default", azuresource.New(fixedAzureCredential{}))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.CreateSession(ctxT(t), whole(sessions.ProviderConfig{BaseURL: url, BearerTokenSource: cred}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SendAndWait(ctxT(t), "hi"); err != nil {
		t.Fatal(err)
	}
	if reqs := srv.TokenRequests(); len(reqs) != 1 || reqs[0].Scope != "api://model/.default" {
		t.Errorf("token requests %+v, want one with the credential's scope", reqs)
	}
}

// fixedAzureCredential issues one long-lived token for any scope.
type fixedAzureCredential struct{}

func (fixedAzureCredential) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "azure-token-for-" + o.Scopes[0], ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// connectTo returns a client connected to srv that closes with the test.
func connectTo(t *testing.T, b *actors.Broker, srv *runtimesim.Server) *client.Client {
	t.Helper()
	c, err := client.Connect(ctxT(t), b, srv.Dial(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// newSimServer starts a simulator server that stops with the test.
func newSimServer(t *testing.T, rt runtimesim.Options, model fakemodel.Options) *runtimesim.Server {
	t.Helper()
	srv, err := runtimesim.NewServer(rt, model)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	return srv
}
