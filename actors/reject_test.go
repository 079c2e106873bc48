package actors_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// A token the model provider rejected is dropped once, however many
// sessions report it, and the next requests all get one fresh token.
func TestRejectedTokenDroppedOnce(t *testing.T) {
	sharedOrNot(t, func(t *testing.T, shared bool) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src := lived("t", time.Hour)
		r := b.NewRouter()
		pv := provide(t, b, shared, "p", "", src)
		sessions := []string{"s0"}
		if shared {
			sessions = []string{"s0", "s1", "s2", "s3"}
		}
		for _, id := range sessions {
			open(t, r, id, pv)
			if g := mustAcquire(t, r, id, "p"); g.Token.Value != value("t", 1) {
				t.Fatalf("%s: first token %s", id, fp(g.Token.Value))
			}
		}
		time.Sleep(time.Minute)
		var wg sync.WaitGroup
		for _, id := range sessions {
			wg.Go(func() {
				if err := r.Rejected(id, "p"); err != nil {
					t.Errorf("Rejected(%s): %v", id, err)
				}
			})
		}
		wg.Wait()
		for _, id := range sessions {
			if g := mustAcquire(t, r, id, "p"); g.Token.Value != value("t", 2) {
				t.Fatalf("%s after the rejection: token %s, want the fresh one", id, fp(g.Token.Value))
			}
		}
		if n := src.calls.Load(); n != 2 {
			t.Fatalf("%d credential calls, want 2 (one fresh token for %d reports)", n, len(sessions))
		}
		// A report about a token no longer cached changes nothing.
		if err := r.Rejected(sessions[0], "p"); err == nil {
			// s0 was served t-2 above: it is the cached one, a replacement.
			t.Fatal("a rejected replacement token was accepted as healable")
		}
	})
}

// The fresh token that replaced a rejected one is rejected too: the
// provider refuses the identity. Nothing more is dropped, whatever the
// number of reports, and the error says so, with the token's age.
func TestRejectedAgainKeepsTheToken(t *testing.T) {
	sharedOrNot(t, func(t *testing.T, shared bool) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src := lived("t", time.Hour)
		r := b.NewRouter()
		open(t, r, "s", provide(t, b, shared, "p", "", src))
		mustAcquire(t, r, "s", "p")
		if err := r.Rejected("s", "p"); err != nil {
			t.Fatal(err)
		}
		fresh := mustAcquire(t, r, "s", "p")
		time.Sleep(3 * time.Second)
		want := `session "s": provider "p": `
		if shared {
			want += `shared credential "p": `
		}
		want += "rejected again with a token fetched 3s ago: the provider refuses this identity; check its role assignment"
		for range 8 {
			err := r.Rejected("s", "p")
			if !errors.Is(err, actors.ErrRejectedAgain) || err.Error() != want {
				t.Fatalf("Rejected of the replacement: %v, want %q", err, want)
			}
			if g := mustAcquire(t, r, "s", "p"); g.Token != fresh.Token {
				t.Fatalf("the replacement was dropped: now %s", fp(g.Token.Value))
			}
		}
		if n := src.calls.Load(); n != 2 {
			t.Fatalf("%d credential calls, want 2", n)
		}
		// Once the replacement is refreshed as usual, a rejection of the
		// new token heals again: one more call per token lifetime at most.
		time.Sleep(time.Hour)
		renewed := mustAcquire(t, r, "s", "p")
		if err := r.Rejected("s", "p"); err != nil {
			t.Fatalf("Rejected of a token refreshed on schedule: %v", err)
		}
		if g := mustAcquire(t, r, "s", "p"); g.Token == renewed.Token {
			t.Fatal("the rejected token was served again")
		}
	})
}

// A session reporting a token that another session's report already
// replaced drops nothing: the fresh token is not the one it saw rejected.
func TestRejectedStaleReportDropsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src := lived("t", time.Hour)
		cred := credential(t, b, "mi", "", src)
		r := b.NewRouter()
		open(t, r, "a", actors.Provider{Name: "p", Source: cred})
		open(t, r, "b", actors.Provider{Name: "p", Source: cred})
		mustAcquire(t, r, "a", "p")
		mustAcquire(t, r, "b", "p")
		if err := r.Rejected("a", "p"); err != nil {
			t.Fatal(err)
		}
		mustAcquire(t, r, "a", "p") // the replacement, t-2
		// b last saw t-1: its report comes late and changes nothing.
		if err := r.Rejected("b", "p"); err != nil {
			t.Fatalf("late report: %v", err)
		}
		if g := mustAcquire(t, r, "b", "p"); g.Token.Value != value("t", 2) || src.calls.Load() != 2 {
			t.Fatalf("after a late report: %s, %d calls; want t-2 and 2 calls", fp(g.Token.Value), src.calls.Load())
		}
	})
}

// Bare tokens are fetched for every request anyway: a rejection drops
// nothing and is no error. Unknown sessions and providers are errors.
func TestRejectedBareAndUnknown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		r := b.NewRouter()
		open(t, r, "s", actors.Provider{Name: "p", Source: tokens.BareFunc(func(context.Context, tokens.Request) (string, error) { return "bare", nil })})
		mustAcquire(t, r, "s", "p")
		if err := r.Rejected("s", "p"); err != nil {
			t.Fatalf("bare: %v", err)
		}
		if err := r.Rejected("nope", "p"); !errors.Is(err, actors.ErrUnknownSession) {
			t.Fatalf("unknown session: %v", err)
		}
		if err := r.Rejected("s", "nope"); !errors.Is(err, actors.ErrUnknownProvider) {
			t.Fatalf("unknown provider: %v", err)
		}
	})
}
