package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/transport"
)

// Sessions opened and closed over and over on live connections, with token
// requests over the wire, and connections opened and dropped: afterwards
// no session or provider actor is left (the broker's own gauges, fed by
// the actors' Started and Stopped), and no goroutine once the broker is
// closed. (actors/export_test.go does 100 k cycles and checks protoactor's
// process registry itself.)
func TestLeakSessionAndConnectionCycles(t *testing.T) {
	hardLeakCheck(t)
	w := newHardWorld(t, actors.Options{RequestTimeout: 10 * time.Second})
	sharedSrc := w.source("tok-shared-")
	shared := w.credential("mi", "", sharedSrc)
	cycles := 10000
	if testing.Short() {
		cycles = 1000
	}
	conns := []*hardRuntime{w.dial("pipe"), w.dial("tcp")}
	own := w.source("tok-own-")
	ctx := context.Background()
	var wg sync.WaitGroup
	for ci, rt := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range cycles / len(conns) {
				id := fmt.Sprintf("c%d-%d", ci, i)
				if err := rt.client.Router().Open(id, []actors.Provider{{Name: "own", Source: own}, {Name: "mi", Source: shared}}); err != nil {
					t.Error(err)
					return
				}
				if i%10 == 0 {
					for _, p := range []string{"own", "mi"} {
						if a := rt.ask(ctx, transport.MethodGetToken, id, p); hardCode(a) != 0 {
							t.Errorf("%s/%s: %s", id, p, a)
							return
						}
					}
				}
				if err := rt.client.Router().CloseSession(id); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, rt := range conns {
		if n := rt.client.Router().Len(); n != 0 {
			t.Errorf("router holds %d sessions after closing them all", n)
		}
	}
	w.eventually("session actors stopping", func() bool {
		return w.gauge(hardActiveSessions) == 0 && w.gauge(hardActiveProviders) == 1
	})

	// Connections that come and go, each with sessions left open.
	for i := range 100 {
		rt := w.dial([]string{"pipe", "tcp"}[i%2])
		for j := range 3 {
			id := fmt.Sprintf("drop%d-%d", i, j)
			rt.open(id, actors.Provider{Name: "own", Source: own}, actors.Provider{Name: "mi", Source: shared})
			if a := rt.ask(ctx, transport.MethodAcquire, id, "own"); hardCode(a) != 0 {
				t.Fatal(a)
			}
		}
		rt.hangUp()
	}
	w.eventually("dropped connections' actors stopping", func() bool {
		return w.gauge(hardActiveSessions) == 0 && w.gauge(hardActiveProviders) == 1
	})
	shared.Close()
	w.eventually("credential stopping", func() bool { return w.gauge(hardActiveProviders) == 0 })
	t.Logf("%d session cycles on %d connections, 100 dropped connections: no actor left; shared credential called %d times",
		cycles, len(conns), sharedSrc.calls.Load())
	w.assertNoSecrets()
}

// Broker.Close with requests waiting on credentials, sessions open on live
// connections and shared credentials: when it returns, every credential
// call has returned, every actor has stopped, and the waiting requests were
// answered. A credential that ignores its cancellation makes Close report
// it, after a bounded wait, rather than hang.
func TestLeakBrokerCloseWaitsForEverything(t *testing.T) {
	hardLeakCheck(t)
	t.Run("cooperative", func(t *testing.T) {
		w := hardHourWorld(t)
		own := w.source("tok-own-").gated()
		sharedSrc := w.source("tok-shared-").gated()
		shared := w.credential("mi", "", sharedSrc)
		rt := w.dial("pipe")
		rt.open("s", actors.Provider{Name: "own", Source: own}, actors.Provider{Name: "mi", Source: shared})
		pending := hardInflight(rt, 4, transport.MethodGetToken, "s", "own")
		pendingShared := hardInflight(rt, 4, transport.MethodGetToken, "s", "mi")
		hardWait(t, "own credential called", own.started)
		hardWait(t, "shared credential called", sharedSrc.started)
		hardWaitHandled(t, w, 8)

		if err := w.broker.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		// Checked at once, not eventually: Close has waited.
		if n := own.active.Load() + sharedSrc.active.Load(); n != 0 {
			t.Errorf("%d credential calls still running after Close returned", n)
		}
		if s, p := w.gauge(hardActiveSessions), w.gauge(hardActiveProviders); s != 0 || p != 0 {
			t.Errorf("after Close returned: %d sessions, %d providers still running", s, p)
		}
		for _, a := range append(hardCollect(t, "own", pending, 4), hardCollect(t, "shared", pendingShared, 4)...) {
			if hardCode(a) != transport.CodeClosed {
				t.Errorf("request pending at Close: %s, want a closed error", a)
			}
		}
		if err := rt.client.Router().Open("late", []actors.Provider{{Name: "p", Source: own}}); err == nil {
			t.Error("Open succeeded on a closed broker")
		}
	})
	t.Run("source ignoring cancellation", func(t *testing.T) {
		w := hardHourWorld(t)
		stuck := make(chan struct{})
		defer close(stuck)
		src := w.source("tok-stuck-")
		src.behave = func(context.Context, int64) (tokens.Token, error) {
			<-stuck
			return tokens.Token{}, context.Canceled
		}
		r := w.broker.NewRouter()
		if err := r.Open("s", []actors.Provider{{Name: "p", Source: src}}); err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = r.Acquire(context.Background(), tokens.Request{SessionID: "s", ProviderName: "p"}) }()
		hardWait(t, "credential called", src.started)
		err := w.broker.Close()
		if err == nil || !strings.Contains(err.Error(), "ignores its context") {
			t.Fatalf("Close with a stuck credential call: %v", err)
		}
	})
}
