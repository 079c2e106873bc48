package client_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/transport"
)

func simBroker(t *testing.T) *actors.Broker {
	b := actors.NewBroker(actors.Options{})
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
	return b
}

// The same client drives the simulator in either dialect: a turn's token
// reaches the model, asked for with the dialect's method.
func TestClientOnSimulator(t *testing.T) {
	for _, d := range []runtimesim.Dialect{runtimesim.Acquire, runtimesim.GetToken} {
		t.Run(d.String(), func(t *testing.T) {
			ctx := ctxT(t)
			b := simBroker(t)
			rt := newSimServer(t, runtimesim.Options{Dialect: d}, fakemodel.Options{})
			c := connectTo(t, b, rt)
			if c.Info().Version != rt.Version() {
				t.Errorf("connect reported version %q", c.Info().Version)
			}
			m := rt.Model
			var mu sync.Mutex
			calls := 0
			const secret = "sim-token-1"
			sess, err := c.CreateSession(ctx, sessions.SessionConfig{
				SessionID: "sim-" + d.String(),
				Model:     "gpt-4o",
				Provider:  &sessions.ProviderConfig{Type: "openai", WireAPI: "completions", BaseURL: m.URL(), BearerTokenSource: counted(secret, &calls, &mu), BearerTokenScope: "api://sim/.default"},
			})
			if err != nil {
				t.Fatal(err)
			}
			for range 2 {
				ans, err := sess.SendAndWait(ctx, "hello")
				if err != nil || ans != fakemodel.DefaultReply {
					t.Fatalf("SendAndWait = %q, %v", ans, err)
				}
			}
			reqs := m.Requests()
			if len(reqs) != 2 {
				t.Fatalf("%d model requests, want 2", len(reqs))
			}
			for _, r := range reqs {
				if r.BearerToken() != secret {
					t.Fatalf("model got token %s", tokens.Fingerprint(r.BearerToken()))
				}
			}
			want := transport.MethodAcquire
			if d == runtimesim.GetToken {
				want = transport.MethodGetToken
			}
			trs := rt.TokenRequests()
			if len(trs) == 0 {
				t.Fatal("the simulator asked for no token")
			}
			for _, tr := range trs {
				if tr.Method != want || tr.Err != "" || tr.ProviderName != "default" {
					t.Errorf("token request %+v", tr)
				}
			}
			if calls != 1 {
				t.Errorf("credential called %d times, want 1", calls)
			}
			if err := sess.Destroy(ctx); err != nil {
				t.Fatal(err)
			}
			if c.Router().Len() != 0 {
				t.Error("routing open after Destroy")
			}
		})
	}
}

// A failing credential's message reaches the caller as a SessionError.
func TestClientOnSimulatorCredentialError(t *testing.T) {
	ctx := ctxT(t)
	b := simBroker(t)
	srv := newSimServer(t, runtimesim.Options{Dialect: runtimesim.GetToken}, fakemodel.Options{})
	c := connectTo(t, b, srv)
	m := srv.Model
	src := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		return tokens.Token{}, errors.New("vault sealed")
	})
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{
		Model:    "gpt-4o",
		Provider: &sessions.ProviderConfig{Type: "openai", BaseURL: m.URL(), BearerTokenSource: src},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = sess.SendAndWait(ctx, "hello")
	var se *client.SessionError
	if !errors.As(err, &se) || !strings.Contains(se.Message, "vault sealed") {
		t.Fatalf("err = %v", err)
	}
	if m.Count() != 0 {
		t.Errorf("model called without a token")
	}
}

// Over TCP, and a resume on a second connection re-registers the
// providers there: the first connection's routing is not used.
func TestClientOnSimulatorTCPResume(t *testing.T) {
	ctx := ctxT(t)
	b := simBroker(t)
	rt := runtimesim.New(runtimesim.Options{Dialect: runtimesim.GetToken})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- rt.ServeListener(serveCtx, ln) }()
	t.Cleanup(func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	})
	dial := func() *client.Client {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.Connect(ctx, b, conn, client.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	m, err := fakemodel.Start(fakemodel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	cfg := func(value string) sessions.SessionConfig {
		return sessions.SessionConfig{SessionID: "tcp-1", Model: "gpt-4o",
			Provider: &sessions.ProviderConfig{Type: "openai", BaseURL: m.URL(), BearerTokenSource: tokens.Static(tokens.Token{Value: value})}}
	}
	c1 := dial()
	s1, err := c1.CreateSession(ctx, cfg("first-token"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s1.SendAndWait(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	c2 := dial()
	defer c2.Close()
	s2, err := c2.ResumeSession(ctx, cfg("second-token"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.SendAndWait(ctx, "two"); err != nil {
		t.Fatal(err)
	}
	reqs := m.Requests()
	if len(reqs) != 2 || reqs[0].BearerToken() != "first-token" || reqs[1].BearerToken() != "second-token" {
		t.Fatalf("model requests %v", reqs)
	}
}
