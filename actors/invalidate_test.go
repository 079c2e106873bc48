package actors

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// An invalidation that arrives while a refresh runs discards that refresh's
// token (it may be the revoked one): the waiting request gets a token from
// a second call.
func TestInvalidateDuringRefreshRefetches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBroker(Options{})
		defer b.Close()
		r := b.NewRouter()
		release := make(chan struct{})
		var calls atomic.Int32
		src := tokens.Func(func(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
			if calls.Add(1) == 1 {
				<-release
				return tokens.Token{Value: "revoked", ExpiresOn: time.Now().Add(time.Hour)}, nil
			}
			return tokens.Token{Value: "fresh", ExpiresOn: time.Now().Add(time.Hour)}, nil
		})
		if err := r.Open("s", []Provider{{Name: "p", Source: src}}); err != nil {
			t.Fatal(err)
		}
		got := make(chan Grant, 1)
		go func() {
			g, err := r.Acquire(context.Background(), tokens.Request{SessionID: "s", ProviderName: "p"})
			if err != nil {
				t.Error(err)
			}
			got <- g
		}()
		synctest.Wait() // the first call is running
		if err := r.Invalidate("s", "p"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the provider actor has taken the invalidation
		close(release)
		g := <-got
		if g.Token.Value != "fresh" || calls.Load() != 2 {
			t.Fatalf("served %s after %d calls; want the second call's token", tokens.Fingerprint(g.Token.Value), calls.Load())
		}
	})
}

// Closing a session ends its provider's credential call at once instead of
// letting it run to RefreshTimeout.
func TestSessionCloseCancelsCredentialCall(t *testing.T) {
	b := NewBroker(Options{})
	defer b.Close()
	r := b.NewRouter()
	started, ended := make(chan struct{}), make(chan error, 1)
	src := tokens.Func(func(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
		close(started)
		<-ctx.Done()
		ended <- ctx.Err()
		return tokens.Token{}, ctx.Err()
	})
	if err := r.Open("s", []Provider{{Name: "p", Source: src}}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := r.Acquire(context.Background(), tokens.Request{SessionID: "s", ProviderName: "p"})
		errc <- err
	}()
	// Closing before the call starts would fail the request without ever
	// calling the source: wait for the call.
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("the credential was not called")
	}
	if err := r.CloseSession("s"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-errc:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting request was not released by CloseSession")
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the credential call kept running after its session closed")
	}
}

// A provider on a shared credential without a scope of its own has the
// credential's: a request naming it is served, another is refused.
func TestSharedCredentialScopeIsTheProviders(t *testing.T) {
	b := NewBroker(Options{})
	defer b.Close()
	c, err := b.NewCredential("mi", "api://a/.default", tokens.Static(tokens.Token{Value: "t", ExpiresOn: time.Now().Add(time.Hour)}))
	if err != nil {
		t.Fatal(err)
	}
	r := b.NewRouter()
	if err := r.Open("s", []Provider{{Name: "p", Source: c}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Acquire(context.Background(), tokens.Request{SessionID: "s", ProviderName: "p", Scope: "api://a/.default"}); err != nil {
		t.Fatalf("the credential's own scope was refused: %v", err)
	}
	if _, err := r.Acquire(context.Background(), tokens.Request{SessionID: "s", ProviderName: "p", Scope: "api://b/.default"}); !errors.Is(err, ErrScopeMismatch) {
		t.Fatalf("another scope: %v, want ErrScopeMismatch", err)
	}
}
