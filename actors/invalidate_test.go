package actors

import (
	"context"
	"errors"
	"fmt"
	"sync"
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

// Once Router.Invalidate returns, no request gets the dropped token, even
// one through another session sharing the credential whose messages take
// another path to the credential's actor. 1,000 rounds, with other
// requests racing on both sessions.
func TestInvalidateVisibleAtOnce(t *testing.T) {
	b := NewBroker(Options{})
	defer b.Close()
	var n atomic.Int64
	src := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		return tokens.Token{Value: fmt.Sprint("tok-", n.Add(1)), ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
	cred, err := b.NewCredential("mi", "", src)
	if err != nil {
		t.Fatal(err)
	}
	r := b.NewRouter()
	for _, s := range []string{"s1", "s2"} {
		if err := r.Open(s, []Provider{{Name: "p", Source: cred}}); err != nil {
			t.Fatal(err)
		}
	}
	ask := func(s string) string {
		g, err := r.Acquire(context.Background(), tokens.Request{SessionID: s, ProviderName: "p"})
		if err != nil {
			t.Error(err)
		}
		return g.Token.Value
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range []string{"s1", "s2", "s2"} { // load: cache hits and misses in both mailboxes
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					ask(s)
				}
			}
		})
	}
	stale := 0
	for range 1000 {
		before := ask("s2")
		if err := r.Invalidate("s1", "p"); err != nil {
			t.Fatal(err)
		}
		if ask("s2") == before {
			stale++
		}
	}
	close(stop)
	wg.Wait()
	if stale > 0 {
		t.Fatalf("%d of 1000 rounds served the invalidated token after Invalidate returned", stale)
	}
}

// Once Credential.Close returns, no request gets its token: not through a
// session's route, not from Credential.Token. 1,000 rounds, each with
// requests in flight as Close runs.
func TestCredentialCloseVisibleAtOnce(t *testing.T) {
	b := NewBroker(Options{})
	defer b.Close()
	r := b.NewRouter()
	src := tokens.Static(tokens.Token{Value: "tok-close", ExpiresOn: time.Now().Add(time.Hour)})
	var served atomic.Int64
	for round := range 1000 {
		cred, err := b.NewCredential("mi", "", src)
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprint("s", round)
		if err := r.Open(id, []Provider{{Name: "p", Source: cred}}); err != nil {
			t.Fatal(err)
		}
		var closed atomic.Bool
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for post := 0; post < 20; {
					after := closed.Load() // read before the request starts
					var err error
					if w%2 == 0 {
						_, err = r.Acquire(context.Background(), tokens.Request{SessionID: id, ProviderName: "p"})
					} else {
						_, err = cred.Token(context.Background(), tokens.Request{})
					}
					if after {
						if err == nil {
							served.Add(1)
						} else if !errors.Is(err, ErrClosed) {
							t.Errorf("after Close: %v", err)
						}
						post++
					}
				}
			})
		}
		time.Sleep(50 * time.Microsecond)
		cred.Close()
		closed.Store(true)
		wg.Wait()
		if err := r.CloseSession(id); err != nil {
			t.Fatal(err)
		}
	}
	if n := served.Load(); n > 0 {
		t.Fatalf("%d tokens served by a credential after its Close returned", n)
	}
}
