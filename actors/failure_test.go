package actors_test

// How a failing credential reaches a runtime: request by request, against
// the Copilot CLI 1.0.102's retry pattern (a request, then after each error
// reply another about 1 s later, 6 requests in all), in a synctest bubble.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/capture"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// cliRetries is what CLI 1.0.102 does with one model request's token.
const (
	cliRequests = 6
	cliPause    = time.Second
)

// answer is one request of a turn as the runtime saw it.
type answer struct {
	at, waited time.Duration // from the start of the turn
	err        error
}

// turn plays the CLI's retries of one token request and returns every
// answer; it stops at the first token.
func turn(r *actors.Router, session, provider string) []answer {
	var out []answer
	start := time.Now()
	for range cliRequests {
		t0 := time.Now()
		_, err := acquire(r, session, provider)
		out = append(out, answer{at: t0.Sub(start), waited: time.Since(t0), err: err})
		if err == nil {
			break
		}
		time.Sleep(cliPause)
	}
	return out
}

// A credential that hangs (honouring its context or not): the first request
// waits RequestTimeout (30 s) and gets the timeout; the 5 retries get the
// same failure at once, saying when the next try is; the credential is
// called once. The turn fails after 35 s instead of 6 × 30 s. Ten sessions
// on one shared credential: still one call.
func TestRetryScheduleHungCredential(t *testing.T) {
	for _, honours := range []bool{true, false} {
		t.Run(fmt.Sprintf("honours ctx=%v", honours), func(t *testing.T) {
			sharedOrNot(t, func(t *testing.T, shared bool) {
				b := newBroker(t, actors.Options{})
				release := make(chan struct{})
				src := &fakeSource{fn: func(ctx context.Context, _ int64, _ tokens.Request) (tokens.Token, error) {
					if honours {
						<-ctx.Done()
						return tokens.Token{}, fmt.Errorf("GET http://127.0.0.1/msi/token: %w. To troubleshoot, visit https://aka.ms/x", ctx.Err())
					}
					<-release
					return tokens.Token{}, errors.New("late")
				}}
				r := b.NewRouter()
				pv := provide(t, b, shared, "p", "", src)
				sessions := 1
				if shared {
					sessions = 10
				}
				turns := make([][]answer, sessions)
				var wg sync.WaitGroup
				for i := range sessions {
					id := fmt.Sprint("s", i)
					open(t, r, id, actors.Provider{Name: "p", Source: pv.Source})
					wg.Go(func() { turns[i] = turn(r, id, "p") })
				}
				wg.Wait()
				p := b.Policy()
				nextTry := p.RefreshTimeout + p.TimeoutBackoff(p.TimeoutFailures, 0.5) // 30 s + 12 s
				for i, answers := range turns {
					if len(answers) != cliRequests {
						t.Fatalf("session %d: %d answers, want %d errors", i, len(answers), cliRequests)
					}
					first := answers[0]
					want := fmt.Sprintf(`session "s%d": provider "p": `, i)
					if shared {
						want += `shared credential "p": `
					}
					want += "timed out: credential did not answer within 30s"
					if !errors.Is(first.err, actors.ErrTimeout) || first.err.Error() != want || first.waited != 30*time.Second {
						t.Fatalf("session %d request 1: %v after %s, want %q after 30s", i, first.err, first.waited, want)
					}
					for n, a := range answers[1:] {
						wantAt := 30*time.Second + time.Duration(n+1)*cliPause
						next := nextTry - wantAt
						wantMsg := fmt.Sprintf("%s; next try in %s (at %s)", want, roundSecond(next), bubbleStart.Add(nextTry).Format("15:04:05 UTC"))
						if a.waited != 0 || a.at != wantAt || !errors.Is(a.err, actors.ErrBackoff) || !errors.Is(a.err, actors.ErrTimeout) || a.err.Error() != wantMsg {
							t.Fatalf("session %d request %d at +%s: %v after %s, want at once %q", i, n+2, a.at, a.err, a.waited, wantMsg)
						}
					}
				}
				if n := src.calls.Load(); n != 1 {
					t.Fatalf("%d credential calls during the turn, want 1", n)
				}
				// The next turn, after the back-off, calls the credential again.
				time.Sleep(nextTry - elapsed())
				if _, err := acquire(r, "s0", "p"); !errors.Is(err, actors.ErrTimeout) || errors.Is(err, actors.ErrBackoff) {
					t.Fatalf("after the back-off: %v, want a new timeout", err)
				}
				if n := src.calls.Load(); n != 2 {
					t.Fatalf("%d credential calls after the back-off, want 2", n)
				}
				close(release)
				closeBroker(t, b)
			})
		})
	}
}

// A credential that answers with an error: every request gets it at once,
// with the credential's own words. Failing fast costs nothing to retry, so
// the back-off window is short (about 1 s, then a quarter to a half of how
// long the credential has been failing): a retry that comes after it calls
// the credential again, one inside it hears when the next try is.
func TestRetryScheduleFailingCredential(t *testing.T) {
	sharedOrNot(t, func(t *testing.T, shared bool) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src := &fakeSource{fn: func(context.Context, int64, tokens.Request) (tokens.Token, error) {
			return tokens.Token{}, errors.New("identity endpoint answered 500 Internal Server Error")
		}}
		r := b.NewRouter()
		open(t, r, "s", provide(t, b, shared, "p", "", src))
		answers := turn(r, "s", "p")
		want := `session "s": provider "p": `
		if shared {
			want += `shared credential "p": `
		}
		want += "credential failed: identity endpoint answered 500 Internal Server Error"
		// The windows with draws of 0.5: 0.75 s after the calls at 0, 1
		// and 2 s, 1.125 s after the one at 3 s; the request at 4 s falls
		// inside it.
		calls := []bool{true, true, true, true, false, true}
		nextTry := 3*time.Second + 1125*time.Millisecond
		for n, a := range answers {
			wantMsg, kind := want, actors.ErrCredential
			if !calls[n] {
				kind = actors.ErrBackoff
				wantMsg = fmt.Sprintf("%s; next try in %s (at %s)", want, (nextTry - a.at).Round(10*time.Millisecond), bubbleStart.Add(nextTry).Format("15:04:05 UTC"))
			} else if errors.Is(a.err, actors.ErrBackoff) {
				t.Fatalf("request %d at +%s: %v, want a new call", n+1, a.at, a.err)
			}
			if a.waited != 0 || a.at != time.Duration(n)*cliPause || !errors.Is(a.err, kind) || !errors.Is(a.err, actors.ErrCredential) || a.err.Error() != wantMsg {
				t.Fatalf("request %d at +%s: %v after %s, want at once %q", n+1, a.at, a.err, a.waited, wantMsg)
			}
		}
		if len(answers) != cliRequests || src.calls.Load() != 5 {
			t.Fatalf("%d answers, %d credential calls; want %d errors from 5 calls", len(answers), src.calls.Load(), cliRequests)
		}
	})
}

// 50 tenants, each with a credential of its own, whose identity endpoint
// fails fast from 1 s to 4 s, each asking every 500 ms: all are served
// again by 6 s. (A hung endpoint keeps the back-off floor: see
// TestRetryScheduleHungCredential.)
func TestShortOutageEndsSoonAfterIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{Rand: lockedRand(7)})
		defer closeBroker(t, b)
		start := time.Now()
		down := func() bool {
			e := time.Since(start)
			return e >= time.Second && e < 4*time.Second
		}
		r := b.NewRouter()
		const tenants = 50
		var failures atomic.Int64
		for i := range tenants {
			src := &fakeSource{fn: func(_ context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
				if down() {
					failures.Add(1)
					return tokens.Token{}, errors.New("identity endpoint answered 500")
				}
				// Short-lived tokens: each request after the first second
				// needs a new one, so the outage reaches every tenant.
				return tokens.Token{Value: value(fmt.Sprint("t", i), int(n)), ExpiresOn: time.Now().Add(61 * time.Second)}, nil
			}}
			open(t, r, fmt.Sprint("s", i), actors.Provider{Name: "p", Source: src})
		}
		// A 61 s token is below the 60 s floor one second later: every
		// request calls the credential unless a back-off holds it.
		served := make([]time.Duration, tenants) // the first success after a failure
		var wg sync.WaitGroup
		for i := range tenants {
			wg.Go(func() {
				time.Sleep(time.Duration(i) * 10 * time.Millisecond) // out of step
				failed := false
				for time.Since(start) < 8*time.Second {
					_, err := acquire(r, fmt.Sprint("s", i), "p")
					switch {
					case err != nil:
						failed = true
					case failed && served[i] == 0:
						served[i] = time.Since(start)
					}
					time.Sleep(500 * time.Millisecond)
				}
			})
		}
		wg.Wait()
		if i := slices.Index(served, 0); i >= 0 {
			t.Fatalf("tenant %d not served again by 8 s (%d failed credential calls in all)", i, failures.Load())
		}
		first, last := slices.Min(served), slices.Max(served)
		t.Logf("outage from 1 s to 4 s: %d failed credential calls; tenants served again from %s to %s", failures.Load(), first, last)
		if first < 4*time.Second || last > 6*time.Second {
			t.Fatalf("tenants served again from %s to %s, want every one of them between 4 and 6 s", first, last)
		}
	})
}

func roundSecond(d time.Duration) time.Duration { return d.Round(time.Second) }

// After Broker.Close a runtime's retries hear that the broker closed, not
// that their session is unknown (which points at the wrong fix).
func TestBrokerClosedExplainsItself(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		r := b.NewRouter()
		open(t, r, "s", actors.Provider{Name: "p", Source: lived("t", time.Hour)})
		mustAcquire(t, r, "s", "p")
		closeBroker(t, b)
		_, err := acquire(r, "s", "p")
		if !errors.Is(err, actors.ErrClosed) || errors.Is(err, actors.ErrUnknownSession) || err.Error() != `session "s": provider "p": broker closed` {
			t.Fatalf("after Close: %v", err)
		}
		if err := r.Open("s2", []actors.Provider{{Name: "p", Source: lived("t", time.Hour)}}); !errors.Is(err, actors.ErrClosed) || !strings.Contains(err.Error(), "broker closed") {
			t.Fatalf("Open after Close: %v", err)
		}
		if _, err := b.NewCredential("c", "", lived("t", time.Hour)); !errors.Is(err, actors.ErrClosed) || !strings.Contains(err.Error(), "broker closed") {
			t.Fatalf("NewCredential after Close: %v", err)
		}
	})
}

// A Source whose error quotes a token the broker served (an opaque one, no
// JWT or "Bearer" shape to give it away) does not leak it: not in the
// reply, the logs, the spans or the metrics.
func TestServedTokenQuotedInErrorIsScrubbed(t *testing.T) {
	sharedOrNot(t, func(t *testing.T, shared bool) {
		c := capture.New()
		defer c.Close()
		b := newBroker(t, actors.Options{Logger: c.Logger, TracerProvider: c.TracerProvider, MeterProvider: c.MeterProvider})
		defer closeBroker(t, b)
		const served = "opaque0token0value0k7Qm2"
		src := &fakeSource{fn: func(_ context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
			if n == 1 {
				return tokens.Token{Value: served, ExpiresOn: time.Now().Add(time.Hour)}, nil
			}
			return tokens.Token{}, fmt.Errorf("upstream revoked token %s", served)
		}}
		r := b.NewRouter()
		open(t, r, "s", provide(t, b, shared, "p", "", src))
		mustAcquire(t, r, "s", "p")
		if err := r.Invalidate("s", "p"); err != nil {
			t.Fatal(err)
		}
		_, err := acquire(r, "s", "p")
		if !errors.Is(err, actors.ErrCredential) || !strings.Contains(err.Error(), "upstream revoked token "+tokens.Redacted) {
			t.Fatalf("err = %q, want the credential's message with the token cut out", strings.ReplaceAll(fmt.Sprint(err), served, "<SERVED>"))
		}
		c.Add("reply", err.Error())
		found, ferr := c.Find(context.Background(), map[string]string{"served token": served})
		if ferr != nil || len(found) > 0 {
			t.Fatalf("served token found: %v %v", found, ferr)
		}
		if !strings.Contains(c.Logs(), "upstream revoked token") {
			t.Fatal("the failure was not logged")
		}
	})
}

// A Source handing out expired tokens makes every request call it: that
// is logged as a warning, at most once a minute per provider.
func TestExpiredTokenWarnedRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := capture.New()
		defer c.Close()
		b := newBroker(t, actors.Options{Logger: c.Logger})
		defer closeBroker(t, b)
		src := &fakeSource{fn: func(_ context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
			return tokens.Token{Value: value("old", int(n)), ExpiresOn: time.Now().Add(-time.Minute)}, nil
		}}
		r := b.NewRouter()
		open(t, r, "s", actors.Provider{Name: "p", Source: src})
		for range 150 { // 150 requests over 150 s
			mustAcquire(t, r, "s", "p")
			time.Sleep(time.Second)
		}
		if src.calls.Load() != 150 {
			t.Fatalf("%d calls for 150 requests", src.calls.Load())
		}
		// Text and JSON renderings: two lines per record.
		if n := strings.Count(c.Logs(), "returned an expired token") / 2; n != 3 {
			t.Fatalf("%d warnings over 150 s, want 3 (at 0, 60 and 120 s)", n)
		}
	})
}
