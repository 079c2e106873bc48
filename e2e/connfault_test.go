package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/transport"
)

// In these tests the broker's RequestTimeout and the credential deadline
// are an hour: whatever ends a pending request or a credential call here is
// the fault being tested, and a missing reaction shows as a hang caught by
// hardSettle, never as a timing race.
func hardHourWorld(t *testing.T) *hardWorld {
	t.Helper()
	policy := tokens.DefaultPolicy()
	policy.RefreshTimeout = time.Hour
	return newHardWorld(t, actors.Options{RequestTimeout: time.Hour, Policy: &policy})
}

// inflight starts n token requests and returns their answers as they come.
func hardInflight(rt *hardRuntime, n int, method, session, provider string) <-chan hardAnswer {
	out := make(chan hardAnswer, n)
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), hardSettle)
			defer cancel()
			out <- rt.ask(ctx, method, session, provider)
		}()
	}
	return out
}

func hardCollect(t *testing.T, what string, ch <-chan hardAnswer, n int) []hardAnswer {
	t.Helper()
	var out []hardAnswer
	for range n {
		select {
		case a := <-ch:
			out = append(out, a)
		case <-time.After(hardSettle + time.Second):
			t.Fatalf("%s: %d of %d answers within %s", what, len(out), n, hardSettle)
		}
	}
	return out
}

// The runtime disconnects while requests wait on a per-session credential
// and on a shared one. The dead connection's sessions close (their actors
// stop), the per-session credential call is cancelled, its handlers return;
// the shared credential's call goes on for the other connection's session,
// which gets its token, and stays usable by new sessions.
func TestConnFaultDisconnectMidRequest(t *testing.T) {
	for _, link := range []string{"pipe", "tcp"} {
		t.Run(link, func(t *testing.T) {
			hardLeakCheck(t)
			w := hardHourWorld(t)
			own := w.source("tok-own-").gated()
			sharedSrc := w.source("tok-shared-").gated()
			shared := w.credential("mi", "", sharedSrc)
			defer shared.Close()

			a, b := w.dial(link), w.dial(link)
			a.open("a1", actors.Provider{Name: "own", Source: own}, actors.Provider{Name: "mi", Source: shared})
			a.open("a2", actors.Provider{Name: "mi", Source: shared})
			b.open("b1", actors.Provider{Name: "mi", Source: shared})

			aOwn := hardInflight(a, 3, transport.MethodGetToken, "a1", "own")
			aShared := hardInflight(a, 3, transport.MethodAcquire, "a2", "mi")
			bShared := hardInflight(b, 2, transport.MethodGetToken, "b1", "mi")
			hardWait(t, "per-session credential called", own.started)
			hardWait(t, "shared credential called", sharedSrc.started)
			hardWaitHandled(t, w, 8)

			a.hangUp()
			for _, ans := range append(hardCollect(t, "own", aOwn, 3), hardCollect(t, "shared", aShared, 3)...) {
				if ans.err == nil {
					t.Errorf("request on the dead connection answered: %s", ans)
				}
			}
			hardEventually(t, "dead connection's router closing", func() bool { return a.client.Router().Len() == 0 })
			// The per-session credential call is cancelled: nobody can
			// use its result.
			hardWaitCancelled(t, "the per-session credential call of the dead connection", own.ended)
			// Every request handler of the dead connection has returned.
			w.eventually("dead connection's handlers returning", func() bool {
				n, _, _ := w.cap.Int64Sum(context.Background(), "tokenbroker.requests")
				return n == 6
			})
			w.eventually("dead connection's session actors stopping", func() bool { return w.gauge(hardActiveSessions) == 1 })
			if n := w.gauge(hardActiveProviders); n != 1 {
				t.Errorf("%d provider actors running, want only the shared credential's", n)
			}
			select {
			case <-sharedSrc.ended:
				t.Fatal("the shared credential's call was cancelled by another connection's end")
			default:
			}

			sharedSrc.release()
			for _, ans := range hardCollect(t, "other connection", bShared, 2) {
				if hardCode(ans) != 0 || !sharedSrc.owns(ans.token) {
					t.Errorf("other connection's session: %s", ans)
				}
			}
			c := w.dial(link)
			c.open("c1", actors.Provider{Name: "mi", Source: shared})
			if ans := c.ask(context.Background(), transport.MethodGetToken, "c1", "mi"); hardCode(ans) != 0 || !sharedSrc.owns(ans.token) {
				t.Errorf("new session on the shared credential: %s", ans)
			}
			if n := sharedSrc.calls.Load(); n != 1 {
				t.Errorf("shared credential called %d times, want 1 (one refresh serves everyone)", n)
			}
			w.assertNoSecrets()
		})
	}
}

// waitHandled waits until n token requests have reached the broker (their
// spans started), so a fault injected next hits them in flight.
func hardWaitHandled(t *testing.T, w *hardWorld, n int) {
	t.Helper()
	hardEventually(t, fmt.Sprintf("%d requests in flight", n), func() bool {
		got := 0
		for _, s := range w.cap.Spans.Started() {
			if s.Name() == transport.MethodGetToken || s.Name() == transport.MethodAcquire {
				got++
			}
		}
		return got >= n
	})
}

// A runtime that reconnects opens the same session ids on its new
// connection; the old connection's registrations are gone, the shared
// cache is still warm.
func TestConnFaultReconnect(t *testing.T) {
	hardLeakCheck(t)
	w := hardHourWorld(t)
	sharedSrc := w.source("tok-shared-")
	shared := w.credential("mi", "", sharedSrc)
	defer shared.Close()
	ids := []string{"s1", "s2", "s3"}
	var mu sync.Mutex
	owners := map[string]*hardSource{}
	openAll := func(rt *hardRuntime, round int) {
		for _, id := range ids {
			src := w.source(fmt.Sprintf("tok-%s-r%d-", id, round))
			mu.Lock()
			owners[id] = src
			mu.Unlock()
			rt.open(id, actors.Provider{Name: "own", Source: src}, actors.Provider{Name: "mi", Source: shared})
		}
	}
	for round := range 5 {
		rt := w.dial([]string{"pipe", "tcp"}[round%2])
		openAll(rt, round)
		for _, id := range ids {
			for _, p := range []string{"own", "mi"} {
				ans := rt.ask(context.Background(), transport.MethodGetToken, id, p)
				owner := sharedSrc
				if p == "own" {
					owner = owners[id]
				}
				if hardCode(ans) != 0 || !owner.owns(ans.token) {
					t.Fatalf("round %d %s/%s: %s", round, id, p, ans)
				}
			}
		}
		rt.hangUp()
		hardEventually(t, "router closing", func() bool { return rt.client.Router().Len() == 0 })
	}
	if n := sharedSrc.calls.Load(); n != 1 {
		t.Errorf("shared credential called %d times over 5 reconnects, want 1", n)
	}
	w.eventually("sessions stopping", func() bool { return w.gauge(hardActiveSessions) == 0 })
	w.assertNoSecrets()
}

// A session closed while its requests wait: they are answered at once
// with a "closed" error, its own credential call is cancelled, and the
// shared credential's call goes on for another session, which gets the
// token. Closing a shared credential ends the waits on it and its call.
func TestConnFaultSessionClosedInFlight(t *testing.T) {
	hardLeakCheck(t)
	w := hardHourWorld(t)
	own := w.source("tok-own-").gated()
	sharedSrc := w.source("tok-shared-").gated()
	shared := w.credential("mi", "", sharedSrc)
	rt := w.dial("pipe")
	rt.open("doomed", actors.Provider{Name: "own", Source: own}, actors.Provider{Name: "mi", Source: shared})
	rt.open("survivor", actors.Provider{Name: "mi", Source: shared})
	doomedOwn := hardInflight(rt, 3, transport.MethodGetToken, "doomed", "own")
	doomedShared := hardInflight(rt, 3, transport.MethodAcquire, "doomed", "mi")
	survivor := hardInflight(rt, 2, transport.MethodGetToken, "survivor", "mi")
	hardWait(t, "per-session credential called", own.started)
	hardWait(t, "shared credential called", sharedSrc.started)
	hardWaitHandled(t, w, 8)

	if err := rt.client.Router().CloseSession("doomed"); err != nil {
		t.Fatal(err)
	}
	for _, ans := range append(hardCollect(t, "doomed/own", doomedOwn, 3), hardCollect(t, "doomed/mi", doomedShared, 3)...) {
		if hardCode(ans) != transport.CodeClosed && hardCode(ans) != transport.CodeUnknownSession {
			t.Errorf("request of a closed session: %s, want a closed error", ans)
		} else if !hardSaysWhere(ans, "doomed", "") {
			t.Errorf("closed error does not name the session: %s", ans)
		}
	}
	hardWaitCancelled(t, "closed session's credential call", own.ended)
	sharedSrc.release()
	for _, ans := range hardCollect(t, "survivor", survivor, 2) {
		if hardCode(ans) != 0 || !sharedSrc.owns(ans.token) {
			t.Errorf("survivor: %s", ans)
		}
	}

	// Closing the shared credential itself ends the waits on it.
	blocked := w.source("tok-blocked-").gated()
	cred2 := w.credential("mi2", "", blocked)
	rt.open("on-cred2", actors.Provider{Name: "mi2", Source: cred2})
	waiting := hardInflight(rt, 2, transport.MethodGetToken, "on-cred2", "mi2")
	hardWait(t, "second credential called", blocked.started)
	hardWaitHandled(t, w, 10)
	cred2.Close()
	for _, ans := range hardCollect(t, "closed credential", waiting, 2) {
		if hardCode(ans) != transport.CodeClosed {
			t.Errorf("request on a closed credential: %s, want a closed error", ans)
		}
	}
	hardWaitCancelled(t, "closed credential's call", blocked.ended)
	shared.Close()
	rt.hangUp()
	w.eventually("everything stopping", func() bool {
		return w.gauge(hardActiveSessions) == 0 && w.gauge(hardActiveProviders) == 0
	})
	w.assertNoSecrets()
}
