package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/transport"
)

// chaosRequestTimeout is the broker's bound on a token request here; every
// request must be answered within it plus chaosSlack. It is generous so
// that a busy machine never turns a credential's own answer into a
// timeout: hanging credentials are answered by their call's deadline,
// chaosCallTimeout, and the back-off after it.
const (
	chaosRequestTimeout = 5 * time.Second
	chaosCallTimeout    = 300 * time.Millisecond
	chaosSlack          = 5 * time.Second
)

// chaosKind is one way a credential behaves, and the answers it allows.
type chaosKind struct {
	name    string
	healthy bool // must always be answered with its own token
	codes   []int64
	make    func(w *hardWorld, prefix string, stuck <-chan struct{}) *hardSource
}

func chaosKinds() []chaosKind {
	issue := func(w *hardWorld, prefix string, _ <-chan struct{}) *hardSource { return w.source(prefix) }
	return []chaosKind{
		{name: "ok", healthy: true, make: issue},
		{name: "bare", healthy: true, make: func(w *hardWorld, prefix string, _ <-chan struct{}) *hardSource {
			s := w.source(prefix)
			s.bare = true
			return s
		}},
		{name: "slow", healthy: true, make: func(w *hardWorld, prefix string, _ <-chan struct{}) *hardSource {
			s := w.source(prefix)
			s.behave = func(ctx context.Context, _ int64) (tokens.Token, error) {
				select {
				case <-time.After(40 * time.Millisecond):
					return s.issue(), nil
				case <-ctx.Done():
					return tokens.Token{}, ctx.Err()
				}
			}
			return s
		}},
		{name: "fail", codes: []int64{transport.CodeCredential}, make: func(w *hardWorld, prefix string, _ <-chan struct{}) *hardSource {
			s := w.source(prefix)
			// A careless credential puts what it holds in its error: a
			// JWT-shaped token and a bearer credential.
			jwt := "eyJhbGciOiJSUzI1NiJ9." + w.secret("jwtbody") + "." + w.secret("jwtsig")
			w.remember("jwt in an error", jwt)
			bearer := w.secret("bearer-in-error-")
			s.behave = func(context.Context, int64) (tokens.Token, error) {
				return tokens.Token{}, fmt.Errorf("token endpoint said 401 for %s (sent Authorization: Bearer %s)", jwt, bearer)
			}
			return s
		}},
		{name: "flaky", codes: []int64{transport.CodeCredential}, make: func(w *hardWorld, prefix string, _ <-chan struct{}) *hardSource {
			s := w.source(prefix)
			s.bare = true
			s.behave = func(_ context.Context, n int64) (tokens.Token, error) {
				if n%2 == 1 {
					return tokens.Token{}, errors.New("identity endpoint returned 503")
				}
				return s.issue(), nil
			}
			return s
		}},
		{name: "hang", codes: []int64{transport.CodeTimeout, transport.CodeCredential}, make: func(w *hardWorld, prefix string, _ <-chan struct{}) *hardSource {
			s := w.source(prefix)
			s.behave = func(ctx context.Context, _ int64) (tokens.Token, error) {
				<-ctx.Done()
				return tokens.Token{}, ctx.Err()
			}
			return s
		}},
		{name: "stuck", codes: []int64{transport.CodeTimeout, transport.CodeCredential}, make: func(w *hardWorld, prefix string, stuck <-chan struct{}) *hardSource {
			s := w.source(prefix)
			s.behave = func(context.Context, int64) (tokens.Token, error) {
				<-stuck // ignores its context altogether
				return tokens.Token{}, errors.New("unstuck")
			}
			return s
		}},
		{name: "panic", codes: []int64{transport.CodeCredential}, make: func(w *hardWorld, prefix string, _ <-chan struct{}) *hardSource {
			s := w.source(prefix)
			// The service's log gets a panic's value with secrets cut out:
			// a secret in it has a secret's shape.
			secret := w.secret("panic-value-")
			s.behave = func(context.Context, int64) (tokens.Token, error) {
				panic("credential blew up holding client_secret=" + secret)
			}
			return s
		}},
		{name: "empty", codes: []int64{transport.CodeInvalidToken}, make: func(w *hardWorld, prefix string, _ <-chan struct{}) *hardSource {
			s := w.source(prefix)
			s.bare = true
			s.behave = func(context.Context, int64) (tokens.Token, error) { return tokens.Token{}, nil }
			return s
		}},
		{name: "bearer", codes: []int64{transport.CodeInvalidToken}, make: func(w *hardWorld, prefix string, _ <-chan struct{}) *hardSource {
			s := w.source(prefix)
			s.behave = func(context.Context, int64) (tokens.Token, error) {
				t := s.issue()
				t.Value = "Bearer " + t.Value
				return t, nil
			}
			return s
		}},
	}
}

// chaosRoute is one (connection, session, provider) a request can name.
type chaosRoute struct {
	rt       *hardRuntime
	session  string
	provider string
	kind     chaosKind
	src      *hardSource // nil for the refusal routes
	code     int64       // the refusal expected on a refusal route
}

// TestChaos runs misbehaving credentials behind many sessions on several
// connections (pipes and loopback TCP) under concurrent load, and checks
// that every request is answered in time and correctly, that the broker
// keeps serving, and that nothing leaks: no goroutine, no actor, no secret.
func TestChaos(t *testing.T) {
	hardLeakCheck(t)
	policy := tokens.DefaultPolicy()
	policy.RefreshTimeout = chaosCallTimeout
	policy.BackoffBase = 20 * time.Millisecond
	policy.BackoffMax = 200 * time.Millisecond
	w := newHardWorld(t, actors.Options{RequestTimeout: chaosRequestTimeout, Policy: &policy})
	stuck := make(chan struct{})
	unstick := sync.OnceFunc(func() { close(stuck) })
	defer unstick() // before the broker closes, even on failure

	kinds := chaosKinds()
	const sessionsPerConn = 8
	links := []string{"pipe", "pipe", "tcp"}
	var routes []chaosRoute
	var runtimes []*hardRuntime

	// Shared credentials: two healthy, one failing, used across
	// connections; each session picks one of them.
	var shared []*actors.Credential
	var sharedSrc []*hardSource
	for i, k := range []chaosKind{kinds[0], kinds[2], kinds[3]} {
		src := k.make(w, fmt.Sprintf("tok-shared%d-%s-", i, k.name), stuck)
		c := w.credential(fmt.Sprintf("shared-%d", i), "", src)
		shared, sharedSrc = append(shared, c), append(sharedSrc, src)
	}
	sharedKind := []chaosKind{kinds[0], kinds[2], kinds[3]}

	for ci, link := range links {
		rt := w.dial(link)
		runtimes = append(runtimes, rt)
		for si := range sessionsPerConn {
			id := fmt.Sprintf("c%d-s%d", ci, si)
			var provs []actors.Provider
			for _, k := range kinds {
				src := k.make(w, fmt.Sprintf("tok-%s-%s-", id, k.name), stuck)
				provs = append(provs, actors.Provider{Name: k.name, Source: src})
				routes = append(routes, chaosRoute{rt: rt, session: id, provider: k.name, kind: k, src: src})
			}
			j := (ci + si) % len(shared)
			provs = append(provs, actors.Provider{Name: "shared", Source: shared[j]})
			routes = append(routes, chaosRoute{rt: rt, session: id, provider: "shared", kind: sharedKind[j], src: sharedSrc[j]})
			rt.open(id, provs...)
		}
		// Requests the broker must refuse, mixed into the load.
		routes = append(routes,
			chaosRoute{rt: rt, session: "nobody", provider: "ok", kind: chaosKind{name: "unknown session"}, code: transport.CodeUnknownSession},
			chaosRoute{rt: rt, session: fmt.Sprintf("c%d-s0", ci), provider: "nope", kind: chaosKind{name: "unknown provider"}, code: transport.CodeUnknownProvider},
		)
	}
	// Another connection's session ids are unknown here.
	routes = append(routes, chaosRoute{rt: runtimes[0], session: "c1-s1", provider: "ok", kind: chaosKind{name: "other connection's session"}, code: transport.CodeUnknownSession})

	const workers, perWorker = 24, 80
	type result struct {
		route  chaosRoute
		method string
		a      hardAnswer
	}
	results := make([]result, 0, workers*perWorker)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var stop atomic.Bool // an unanswered request fails the test: stop early
	start := time.Now()
	for wi := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(wi), 42))
			for range perWorker {
				if stop.Load() {
					return
				}
				r := routes[rng.IntN(len(routes))]
				method := transport.MethodGetToken
				if rng.IntN(2) == 0 {
					method = transport.MethodAcquire
				}
				if rng.IntN(50) == 0 && r.src != nil {
					_ = r.rt.client.Router().Invalidate(r.session, r.provider) // churn the cache
				}
				ctx, cancel := context.WithTimeout(context.Background(), chaosRequestTimeout+chaosSlack)
				a := r.rt.ask(ctx, method, r.session, r.provider)
				cancel()
				if a.err != nil {
					stop.Store(true)
				}
				mu.Lock()
				results = append(results, result{r, method, a})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	// Every request answered, within its deadline, and correctly.
	byOutcome := map[string]int{}
	var unanswered, wrong int
	var slowest time.Duration
	var took []time.Duration
	for _, res := range results {
		a, r := res.a, res.route
		took = append(took, a.took)
		slowest = max(slowest, a.took)
		code := hardCode(a)
		byOutcome[fmt.Sprintf("%-26s %s", r.kind.name, codeName(code))]++
		if code == -1 {
			unanswered++
			t.Errorf("%s %s/%s: %s after %s", res.method, r.session, r.provider, a, a.took)
			continue
		}
		switch {
		case code == 0 && (r.src == nil || !r.src.owns(a.token)):
			wrong++
			t.Errorf("%s %s/%s: got a token it does not own (%s)", res.method, r.session, r.provider, tokens.Fingerprint(a.token))
		case code == 0 && r.kind.name == "bare" && a.expires != 0:
			wrong++
			t.Errorf("%s %s/%s: bare token served with an expiry", res.method, r.session, r.provider)
		case code != 0 && r.src == nil && code != r.code:
			wrong++
			t.Errorf("%s %s/%s: %s, want code %d", res.method, r.session, r.provider, a, r.code)
		case code != 0 && r.src != nil && (r.kind.healthy || !slices.Contains(r.kind.codes, code)):
			wrong++
			t.Errorf("%s %s/%s (%s credential): %s", res.method, r.session, r.provider, r.kind.name, a)
		case code != 0 && !hardSaysWhere(a, r.session, r.provider):
			wrong++
			t.Errorf("error does not name session %q and provider %q: %s", r.session, r.provider, a)
		}
	}
	slices.Sort(took)
	t.Logf("%d requests by %d workers over %d connections (%d sessions) in %s: %d answered, %d unanswered, %d wrong; latency p50 %s p99 %s max %s (request deadline %s, call deadline %s)",
		len(results), workers, len(runtimes), len(runtimes)*sessionsPerConn, elapsed.Round(time.Millisecond),
		len(results)-unanswered, unanswered, wrong, took[len(took)/2], took[len(took)*99/100], slowest, chaosRequestTimeout, chaosCallTimeout)
	keys := make([]string, 0, len(byOutcome))
	for k := range byOutcome {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var table strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&table, "  %s %5d\n", k, byOutcome[k])
	}
	t.Logf("answers by credential kind and outcome:\n%s", table.String())
	if n, _, _ := w.cap.Int64Sum(context.Background(), tracing.MetricRequests); n != int64(len(results)-unanswered) {
		t.Errorf("%s counted %d requests, the runtime got %d answers", tracing.MetricRequests, n, len(results)-unanswered)
	}
	for _, o := range []string{tracing.OutcomeHit, tracing.OutcomeCoalesced, tracing.OutcomeRefreshed, tracing.OutcomeBare, tracing.OutcomeError} {
		n, _, _ := w.cap.Int64Sum(context.Background(), tracing.MetricRequests, string(tracing.Outcome)+"="+o)
		t.Logf("broker outcome %-9s %5d", o, n)
	}

	// The broker keeps serving: every healthy route still answers, and a
	// new session on every connection is served.
	for _, r := range routes {
		if r.src == nil || !r.kind.healthy {
			continue
		}
		a := r.rt.ask(context.Background(), transport.MethodGetToken, r.session, r.provider)
		if hardCode(a) != 0 || !r.src.owns(a.token) {
			t.Errorf("after the chaos, %s/%s: %s", r.session, r.provider, a)
		}
	}
	for i, rt := range runtimes {
		src := w.source(fmt.Sprintf("tok-after%d-", i))
		id := fmt.Sprintf("after-%d", i)
		rt.open(id, actors.Provider{Name: "ok", Source: src})
		if a := rt.ask(context.Background(), transport.MethodAcquire, id, "ok"); hardCode(a) != 0 || !src.owns(a.token) {
			t.Errorf("new session after the chaos: %s", a)
		}
	}

	// Tear down: every session's actors stop with its connection, every
	// credential with its Close; no secret reached logs, spans or metrics.
	unstick()
	for _, rt := range runtimes {
		rt.hangUp()
		hardEventually(t, "connection's router closing", func() bool { return rt.client.Router().Len() == 0 })
	}
	w.eventually("session actors stopping", func() bool { return w.gauge(hardActiveSessions) == 0 })
	if n := w.gauge(hardActiveProviders); n != int64(len(shared)) {
		t.Errorf("%d provider actors running with only the %d shared credentials left", n, len(shared))
	}
	for _, c := range shared {
		c.Close()
	}
	w.eventually("credential actors stopping", func() bool { return w.gauge(hardActiveProviders) == 0 })
	w.assertNoSecrets()
}

// hardSaysWhere: a refusal names the session and the provider (when
// given) it is about.
func hardSaysWhere(a hardAnswer, session, provider string) bool {
	if a.rpcErr == nil {
		return false
	}
	m := a.rpcErr.Message
	return strings.Contains(m, fmt.Sprintf("%q", session)) && (provider == "" || strings.Contains(m, fmt.Sprintf("%q", provider)))
}

func codeName(code int64) string {
	switch code {
	case -1:
		return "UNANSWERED"
	case 0:
		return "token"
	case transport.CodeUnknownSession:
		return "unknown session (-32001)"
	case transport.CodeUnknownProvider:
		return "unknown provider (-32002)"
	case transport.CodeCredential:
		return "credential failed (-32003)"
	case transport.CodeTimeout:
		return "timeout (-32004)"
	case transport.CodeInvalidToken:
		return "invalid token (-32005)"
	case transport.CodeClosed:
		return "closed (-32006)"
	case jsonrpc2.CodeInvalidParams:
		return "invalid params (-32602)"
	}
	return fmt.Sprint(code)
}
