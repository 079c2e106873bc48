package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/transport"
)

// A request naming a session registered on another connection is refused
// as unknown, even when the same session id exists on both; a request
// naming another session's provider is refused too.
func TestIsolationAcrossConnectionsAndSessions(t *testing.T) {
	hardLeakCheck(t)
	w := newHardWorld(t, actors.Options{RequestTimeout: 10 * time.Second})
	a, b := w.dial("pipe"), w.dial("tcp")
	aSrc, aOther := w.source("tok-conn-a-"), w.source("tok-conn-a-other-")
	a.open("s", actors.Provider{Name: "p", Source: aSrc})
	a.open("only-on-a", actors.Provider{Name: "q", Source: aOther})
	ctx := context.Background()
	for _, method := range []string{transport.MethodGetToken, transport.MethodAcquire} {
		// Warm a's cache, so a leak would be a plain cache hit.
		if ans := a.ask(ctx, method, "s", "p"); hardCode(ans) != 0 || !aSrc.owns(ans.token) {
			t.Fatalf("a: %s", ans)
		}
		hardUseful(t, b.ask(ctx, method, "s", "p"), transport.CodeUnknownSession, "s", "", "not registered")
		hardUseful(t, b.ask(ctx, method, "only-on-a", "q"), transport.CodeUnknownSession, "only-on-a", "", "not registered")
		// Another session's provider, on the same connection.
		hardUseful(t, a.ask(ctx, method, "s", "q"), transport.CodeUnknownProvider, "s", "q")
		hardUseful(t, a.ask(ctx, method, "only-on-a", "p"), transport.CodeUnknownProvider, "only-on-a", "p")
	}
	// The same session id registered on b is b's own.
	bSrc := w.source("tok-conn-b-")
	b.open("s", actors.Provider{Name: "p", Source: bSrc})
	for range 3 {
		if ans := b.ask(ctx, transport.MethodGetToken, "s", "p"); hardCode(ans) != 0 || !bSrc.owns(ans.token) {
			t.Fatalf("b's own session s: %s", ans)
		}
		if ans := a.ask(ctx, transport.MethodGetToken, "s", "p"); hardCode(ans) != 0 || !aSrc.owns(ans.token) {
			t.Fatalf("a's session s after b registered its own: %s", ans)
		}
	}
	// Closing b's "s" leaves a's alone.
	if err := b.client.Router().CloseSession("s"); err != nil {
		t.Fatal(err)
	}
	if ans := a.ask(ctx, transport.MethodGetToken, "s", "p"); hardCode(ans) != 0 || !aSrc.owns(ans.token) {
		t.Fatalf("a's session s after b closed its own: %s", ans)
	}
	w.assertNoSecrets()
}

// Tenants, each with its own Credential handle for the same provider name
// and scope, and sessions with colliding ids and provider names spread
// over shared connections, under concurrent load with cache churn
// (invalidations, short-lived and bare tokens): no tenant ever receives a
// token issued for another.
func TestIsolationTenantsUnderLoad(t *testing.T) {
	hardLeakCheck(t)
	w := newHardWorld(t, actors.Options{RequestTimeout: 10 * time.Second})
	const tenants, sessionsPerTenant = 6, 4
	const scope = "https://cognitiveservices.azure.com/.default"
	conns := []*hardRuntime{w.dial("pipe"), w.dial("pipe"), w.dial("tcp")}

	type route struct {
		rt                *hardRuntime
		session, provider string
		owner             *hardSource
	}
	var routes []route
	var creds []*actors.Credential
	opened := map[*hardRuntime]map[string]bool{}
	for _, rt := range conns {
		opened[rt] = map[string]bool{}
	}
	for ti := range tenants {
		shared := w.source(fmt.Sprintf("tok-tenant%d-mi-", ti))
		shared.life = 62 * time.Second // just over the floor: refreshed often
		cred := w.credential("mi", scope, shared)
		creds = append(creds, cred)
		for si := range sessionsPerTenant {
			// Session ids collide across tenants on different
			// connections; on one connection they are unique, as the
			// runtime requires.
			rt := conns[(ti+si)%len(conns)]
			id := fmt.Sprintf("s%d", si)
			if opened[rt][id] {
				id = fmt.Sprintf("tenant%d-s%d", ti, si)
			}
			opened[rt][id] = true
			own := w.source(fmt.Sprintf("tok-tenant%d-own-", ti))
			own.bare = si%2 == 0
			rt.open(id,
				actors.Provider{Name: "mi", Scope: scope, Source: cred},
				actors.Provider{Name: "default", Source: own},
			)
			routes = append(routes, route{rt, id, "mi", shared}, route{rt, id, "default", own})
		}
	}

	var wrong, served atomic.Int64
	var wg sync.WaitGroup
	for wi := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(wi), 7))
			for range 150 {
				r := routes[rng.IntN(len(routes))]
				if rng.IntN(20) == 0 {
					_ = r.rt.client.Router().Invalidate(r.session, r.provider)
				}
				method := []string{transport.MethodGetToken, transport.MethodAcquire}[rng.IntN(2)]
				ctx, cancel := context.WithTimeout(context.Background(), hardSettle)
				ans := r.rt.ask(ctx, method, r.session, r.provider)
				cancel()
				if hardCode(ans) != 0 {
					t.Errorf("%s/%s: %s", r.session, r.provider, ans)
					continue
				}
				served.Add(1)
				if !r.owner.owns(ans.token) {
					wrong.Add(1)
					t.Errorf("%s/%s got a token of another tenant (%s)", r.session, r.provider, tokens.Fingerprint(ans.token))
				}
			}
		}()
	}
	wg.Wait()
	var calls int64
	for _, r := range routes {
		if r.provider == "mi" {
			calls = r.owner.calls.Load() // any tenant's: logged for scale
		}
	}
	t.Logf("%d tokens served to %d sessions of %d tenants over %d connections, %d to the wrong tenant (last tenant's credential called %d times)",
		served.Load(), tenants*sessionsPerTenant, tenants, len(conns), wrong.Load(), calls)
	for _, c := range creds {
		c.Close()
	}
	w.assertNoSecrets()
}
