package actors

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// A credential with many slow calls (a source of bare tokens behind a hung
// endpoint) holds at most its cap of slots; fifty other credentials are
// served beside it in the slots left, and nobody exceeds the limit.
func TestCallLimiterFairAcrossCredentials(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const slots = 16
		l := newCallLimiter(slots)
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
			if err := l.acquire(context.Background(), p); err != nil {
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
			l.release(p)
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
		l := newCallLimiter(1)
		a, b := &provider{name: "a"}, &provider{name: "b"}
		if err := l.acquire(context.Background(), a); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := l.acquire(ctx, b); err == nil {
			t.Fatal("a waiter got a slot held by another")
		}
		if l.queued() != 0 || len(l.turns) != 0 || len(l.queues) != 0 {
			t.Fatalf("a waiter that gave up is still queued: %d", l.queued())
		}
		got := make(chan error, 1)
		go func() { got <- l.acquire(context.Background(), b) }()
		synctest.Wait()
		l.release(a)
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		l.release(b)
		if l.free != 1 || len(l.running) != 0 {
			t.Fatalf("%d free, %d running", l.free, len(l.running))
		}
	})
}
