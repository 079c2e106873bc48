package actors_test

// Token lifecycle tests through the public API (Broker, Router,
// Credential). Each runs in a testing/synctest bubble: time is fake, so
// hours of token lifetimes pass in microseconds of real time and no test
// sleeps. The broker is created and closed inside the bubble, so its actor
// system, timers and credential calls all run on the fake clock.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// fakeSource counts its calls and answers with fn.
type fakeSource struct {
	calls atomic.Int64
	fn    func(ctx context.Context, n int64, req tokens.Request) (tokens.Token, error)
}

func (s *fakeSource) Token(ctx context.Context, req tokens.Request) (tokens.Token, error) {
	return s.fn(ctx, s.calls.Add(1), req)
}

// lived returns a source of tokens "<prefix>-<n>" valid for life from the
// moment they are issued.
func lived(prefix string, life time.Duration) *fakeSource {
	return &fakeSource{fn: func(_ context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
		return tokens.Token{Value: fmt.Sprintf("%s-%d", prefix, n), ExpiresOn: time.Now().Add(life)}, nil
	}}
}

func value(prefix string, n int) string { return fmt.Sprintf("%s-%d", prefix, n) }

// half is a deterministic random source: jitter and back-off at half their
// span, so refresh points and retry counts are exact.
func half() float64 { return 0.5 }

// lockedRand is a seeded, goroutine-safe draw for tests that want spread.
func lockedRand(seed uint64) func() float64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed+1))
	return func() float64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Float64()
	}
}

func newBroker(t *testing.T, opts actors.Options) *actors.Broker {
	t.Helper()
	if opts.Rand == nil {
		opts.Rand = half
	}
	return actors.NewBroker(opts)
}

// closeBroker closes b inside a bubble. protoactor-go starts a goroutine
// that waits 1 s (its dead-letter throttle period) after a message reaches
// a stopped actor, which Close may cause; the bubble may only end once it
// has, so let that second pass (fake time: instantly).
func closeBroker(t *testing.T, b *actors.Broker) {
	t.Helper()
	if err := b.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	time.Sleep(2 * time.Second)
}

func open(t *testing.T, r *actors.Router, session string, providers ...actors.Provider) {
	t.Helper()
	if err := r.Open(session, providers); err != nil {
		t.Fatalf("Open(%q): %v", session, err)
	}
}

func acquire(r *actors.Router, session, provider string) (actors.Grant, error) {
	return r.Acquire(context.Background(), tokens.Request{SessionID: session, ProviderName: provider})
}

func mustAcquire(t *testing.T, r *actors.Router, session, provider string) actors.Grant {
	t.Helper()
	g, err := acquire(r, session, provider)
	if err != nil {
		t.Fatalf("Acquire(%q, %q) at +%s: %v", session, provider, elapsed(), err)
	}
	return g
}

var bubbleStart = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC) // synctest's epoch

func elapsed() time.Duration { return time.Since(bubbleStart) }

// fp shows a token in a failure message without revealing it (the test
// values are not secret, but the habit is the rule).
func fp(v string) string { return tokens.Fingerprint(v) }

// sharedOrNot runs f once with a per-session provider and once with a
// shared Credential, since the two take different paths to the actor.
func sharedOrNot(t *testing.T, f func(t *testing.T, shared bool)) {
	for _, shared := range []bool{false, true} {
		name := "per-session"
		if shared {
			name = "shared"
		}
		t.Run(name, func(t *testing.T) { synctest.Test(t, func(t *testing.T) { f(t, shared) }) })
	}
}

// credential is b.NewCredential, failing the test on error.
func credential(t *testing.T, b *actors.Broker, name, scope string, src tokens.Source) *actors.Credential {
	t.Helper()
	c, err := b.NewCredential(name, scope, src)
	if err != nil {
		t.Fatalf("NewCredential(%q): %v", name, err)
	}
	return c
}

// provide returns the provider declaration for src, wrapped in a new
// Credential when shared.
func provide(t *testing.T, b *actors.Broker, shared bool, name, scope string, src tokens.Source) actors.Provider {
	t.Helper()
	if shared {
		return actors.Provider{Name: name, Scope: scope, Source: credential(t, b, name, scope, src)}
	}
	return actors.Provider{Name: name, Scope: scope, Source: src}
}

// flaky returns a source of tokens "t-<n>" valid for life that fails with
// msg while down is set; failed counts those failures.
func flaky(life time.Duration, msg string) (src *fakeSource, down *atomic.Bool, failed *atomic.Int64) {
	down, failed = new(atomic.Bool), new(atomic.Int64)
	src = &fakeSource{fn: func(_ context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
		if down.Load() {
			failed.Add(1)
			return tokens.Token{}, errors.New(msg)
		}
		return tokens.Token{Value: value("t", int(n)), ExpiresOn: time.Now().Add(life)}, nil
	}}
	return src, down, failed
}

// 1,000 sessions × 10 concurrent cold requests on one shared credential:
// one credential call serves all 10,000.
func TestColdStampedeOneCredentialCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		gate := make(chan struct{})
		src := &fakeSource{fn: func(ctx context.Context, n int64, req tokens.Request) (tokens.Token, error) {
			<-gate // hold the refresh until every request is waiting
			return tokens.Token{Value: value("mi", int(n)), ExpiresOn: time.Now().Add(time.Hour)}, nil
		}}
		cred, err := b.NewCredential("mi", "api://scope/.default", src)
		if err != nil {
			t.Fatal(err)
		}
		// Four connections, 250 sessions each: sharing crosses connections.
		const sessions, perSession = 1000, 10
		routers := make([]*actors.Router, 4)
		for i := range routers {
			routers[i] = b.NewRouter()
		}
		for i := range sessions {
			open(t, routers[i%4], fmt.Sprint("s", i), actors.Provider{Name: "mi", Scope: "api://scope/.default", Source: cred})
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		outcomes := map[actors.Outcome]int{}
		var wrong, failed atomic.Int64
		for i := range sessions {
			for range perSession {
				wg.Go(func() {
					g, err := routers[i%4].Acquire(context.Background(), tokens.Request{SessionID: fmt.Sprint("s", i), ProviderName: "mi", Scope: "api://scope/.default"})
					if err != nil {
						failed.Add(1)
						return
					}
					if g.Token.Value != value("mi", 1) {
						wrong.Add(1)
					}
					mu.Lock()
					outcomes[g.Outcome]++
					mu.Unlock()
				})
			}
		}
		synctest.Wait() // every request is now waiting on the one refresh
		if n := src.calls.Load(); n != 1 {
			close(gate)
			wg.Wait()
			t.Fatalf("%d credential calls in flight for %d cold requests (%d failed), want 1", n, sessions*perSession, failed.Load())
		}
		close(gate)
		wg.Wait()
		if n := src.calls.Load(); n != 1 {
			t.Fatalf("%d credential calls for %d cold requests, want exactly 1", n, sessions*perSession)
		}
		if failed.Load() != 0 || wrong.Load() != 0 {
			t.Fatalf("%d requests failed, %d got another token", failed.Load(), wrong.Load())
		}
		if outcomes[actors.OutcomeRefreshed] != 1 || outcomes[actors.OutcomeCoalesced] != sessions*perSession-1 {
			t.Fatalf("outcomes %v, want 1 refreshed and %d coalesced", outcomes, sessions*perSession-1)
		}
		// Warm: every later request is a cache hit, still one call.
		for i := range sessions {
			if g := mustAcquire(t, routers[i%4], fmt.Sprint("s", i), "mi"); g.Outcome != actors.OutcomeHit {
				t.Fatalf("warm request outcome %v", g.Outcome)
			}
		}
		if n := src.calls.Load(); n != 1 {
			t.Fatalf("%d credential calls after warm requests", n)
		}
	})
}

// Over hours of simulated traffic with irregular gaps, slow and sometimes
// failing refreshes, no request is ever served a token with less than the
// 60 s floor left.
func TestNeverServesBelowFloor(t *testing.T) {
	sharedOrNot(t, func(t *testing.T, shared bool) {
		b := newBroker(t, actors.Options{Rand: lockedRand(9)})
		defer closeBroker(t, b)
		pol := b.Policy()
		src := &fakeSource{fn: func(ctx context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
			// A slow credential: 5 s per call, every fourth call fails.
			select {
			case <-time.After(5 * time.Second):
			case <-ctx.Done():
				return tokens.Token{}, ctx.Err()
			}
			if n%4 == 0 {
				return tokens.Token{}, errors.New("identity endpoint: 503")
			}
			// Lifetimes from 3 to 12 min: refresh lead of 1.5 to 5 min.
			life := time.Duration(3+n%10) * time.Minute
			return tokens.Token{Value: value("t", int(n)), ExpiresOn: time.Now().Add(life)}, nil
		}}
		r := b.NewRouter()
		pv := provide(t, b, shared, "p", "", src)
		open(t, r, "a", pv)
		open(t, r, "b", pv) // a second session, same source (shared or not)
		rnd := rand.New(rand.NewPCG(5, 6))
		end := time.Now().Add(12 * time.Hour)
		var served, failures int
		for time.Now().Before(end) {
			var wg sync.WaitGroup
			var mu sync.Mutex
			for i := range 1 + rnd.IntN(4) {
				wg.Go(func() {
					g, err := acquire(r, []string{"a", "b"}[i%2], "p")
					now := time.Now()
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						failures++
						return
					}
					served++
					if left := g.Token.ExpiresOn.Sub(now); left < pol.Floor {
						t.Errorf("+%s: served %s with %s left (outcome %v), floor %s", elapsed(), fp(g.Token.Value), left, g.Outcome, pol.Floor)
					}
				})
			}
			wg.Wait()
			// Gaps from 0 to 20 min: some requests land before the refresh
			// point, some between it and the floor, some past expiry.
			gap := time.Duration(rnd.Int64N(int64(20 * time.Minute)))
			if rnd.IntN(3) > 0 {
				gap /= 60
			}
			if rnd.IntN(5) == 0 {
				gap = 0 // back-to-back requests: refreshes in flight get joined
			}
			time.Sleep(gap)
		}
		if served < 300 {
			t.Fatalf("only %d tokens served (%d failures): the test exercised too little", served, failures)
		}
		t.Logf("served %d, failed %d, credential calls %d", served, failures, src.calls.Load())
	})
}

// Past the refresh point, a still-valid token is served at once while the
// refresh runs in the background, however long the credential takes. The
// refresh starts either from the provider's timer (it was used since the
// token was obtained) or from the first request past the refresh point.
func TestProactiveRefreshNeverBlocksCallers(t *testing.T) {
	for _, trigger := range []string{"timer", "request"} {
		t.Run(trigger, func(t *testing.T) {
			sharedOrNot(t, func(t *testing.T, shared bool) {
				testProactiveRefresh(t, shared, trigger == "timer")
			})
		})
	}
}

func testProactiveRefresh(t *testing.T, shared, timer bool) {
	b := newBroker(t, actors.Options{})
	defer closeBroker(t, b)
	gate := make(chan struct{})
	release := sync.OnceFunc(func() { close(gate) })
	defer release() // before closeBroker, also when the test fails
	src := &fakeSource{fn: func(ctx context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
		if n == 2 {
			<-gate // the proactive refresh hangs until released
		}
		return tokens.Token{Value: value("t", int(n)), ExpiresOn: time.Now().Add(time.Hour)}, nil
	}}
	r := b.NewRouter()
	open(t, r, "s", provide(t, b, shared, "p", "", src))
	open(t, r, "s2", provide(t, b, false, "p", "", tokens.Static(tokens.Token{Value: "other", ExpiresOn: time.Now().Add(time.Hour)})))
	first := mustAcquire(t, r, "s", "p")

	// 1 h token: lead 15 min, jitter 90 s × 0.5: refresh point at 44:15.
	time.Sleep(30 * time.Minute)
	if timer {
		mustAcquire(t, r, "s", "p") // in use: the timer will refresh
	}
	time.Sleep(14 * time.Minute)
	synctest.Wait()
	if n := src.calls.Load(); n != 1 {
		t.Fatalf("refreshed before the refresh point: %d calls", n)
	}
	// 44:15, the refresh point. (The refresh may hang for up to the
	// policy's 30 s RefreshTimeout before it counts as failed and is
	// retried, so everything below happens at this instant.)
	time.Sleep(15 * time.Second)
	synctest.Wait()
	want := int64(1) // unused since the token came: the timer did nothing
	if timer {
		want = 2
	}
	if n := src.calls.Load(); n != want {
		t.Fatalf("%d credential calls past the refresh point, want %d", n, want)
	}
	// The refresh is blocked (or about to start); 200 concurrent callers
	// get the valid token without waiting a (fake) nanosecond.
	start := time.Now()
	var wg sync.WaitGroup
	var slow, wrong atomic.Int64
	for range 200 {
		wg.Go(func() {
			g, err := acquire(r, "s", "p")
			if err != nil || g.Token != first.Token || g.Outcome != actors.OutcomeHit {
				wrong.Add(1)
			}
			if time.Since(start) != 0 {
				slow.Add(1)
			}
		})
	}
	wg.Wait()
	if slow.Load() != 0 || wrong.Load() != 0 {
		t.Fatalf("while refreshing: %d callers waited, %d did not get the cached token at once", slow.Load(), wrong.Load())
	}
	synctest.Wait()
	if n := src.calls.Load(); n != 2 {
		t.Fatalf("%d credential calls, want 2: one refresh, whatever the number of callers", n)
	}
	release()
	synctest.Wait()
	g := mustAcquire(t, r, "s", "p")
	if g.Token.Value != value("t", 2) || g.Outcome != actors.OutcomeHit {
		t.Fatalf("after the refresh: %s (%v), want the refreshed token as a hit", fp(g.Token.Value), g.Outcome)
	}
	if g := mustAcquire(t, r, "s2", "p"); g.Token.Value != "other" {
		t.Fatal("another session's provider of the same name served the wrong token")
	}
}

// A background refresh that fails leaves the valid token in service; the
// failure only shows once the token reaches the floor.
func TestRefreshErrorKeepsServingValidToken(t *testing.T) {
	sharedOrNot(t, func(t *testing.T, shared bool) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src, down, failed := flaky(time.Hour, "identity endpoint unavailable")
		r := b.NewRouter()
		open(t, r, "s", provide(t, b, shared, "p", "", src))
		first := mustAcquire(t, r, "s", "p")
		down.Store(true)
		// Every 10 s until the floor (59:00): the cached token, never an error.
		for time.Sleep(40 * time.Minute); elapsed() < 59*time.Minute; time.Sleep(10 * time.Second) {
			g := mustAcquire(t, r, "s", "p")
			if g.Token != first.Token {
				t.Fatalf("+%s: served %s, want the still-valid cached token", elapsed(), fp(g.Token.Value))
			}
		}
		if n := failed.Load(); n < 5 {
			t.Fatalf("only %d background retries during 15 min of outage", n)
		}
		// At the floor the token is no longer served: an error instead.
		_, err := acquire(r, "s", "p")
		if err == nil || !(errors.Is(err, actors.ErrBackoff) || errors.Is(err, actors.ErrCredential)) {
			t.Fatalf("at the floor with the credential down: err = %v, want a credential or back-off error", err)
		}
		if !strings.Contains(err.Error(), "identity endpoint unavailable") {
			t.Fatalf("error does not carry the credential's message: %v", err)
		}
		// Recovery: within the back-off cap a caller gets a fresh token.
		down.Store(false)
		time.Sleep(b.Policy().BackoffMax)
		g := mustAcquire(t, r, "s", "p")
		if g.Token == first.Token || g.Token.Value == "" {
			t.Fatal("no fresh token after recovery")
		}
	})
}

// backoffCalls is how many calls a credential failing fast gets in span
// when the first call is at 0 and each retry is made at the first request
// (one every step; 0: at once) after the window ErrorBackoff(failing for,
// 0.5).
func backoffCalls(p tokens.Policy, span, step time.Duration) int {
	calls, at := 0, time.Duration(0)
	for at < span {
		calls++
		at += p.ErrorBackoff(at, 0.5)
		if step > 0 {
			at = (at + step - 1) / step * step
		}
	}
	return calls
}

// A broken identity endpoint is not hammered: 10 callers asking every
// 250 ms for 10 minutes cause only the calls the back-off allows, and get
// fast errors meanwhile.
func TestBackoffCapsCallsDuringOutage(t *testing.T) {
	sharedOrNot(t, func(t *testing.T, shared bool) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src := &fakeSource{fn: func(context.Context, int64, tokens.Request) (tokens.Token, error) {
			return tokens.Token{}, errors.New("identity endpoint: 500")
		}}
		r := b.NewRouter()
		open(t, r, "s", provide(t, b, shared, "p", "", src))
		const span, step, callers = 10 * time.Minute, 250 * time.Millisecond, 10
		var requests, backoffErrs, credErrs atomic.Int64
		for start := time.Now(); time.Since(start) < span; time.Sleep(step) {
			var wg sync.WaitGroup
			for range callers {
				wg.Go(func() {
					requests.Add(1)
					t0 := time.Now()
					_, err := acquire(r, "s", "p")
					switch {
					case err == nil:
						t.Error("a failing credential served a token")
					case errors.Is(err, actors.ErrBackoff):
						backoffErrs.Add(1)
						if !strings.Contains(err.Error(), "next try in") {
							t.Errorf("back-off error does not say when the next try is: %v", err)
						}
					case errors.Is(err, actors.ErrCredential):
						credErrs.Add(1)
					default:
						t.Errorf("unexpected error: %v", err)
					}
					if time.Since(t0) != 0 {
						t.Errorf("a request during the outage waited %s", time.Since(t0))
					}
				})
			}
			wg.Wait()
		}
		want := backoffCalls(b.Policy(), span, step) // 0.75 s apart, growing with the outage to 45 s
		got := int(src.calls.Load())
		t.Logf("%d requests, %d credential calls (back-off allows %d), %d back-off errors", requests.Load(), got, want, backoffErrs.Load())
		if got > want || got < want-1 {
			t.Fatalf("%d credential calls in %s of outage, want %d (back-off following the outage, up to 60 s)", got, span, want)
		}
		if got > 30 {
			t.Fatalf("%d credential calls for %d requests", got, requests.Load())
		}
		if backoffErrs.Load() < requests.Load()*9/10 {
			t.Fatalf("only %d of %d requests got a fast back-off error", backoffErrs.Load(), requests.Load())
		}
	})
}

// With a valid token cached and the credential down, background retries
// are also paced by the back-off, and every request is served.
func TestBackoffCapsBackgroundRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src, down, outageCalls := flaky(2*time.Hour, "down")
		cred := credential(t, b, "p", "", src)
		r := b.NewRouter()
		open(t, r, "s", actors.Provider{Name: "p", Source: cred})
		first := mustAcquire(t, r, "s", "p")
		down.Store(true)
		// 2 h token: half life, jitter 5 min × 0.5: refresh point 57:30.
		const outage = 60 * time.Minute
		for elapsed() < 57*time.Minute+30*time.Second+outage-time.Second {
			time.Sleep(time.Second)
			if g := mustAcquire(t, r, "s", "p"); g.Token != first.Token {
				t.Fatalf("+%s: not the cached token", elapsed())
			}
		}
		synctest.Wait()
		want := backoffCalls(b.Policy(), outage, 0)
		if got := int(outageCalls.Load()); got > want || got < want-1 {
			t.Fatalf("%d background calls during a %s outage, want %d", got, outage, want)
		}
	})
}

// A caller that gives up does not cancel the refresh others are waiting
// for: the credential's context stays alive and the others get the token.
func TestCallerCancellationDoesNotCancelSharedRefresh(t *testing.T) {
	sharedOrNot(t, func(t *testing.T, shared bool) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		var ctxErr atomic.Value
		src := &fakeSource{fn: func(ctx context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
			select {
			case <-time.After(10 * time.Second): // a slow credential
			case <-ctx.Done():
			}
			ctxErr.Store(fmt.Sprint(ctx.Err()))
			if ctx.Err() != nil {
				return tokens.Token{}, ctx.Err()
			}
			return tokens.Token{Value: value("t", int(n)), ExpiresOn: time.Now().Add(time.Hour)}, nil
		}}
		r := b.NewRouter()
		pv := provide(t, b, shared, "p", "", src)
		open(t, r, "s", pv)

		cancelled, cancel := context.WithCancel(context.Background())
		impatient, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel2()
		errs := make(chan error, 2)
		// The caller that will cancel comes first, so the refresh is
		// started on its behalf.
		go func() {
			_, err := r.Acquire(cancelled, tokens.Request{SessionID: "s", ProviderName: "p"})
			errs <- err
		}()
		synctest.Wait()
		if n := src.calls.Load(); n != 1 {
			t.Fatalf("%d credential calls after the first request, want 1", n)
		}
		go func() {
			_, err := r.Acquire(impatient, tokens.Request{SessionID: "s", ProviderName: "p"})
			errs <- err
		}()
		patient := make(chan actors.Grant, 1)
		go func() {
			g, err := acquire(r, "s", "p")
			if err != nil {
				t.Errorf("patient caller: %v", err)
			}
			patient <- g
		}()
		synctest.Wait()
		cancel()
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled caller: err = %v, want context.Canceled", err)
		}
		if err := <-errs; !errors.Is(err, actors.ErrTimeout) || elapsed() != 2*time.Second {
			t.Fatalf("caller with a 2 s deadline: err = %v at +%s, want ErrTimeout at +2s", err, elapsed())
		}
		g := <-patient
		if g.Token.Value != value("t", 1) || elapsed() != 10*time.Second {
			t.Fatalf("patient caller got %s at +%s, want the first token at +10s", fp(g.Token.Value), elapsed())
		}
		if got := ctxErr.Load(); got != "<nil>" {
			t.Fatalf("the credential call's context ended: %v", got)
		}
		if n := src.calls.Load(); n != 1 {
			t.Fatalf("%d credential calls, want 1", n)
		}
	})
}

// A provider nobody uses stops refreshing; one in use keeps its token
// fresh in the background so that no request ever waits.
func TestIdleProvidersStopRefreshing(t *testing.T) {
	sharedOrNot(t, func(t *testing.T, shared bool) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		idle, busy := lived("idle", time.Hour), lived("busy", time.Hour)
		r := b.NewRouter()
		open(t, r, "s", provide(t, b, shared, "idle", "", idle), provide(t, b, shared, "busy", "", busy))
		mustAcquire(t, r, "s", "idle")
		mustAcquire(t, r, "s", "busy")
		for range 60 { // ten hours, the busy one used every 10 minutes
			time.Sleep(10 * time.Minute)
			if g := mustAcquire(t, r, "s", "busy"); g.Outcome != actors.OutcomeHit {
				t.Fatalf("+%s: a provider in regular use made its caller wait (outcome %v)", elapsed(), g.Outcome)
			}
		}
		synctest.Wait()
		if n := idle.calls.Load(); n != 1 {
			t.Fatalf("idle provider: %d credential calls in 10 h, want 1", n)
		}
		// 1 h tokens refreshed at 44:15: about 13 in ten hours.
		if n := busy.calls.Load(); n < 12 || n > 15 {
			t.Fatalf("busy provider: %d credential calls in 10 h, want about 13", n)
		}
		// Used again after the idle spell: it refreshes on demand.
		g := mustAcquire(t, r, "s", "idle")
		if g.Token.Value != value("idle", 2) || g.Outcome != actors.OutcomeRefreshed {
			t.Fatalf("idle provider used again: %s (%v)", fp(g.Token.Value), g.Outcome)
		}
	})
}

// Closing the last session that uses a Credential stops its background
// refreshes, even though it was in use until then.
func TestClosingLastSessionStopsCredentialRefresh(t *testing.T) {
	for _, closeAll := range []bool{false, true} {
		t.Run(fmt.Sprint("closeAll=", closeAll), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBroker(t, actors.Options{})
				defer closeBroker(t, b)
				src := lived("t", time.Hour)
				cred := credential(t, b, "p", "", src)
				r := b.NewRouter()
				open(t, r, "a", actors.Provider{Name: "p", Source: cred})
				open(t, r, "b", actors.Provider{Name: "p", Source: cred})
				mustAcquire(t, r, "a", "p")
				time.Sleep(30 * time.Minute)
				mustAcquire(t, r, "b", "p") // in use since the token was obtained
				if err := r.CloseSession("a"); err != nil {
					t.Fatal(err)
				}
				if closeAll {
					if err := r.CloseSession("b"); err != nil {
						t.Fatal(err)
					}
				}
				time.Sleep(10 * time.Hour)
				synctest.Wait()
				want := int64(2) // the refresh at 44:15 for the open session; then idle
				if closeAll {
					want = 1
				}
				if n := src.calls.Load(); n != want {
					t.Fatalf("%d credential calls, want %d", n, want)
				}
				// The credential itself lives on: a new session uses it.
				open(t, r, "c", actors.Provider{Name: "p", Source: cred})
				if g := mustAcquire(t, r, "c", "p"); g.Token.Value != value("t", int(want)+1) {
					t.Fatalf("new session got %s", fp(g.Token.Value))
				}
			})
		})
	}
}

// Closing the last session while a background refresh is failing stops
// the retries too: the back-off timer the failure arms must not keep a
// credential nobody uses busy until its token expires.
func TestClosingLastSessionStopsRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src := &fakeSource{fn: func(ctx context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
			if n == 1 {
				return tokens.Token{Value: value("t", 1), ExpiresOn: time.Now().Add(time.Hour)}, nil
			}
			time.Sleep(5 * time.Second) // the identity endpoint is slow, then fails
			return tokens.Token{}, errors.New("down")
		}}
		cred := credential(t, b, "p", "", src)
		r := b.NewRouter()
		open(t, r, "s", actors.Provider{Name: "p", Source: cred})
		mustAcquire(t, r, "s", "p")
		time.Sleep(30 * time.Minute)
		mustAcquire(t, r, "s", "p")
		time.Sleep(14*time.Minute + 17*time.Second) // 44:17: the refresh from 44:15 is running
		synctest.Wait()
		if n := src.calls.Load(); n != 2 {
			t.Fatalf("%d calls at 44:17, want 2 (the background refresh in flight)", n)
		}
		if err := r.CloseSession("s"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		if n := src.calls.Load(); n != 2 {
			t.Fatalf("%d credential calls after the last session closed, want 2: retries went on", n)
		}
	})
}

// Closing a Credential fails the sessions still using it at once, and no
// new session can use it.
func TestClosedCredential(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src := lived("t", time.Hour)
		cred := credential(t, b, "p", "", src)
		r := b.NewRouter()
		open(t, r, "s", actors.Provider{Name: "p", Source: cred})
		mustAcquire(t, r, "s", "p")
		cred.Close()
		synctest.Wait()
		start := time.Now()
		if _, err := acquire(r, "s", "p"); !errors.Is(err, actors.ErrClosed) || time.Since(start) != 0 {
			t.Fatalf("session using a closed credential: err = %v after %s, want ErrClosed at once", err, time.Since(start))
		}
		if _, err := cred.Token(context.Background(), tokens.Request{}); !errors.Is(err, actors.ErrClosed) {
			t.Fatalf("closed credential's Token: %v", err)
		}
		if err := r.Open("s2", []actors.Provider{{Name: "p", Source: cred}}); !errors.Is(err, actors.ErrClosed) {
			t.Fatalf("Open with a closed credential: %v", err)
		}
		time.Sleep(5 * time.Hour)
		synctest.Wait()
		if n := src.calls.Load(); n != 1 {
			t.Fatalf("a closed credential refreshed: %d calls", n)
		}
	})
}

// Invalidate drops the cached token: the next requests, however many and
// however concurrent, cause exactly one refresh.
func TestInvalidateForcesExactlyOneRefresh(t *testing.T) {
	for _, via := range []string{"router/per-session", "router/shared", "credential"} {
		t.Run(via, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newBroker(t, actors.Options{})
				defer closeBroker(t, b)
				src := lived("t", time.Hour)
				r := b.NewRouter()
				pv := provide(t, b, via != "router/per-session", "p", "", src)
				open(t, r, "s", pv)
				open(t, r, "s2", pv)
				first := mustAcquire(t, r, "s", "p")
				time.Sleep(time.Minute)
				switch via {
				case "credential":
					pv.Source.(*actors.Credential).Invalidate()
				default:
					if err := r.Invalidate("s", "p"); err != nil {
						t.Fatal(err)
					}
				}
				var wg sync.WaitGroup
				var mu sync.Mutex
				got := map[string]int{}
				for range 100 {
					wg.Go(func() {
						g, err := acquire(r, "s", "p")
						if err != nil {
							t.Error(err) // not Fatal: this is not the test's goroutine
							return
						}
						mu.Lock()
						got[g.Token.Value]++
						mu.Unlock()
					})
				}
				wg.Wait()
				if n := src.calls.Load(); n != 2 {
					t.Fatalf("%d credential calls after one invalidation, want 2", n)
				}
				if got[first.Token.Value] != 0 || got[value("t", 2)] != 100 {
					t.Fatalf("after invalidation: %d requests got the dropped token, %d the new one", got[first.Token.Value], got[value("t", 2)])
				}
				// Later requests are hits again.
				for range 10 {
					if g := mustAcquire(t, r, "s", "p"); g.Outcome != actors.OutcomeHit {
						t.Fatalf("outcome %v after the refresh", g.Outcome)
					}
				}
				// The other session: shares the invalidation only if it
				// shares the credential.
				g := mustAcquire(t, r, "s2", "p")
				wantCalls := int64(2)
				if via == "router/per-session" {
					wantCalls = 3 // s2's own provider was cold
				}
				if n := src.calls.Load(); n != wantCalls {
					t.Fatalf("%d calls after s2's request, want %d", n, wantCalls)
				}
				if via != "router/per-session" && g.Token.Value != value("t", 2) {
					t.Fatal("a session sharing the credential did not get the new token")
				}
				if err := r.Invalidate("nope", "p"); !errors.Is(err, actors.ErrUnknownSession) {
					t.Fatalf("Invalidate of an unknown session: %v", err)
				}
				if err := r.Invalidate("s", "nope"); !errors.Is(err, actors.ErrUnknownProvider) {
					t.Fatalf("Invalidate of an unknown provider: %v", err)
				}
			})
		})
	}
}

// A source of bare tokens (no expiry) is called for every request, each
// request getting its own token, concurrent ones included.
func TestBareTokensCallSourceEveryTime(t *testing.T) {
	sharedOrNot(t, func(t *testing.T, shared bool) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		var calls atomic.Int64
		var sessionsSeen sync.Map
		src := tokens.BareFunc(func(_ context.Context, req tokens.Request) (string, error) {
			sessionsSeen.Store(req.SessionID, true)
			return value("bare", int(calls.Add(1))), nil
		})
		r := b.NewRouter()
		open(t, r, "s", provide(t, b, shared, "p", "", src))
		seen := map[string]bool{}
		for range 20 {
			g := mustAcquire(t, r, "s", "p")
			if g.Outcome != actors.OutcomeBare || !g.Token.Bare() {
				t.Fatalf("outcome %v", g.Outcome)
			}
			seen[g.Token.Value] = true
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		for range 30 {
			wg.Go(func() {
				g, err := acquire(r, "s", "p")
				if err != nil {
					t.Error(err) // not Fatal: this is not the test's goroutine
					return
				}
				mu.Lock()
				seen[g.Token.Value] = true
				mu.Unlock()
			})
		}
		wg.Wait()
		if calls.Load() != 50 || len(seen) != 50 {
			t.Fatalf("50 requests: %d calls, %d distinct tokens; want 50 and 50", calls.Load(), len(seen))
		}
		// A per-session source is told the session; a shared one is not.
		_, perSession := sessionsSeen.Load("s")
		_, anonymous := sessionsSeen.Load("")
		if perSession == shared || anonymous != shared {
			t.Fatalf("session ids seen by the source: s=%v empty=%v (shared=%v)", perSession, anonymous, shared)
		}
	})
}

// Whatever the source does — panic, hang with or without honouring its
// context, return an empty or a "Bearer "-prefixed token, or an error
// holding a secret — the caller gets a readable error within its
// deadline and nothing invalid or secret is forwarded.
func TestMisbehavingSources(t *testing.T) {
	const secret = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJl"
	cases := []struct {
		name     string
		fn       func(ctx context.Context, release <-chan struct{}) (tokens.Token, error)
		deadline time.Duration // the caller's; 0: none (the broker's 5 s)
		want     error
		after    time.Duration // when the error arrives, fake time
	}{
		{"panic", func(context.Context, <-chan struct{}) (tokens.Token, error) { panic("boom " + secret) }, 0, actors.ErrCredential, 0},
		{"panic error", func(context.Context, <-chan struct{}) (tokens.Token, error) { panic(errors.New(secret)) }, 0, actors.ErrCredential, 0},
		{"empty", func(context.Context, <-chan struct{}) (tokens.Token, error) {
			return tokens.Token{ExpiresOn: time.Now().Add(time.Hour)}, nil
		}, 0, actors.ErrInvalidToken, 0},
		{"bearer prefix", func(context.Context, <-chan struct{}) (tokens.Token, error) {
			return tokens.Token{Value: "Bearer " + secret, ExpiresOn: time.Now().Add(time.Hour)}, nil
		}, 0, actors.ErrInvalidToken, 0},
		{"bare bearer prefix", func(context.Context, <-chan struct{}) (tokens.Token, error) {
			return tokens.Token{Value: "bearer " + secret}, nil
		}, 0, actors.ErrInvalidToken, 0},
		{"error with secret", func(context.Context, <-chan struct{}) (tokens.Token, error) {
			return tokens.Token{}, fmt.Errorf("token endpoint said: invalid_grant for assertion %s", secret)
		}, 0, actors.ErrCredential, 0},
		{"hang honouring ctx, caller deadline", func(ctx context.Context, _ <-chan struct{}) (tokens.Token, error) {
			<-ctx.Done()
			return tokens.Token{}, ctx.Err()
		}, 2 * time.Second, actors.ErrTimeout, 2 * time.Second},
		{"hang honouring ctx, broker deadline", func(ctx context.Context, _ <-chan struct{}) (tokens.Token, error) {
			<-ctx.Done()
			return tokens.Token{}, ctx.Err()
		}, 0, actors.ErrTimeout, 5 * time.Second},
		{"hang ignoring ctx", func(_ context.Context, release <-chan struct{}) (tokens.Token, error) {
			<-release
			return tokens.Token{}, errors.New("late")
		}, 3 * time.Second, actors.ErrTimeout, 3 * time.Second},
	}
	for _, c := range cases {
		for _, shared := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/shared=%v", c.name, shared), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					b := newBroker(t, actors.Options{RequestTimeout: 5 * time.Second})
					release := make(chan struct{}) // made in the bubble, so waiting on it is durable
					src := &fakeSource{fn: func(ctx context.Context, _ int64, _ tokens.Request) (tokens.Token, error) { return c.fn(ctx, release) }}
					r := b.NewRouter()
					open(t, r, "s", provide(t, b, shared, "p", "", src))
					ctx := context.Background()
					if c.deadline > 0 {
						var cancel context.CancelFunc
						ctx, cancel = context.WithTimeout(ctx, c.deadline)
						defer cancel()
					}
					g, err := r.Acquire(ctx, tokens.Request{SessionID: "s", ProviderName: "p"})
					if !errors.Is(err, c.want) {
						t.Fatalf("err = %v, want %v", err, c.want)
					}
					if g.Token.Value != "" {
						t.Fatal("a token came with the error")
					}
					if elapsed() != c.after {
						t.Fatalf("error after %s, want %s", elapsed(), c.after)
					}
					if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "eyJ") {
						t.Fatalf("error leaks the secret: %s", strings.ReplaceAll(err.Error(), secret, "<SECRET>"))
					}
					if !strings.Contains(err.Error(), `"p"`) {
						t.Fatalf("error does not name the provider: %v", err)
					}
					if c.name == "hang ignoring ctx" {
						close(release) // let the stuck call end before Close
					}
					closeBroker(t, b)
				})
			})
		}
	}
}

// A token that comes from the credential already expired, or below the
// floor, goes to the requests that waited for it (nothing fresher exists)
// but is never cached: the next request asks the credential again.
func TestShortLivedTokensNotCached(t *testing.T) {
	for _, life := range []time.Duration{-time.Second, 30 * time.Second, 59 * time.Second} {
		t.Run(life.String(), func(t *testing.T) {
			sharedOrNot(t, func(t *testing.T, shared bool) {
				b := newBroker(t, actors.Options{})
				defer closeBroker(t, b)
				src := lived("t", life)
				r := b.NewRouter()
				open(t, r, "s", provide(t, b, shared, "p", "", src))
				for i := range 3 {
					g := mustAcquire(t, r, "s", "p")
					if g.Token.Value != value("t", i+1) || g.Outcome != actors.OutcomeRefreshed {
						t.Fatalf("request %d: %s (%v), want a fresh token", i, fp(g.Token.Value), g.Outcome)
					}
				}
			})
		})
	}
}

// Two tenants, each with its own Credential for the same provider name and
// scope, many sessions each, on shared and separate connections: every
// session only ever sees its own tenant's tokens, and each tenant's
// credential is called once.
func TestTenantsNeverSeeEachOthersTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		const scope = "https://cognitiveservices.azure.com/.default"
		srcs := map[string]*fakeSource{}
		creds := map[string]*actors.Credential{}
		var reqs sync.Map
		for _, tenant := range []string{"A", "B"} {
			src := &fakeSource{fn: func(_ context.Context, n int64, req tokens.Request) (tokens.Token, error) {
				reqs.Store(tenant, req)
				return tokens.Token{Value: value(tenant, int(n)), ExpiresOn: time.Now().Add(time.Hour)}, nil
			}}
			c, err := b.NewCredential("model", scope, src)
			if err != nil {
				t.Fatal(err)
			}
			srcs[tenant], creds[tenant] = src, c
		}
		shared, own := b.NewRouter(), map[string]*actors.Router{"A": b.NewRouter(), "B": b.NewRouter()}
		type sess struct {
			r      *actors.Router
			id     string
			tenant string
		}
		var all []sess
		for _, tenant := range []string{"A", "B"} {
			for i := range 100 {
				s := sess{shared, fmt.Sprintf("%s-%d", tenant, i), tenant}
				if i%2 == 1 {
					s.r = own[tenant]
				}
				open(t, s.r, s.id, actors.Provider{Name: "model", Scope: scope, Source: creds[tenant]})
				all = append(all, s)
			}
		}
		var wg sync.WaitGroup
		var leaks, errs atomic.Int64
		for round := range 3 {
			for _, s := range all {
				for range 5 {
					wg.Go(func() {
						g, err := s.r.Acquire(context.Background(), tokens.Request{SessionID: s.id, ProviderName: "model", Scope: scope})
						if err != nil {
							errs.Add(1)
							return
						}
						if !strings.HasPrefix(g.Token.Value, s.tenant+"-") {
							leaks.Add(1)
						}
					})
				}
			}
			wg.Wait()
			if round == 1 {
				creds["A"].Invalidate() // one tenant's invalidation is its own
			}
		}
		if leaks.Load() != 0 || errs.Load() != 0 {
			t.Fatalf("%d cross-tenant tokens, %d errors", leaks.Load(), errs.Load())
		}
		if a, bb := srcs["A"].calls.Load(), srcs["B"].calls.Load(); a != 2 || bb != 1 {
			t.Fatalf("credential calls: A %d (want 2: cold + invalidated), B %d (want 1)", a, bb)
		}
		for _, tenant := range []string{"A", "B"} {
			v, _ := reqs.Load(tenant)
			if req := v.(tokens.Request); req != (tokens.Request{ProviderName: "model", Scope: scope}) {
				t.Fatalf("tenant %s's source asked with %+v", tenant, req)
			}
		}
		// Routing is per connection: a session of tenant A's connection is
		// unknown on tenant B's.
		if _, err := own["B"].Acquire(context.Background(), tokens.Request{SessionID: "A-1", ProviderName: "model"}); !errors.Is(err, actors.ErrUnknownSession) {
			t.Fatalf("tenant A's session answered on tenant B's connection: %v", err)
		}
	})
}

// The issuer's refresh hint (azidentity's RefreshOn) sets the refresh
// point; jitter moves it earlier only.
func TestRefreshHintHonoured(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src := &fakeSource{fn: func(_ context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
			now := time.Now()
			return tokens.Token{Value: value("t", int(n)), ExpiresOn: now.Add(time.Hour), RefreshOn: now.Add(10 * time.Minute)}, nil
		}}
		r := b.NewRouter()
		open(t, r, "s", actors.Provider{Name: "p", Source: src})
		mustAcquire(t, r, "s", "p")
		// Lead 50 min, jitter min(5 min, 5 min) × 0.5: refresh at 7:30.
		for range 7 {
			time.Sleep(time.Minute)
			mustAcquire(t, r, "s", "p")
		}
		time.Sleep(29 * time.Second)
		synctest.Wait()
		if n := src.calls.Load(); n != 1 {
			t.Fatalf("refreshed before the hinted point: %d calls at +%s", n, elapsed())
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if n := src.calls.Load(); n != 2 {
			t.Fatalf("not refreshed at the hinted point: %d calls at +%s", n, elapsed())
		}
	})
}

func TestScopeChecks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		var got atomic.Value
		src := &fakeSource{fn: func(_ context.Context, n int64, req tokens.Request) (tokens.Token, error) {
			got.Store(req)
			return tokens.Token{Value: "v", ExpiresOn: time.Now().Add(time.Hour)}, nil
		}}
		r := b.NewRouter()
		open(t, r, "s", actors.Provider{Name: "p", Scope: "scope-1", Source: src})
		if _, err := r.Acquire(context.Background(), tokens.Request{SessionID: "s", ProviderName: "p", Scope: "scope-2"}); !errors.Is(err, actors.ErrScopeMismatch) {
			t.Fatalf("other scope: %v", err)
		}
		if _, err := r.Acquire(context.Background(), tokens.Request{SessionID: "s", ProviderName: "p"}); err != nil {
			t.Fatalf("no scope (getToken dialect): %v", err)
		}
		if req := got.Load().(tokens.Request); req != (tokens.Request{SessionID: "s", ProviderName: "p", Scope: "scope-1"}) {
			t.Fatalf("source asked with %+v", req)
		}
		cred := credential(t, b, "c", "scope-1", src)
		if err := r.Open("s2", []actors.Provider{{Name: "c", Scope: "scope-2", Source: cred}}); err == nil || !strings.Contains(err.Error(), `"scope-2"`) {
			t.Fatalf("a provider with another scope than its credential's: err = %v, want a scope error", err)
		}
		if _, err := b.NewCredential("x", "", cred); err == nil || !strings.Contains(err.Error(), "cannot wrap") {
			t.Fatalf("a credential wrapping a credential: err = %v, want a refusal", err)
		}
	})
}

// issuerCache behaves like azidentity/MSAL and most oauth2 TokenSources: it
// keeps its token and hands it out again until the token's refresh hint
// passes or it has less than 5 minutes left, and only then fetches a new
// one (counted in fetched).
type issuerCache struct {
	life, hint time.Duration
	mu         sync.Mutex
	cur        tokens.Token
	fetched    int
	calls      atomic.Int64
}

func (c *issuerCache) Token(context.Context, tokens.Request) (tokens.Token, error) {
	c.calls.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	stale := c.cur.Value == "" || now.Add(5*time.Minute).After(c.cur.ExpiresOn) ||
		(!c.cur.RefreshOn.IsZero() && !now.Before(c.cur.RefreshOn))
	if stale {
		c.fetched++
		c.cur = tokens.Token{Value: value("issued", c.fetched), ExpiresOn: now.Add(c.life)}
		if c.hint > 0 {
			c.cur.RefreshOn = now.Add(c.hint)
		}
	}
	return c.cur, nil
}

// A credential with a cache of its own answers the broker's earlier
// refreshes with the token it already has. The broker must then wait for
// the issuer's refresh point instead of asking again on every request:
// over ten busy hours, a handful of credential calls per token lifetime.
func TestIssuerCacheDoesNotCauseRefreshStorm(t *testing.T) {
	cases := []struct {
		name       string
		life, hint time.Duration
	}{
		{"24h token, 12h hint (managed identity)", 24 * time.Hour, 12 * time.Hour},
		{"1h token, no hint (client secret)", time.Hour, 0},
		{"1h token, 20 min hint", time.Hour, 20 * time.Minute},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, seed := range []uint64{1, 2, 3} {
				synctest.Test(t, func(t *testing.T) {
					b := newBroker(t, actors.Options{Rand: lockedRand(seed)})
					defer closeBroker(t, b)
					src := &issuerCache{life: c.life, hint: c.hint}
					cred := credential(t, b, "p", "", src)
					r := b.NewRouter()
					open(t, r, "s", actors.Provider{Name: "p", Source: cred})
					const span = 48 * time.Hour
					for start := time.Now(); time.Since(start) < span; time.Sleep(5 * time.Second) {
						g := mustAcquire(t, r, "s", "p")
						if left := time.Until(g.Token.ExpiresOn); left < b.Policy().Floor {
							t.Fatalf("served a token with %s left", left)
						}
					}
					lifetimes := int(span / c.life)
					if c.hint > 0 {
						lifetimes = int(span / c.hint)
					}
					calls := int(src.calls.Load())
					src.mu.Lock()
					defer src.mu.Unlock()
					t.Logf("seed %d: %d credential calls, %d tokens issued, over %d issuer refresh periods", seed, calls, src.fetched, lifetimes)
					if calls > 4*(lifetimes+1) {
						t.Fatalf("%d credential calls for %d issued tokens: the broker keeps asking a credential that answers from its cache", calls, src.fetched)
					}
				})
			}
		})
	}
}
