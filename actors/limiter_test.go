package actors

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// A credential with many slow calls (a source of bare tokens behind a hung
// endpoint) holds at most its cap of slots; fifty other credentials are
// served beside it in the slots left, and nobody exceeds the limit.
func TestCallLimiterFairAcrossCredentials(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const slots = 16
		l := newCallLimiter(slots, time.Hour, tokens.SystemClock(), nil)
		slow, others := &provider{name: "slow"}, make([]*provider, 50)
		var mu sync.Mutex
		running, peak, peakSlow := map[*provider]int{}, 0, 0
		total := func() (n int) {
			for _, v := range running {
				n += v
			}
			return n
		}
		call := func(p *provider, hold time.Duration) time.Duration {
			start := time.Now()
			slot, err := l.acquire(context.Background(), p)
			if err != nil {
				t.Error(err)
				return 0
			}
			mu.Lock()
			running[p]++
			peak, peakSlow = max(peak, total()), max(peakSlow, running[slow])
			mu.Unlock()
			time.Sleep(hold)
			mu.Lock()
			running[p]--
			mu.Unlock()
			slot.release()
			return time.Since(start)
		}
		var wg sync.WaitGroup
		for range 100 { // the slow credential's calls queue first
			wg.Go(func() { call(slow, 10*time.Second) })
		}
		synctest.Wait()
		if q := l.queued(); q != 100-slots/8 {
			t.Fatalf("%d calls waiting, want all but the slow credential's cap (%d)", q, slots/8)
		}
		var othersDone time.Duration
		var omu sync.Mutex
		for i := range others {
			others[i] = &provider{name: "other"}
			wg.Go(func() {
				d := call(others[i], 50*time.Millisecond)
				omu.Lock()
				othersDone = max(othersDone, d)
				omu.Unlock()
			})
		}
		wg.Wait()
		// 50 calls of 50 ms in the 14 slots the slow credential leaves: 4 rounds.
		if othersDone != 200*time.Millisecond {
			t.Fatalf("the other credentials were served after %s, want 200ms", othersDone)
		}
		if peak > slots || peakSlow != slots/8 {
			t.Fatalf("peak %d calls (limit %d), the slow credential %d (cap %d)", peak, slots, peakSlow, slots/8)
		}
		if l.queued() != 0 || l.free != slots || len(l.running) != 0 || len(l.turns) != 0 || len(l.queues) != 0 {
			t.Fatalf("after all calls: %d queued, %d free, %d running, %d turns, %d queues", l.queued(), l.free, len(l.running), len(l.turns), len(l.queues))
		}
	})
}

// A waiter that gives up leaves the queue; one handed a slot as it gave up
// passes the slot on.
func TestCallLimiterCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newCallLimiter(1, time.Hour, tokens.SystemClock(), nil)
		a, b := &provider{name: "a"}, &provider{name: "b"}
		slotA, err := l.acquire(context.Background(), a)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := l.acquire(ctx, b); err == nil {
			t.Fatal("a waiter got a slot held by another")
		}
		if l.queued() != 0 || len(l.turns) != 0 || len(l.queues) != 0 {
			t.Fatalf("a waiter that gave up is still queued: %d", l.queued())
		}
		got := make(chan *callSlot, 1)
		go func() {
			slot, err := l.acquire(context.Background(), b)
			if err != nil {
				t.Error(err)
			}
			got <- slot
		}()
		synctest.Wait()
		slotA.release()
		slotA.release() // a second release changes nothing
		if slotB := <-got; slotB != nil {
			slotB.release()
		}
		if l.free != 1 || len(l.running) != 0 {
			t.Fatalf("%d free, %d running", l.free, len(l.running))
		}
	})
}

// A call that outlives its lease gives its slot to the next credential in
// line and keeps running; it still counts against its own credential's
// cap, so a hung credential cannot pile up calls either.
func TestCallLimiterLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const slots, lease = 8, 250 * time.Millisecond
		var expired atomic.Int64
		l := newCallLimiter(slots, lease, tokens.SystemClock(), func() { expired.Add(1) })
		ctx, cancel := context.WithCancel(context.Background())
		var mu sync.Mutex
		var held []*callSlot // calls that never return until the end
		var wg sync.WaitGroup
		hang := func(p *provider) {
			wg.Go(func() {
				if s, err := l.acquire(ctx, p); err == nil {
					mu.Lock()
					held = append(held, s)
					mu.Unlock()
				}
			})
		}
		for range 20 { // 20 hung credentials, one call each
			hang(&provider{name: "hung"})
		}
		synctest.Wait()
		if q, h := l.queued(), l.busy(&provider{}); q != 12 || h != "8 calls running" {
			t.Fatalf("%d waiting, %s; want 12 waiting, %d running", q, h, slots)
		}
		start := time.Now()
		healthy, err := l.acquire(context.Background(), &provider{name: "healthy"})
		if err != nil {
			t.Fatal(err)
		}
		// Two leases let the 12 other hung calls in; the healthy one is the
		// 21st call and needs the fourth slot freed by the second lease.
		if waited := time.Since(start); waited != 2*lease {
			t.Fatalf("the healthy credential waited %s, want two leases (%s)", waited, 2*lease)
		}
		healthy.release()
		time.Sleep(lease + time.Millisecond) // past the last hung calls' lease

		if n := expired.Load(); n != 20 {
			t.Fatalf("%d leases expired, want the 20 hung calls'", n)
		}
		// A bare-token credential whose calls hang: at most its cap of
		// calls run, lease over or not.
		bare := &provider{name: "bare"}
		for range 5 {
			hang(bare)
		}
		time.Sleep(10 * lease)
		mu.Lock()
		n := len(held)
		mu.Unlock()
		if n != 20+slots/8 {
			t.Fatalf("%d calls running, want the 20 hung ones and the bare credential's cap of %d", n, slots/8)
		}
		cancel()
		wg.Wait()
		for _, s := range held {
			s.release()
		}
		if l.queued() != 0 || l.free != slots || len(l.running) != 0 {
			t.Fatalf("after all calls: %d queued, %d free, %d running", l.queued(), l.free, len(l.running))
		}
	})
}
