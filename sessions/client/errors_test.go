package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// A turn that fails because tokenbroker could not serve its token reaches
// the caller as the runtime's *SessionError, and the SessionError matches
// the sentinel of what went wrong on this side: one row per failure of the
// errors table (docs/errors.md).
func TestTurnErrorsMatchTheirSentinel(t *testing.T) {
	hang := tokens.Func(func(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
		<-ctx.Done()
		return tokens.Token{}, ctx.Err()
	})
	failing := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		return tokens.Token{}, errors.New("identity endpoint answered 500")
	})
	for _, tc := range []struct {
		name string
		opts actors.Options
		// setup runs before the turn on the same broker and client; it
		// returns the session's Source.
		setup func(t *testing.T, b *actors.Broker, c *client.Client, url string) tokens.Source
		want  []error
		says  string
	}{
		{name: "credential failed", setup: func(*testing.T, *actors.Broker, *client.Client, string) tokens.Source { return failing },
			want: []error{actors.ErrCredential}, says: "credential failed: identity endpoint answered 500"},
		{name: "invalid token", setup: func(*testing.T, *actors.Broker, *client.Client, string) tokens.Source {
			return tokens.Static(tokens.Token{Value: "", ExpiresOn: time.Now().Add(time.Hour)})
		}, want: []error{actors.ErrInvalidToken, tokens.ErrEmptyToken}, says: "credential returned an invalid token"},
		{name: "timed out", opts: actors.Options{RequestTimeout: 200 * time.Millisecond},
			setup: func(*testing.T, *actors.Broker, *client.Client, string) tokens.Source { return hang },
			want:  []error{actors.ErrTimeout}, says: "credential did not answer within"},
		{name: "backing off", setup: func(t *testing.T, b *actors.Broker, c *client.Client, url string) tokens.Source {
			cred, err := b.NewCredential("mi", "", failing)
			if err != nil {
				t.Fatal(err)
			}
			first := openSession(t, c, url, cred) // its failure starts the back-off
			if _, err := first.SendAndWait(ctxT(t), "first"); !errors.Is(err, actors.ErrCredential) {
				t.Fatalf("first turn: %v", err)
			}
			return cred
		}, want: []error{actors.ErrBackoff, actors.ErrCredential}, says: "next try in"},
		{name: "no call slot", opts: actors.Options{MaxConcurrentCalls: 1, RequestTimeout: 100 * time.Millisecond},
			setup: func(t *testing.T, b *actors.Broker, _ *client.Client, _ string) tokens.Source {
				// 100 other tenants' calls hang: each holds the one slot for
				// its lease (250 ms), 25 s in all, far more than the 100 ms
				// the turn's token request may wait.
				started := make(chan struct{}, 100)
				stuck := tokens.Func(func(ctx context.Context, r tokens.Request) (tokens.Token, error) {
					started <- struct{}{}
					return hang(ctx, r)
				})
				for i := range 100 {
					cred, err := b.NewCredential(fmt.Sprint("tenant-", i), "", stuck)
					if err != nil {
						t.Fatal(err)
					}
					go func() { _, _ = cred.BearerToken("other", "p") }()
				}
				<-started
				return tokens.Static(tokens.Token{Value: "fine", ExpiresOn: time.Now().Add(time.Hour)})
			}, want: []error{actors.ErrNoCallSlot}, says: "for a credential call slot"},
		{name: "broker closed", setup: func(t *testing.T, b *actors.Broker, c *client.Client, url string) tokens.Source {
			return tokens.Func(func(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
				go b.Close() // the service shuts down while the turn waits for its token
				<-ctx.Done() // Close cancels the call
				return tokens.Token{}, ctx.Err()
			})
		}, want: []error{actors.ErrClosed}, says: "broker closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newSimServer(t, runtimesim.Options{Dialect: runtimesim.GetToken}, fakemodel.Options{})
			b := actors.NewBroker(tc.opts)
			t.Cleanup(func() { _ = b.Close() })
			c := connectTo(t, b, srv)
			src := tc.setup(t, b, c, srv.Model.URL())
			s := openSession(t, c, srv.Model.URL(), src)
			_, err := s.SendAndWait(ctxT(t), "hi")
			var se *client.SessionError
			if !errors.As(err, &se) || !errors.Is(err, client.ErrSessionFailed) {
				t.Fatalf("turn: %v, want a *SessionError", err)
			}
			for _, want := range tc.want {
				if !errors.Is(err, want) {
					t.Errorf("turn error %q does not match %v", err, want)
				}
			}
			if !strings.Contains(se.Message, tc.says) {
				t.Errorf("runtime's message %q does not say %q", se.Message, tc.says)
			}
		})
	}
}

func openSession(t *testing.T, c *client.Client, url string, src tokens.Source) *client.Session {
	t.Helper()
	s, err := c.CreateSession(ctxT(t), sessions.SessionConfig{
		Model:    "gpt-4o",
		Provider: &sessions.ProviderConfig{Type: "openai", BaseURL: url, BearerTokenSource: src},
	})
	if err != nil {
		t.Fatal(fmt.Errorf("CreateSession: %w", err))
	}
	return s
}
