package actors

import (
	"context"
	"sync"
)

// DefaultMaxConcurrentCalls bounds the credential calls a broker runs at
// once (Options.MaxConcurrentCalls).
const DefaultMaxConcurrentCalls = 64

// callLimiter bounds the credential calls running at once, broker-wide. A
// multi-tenant host that restarts resumes thousands of sessions on hundreds
// of credentials at once; without it, every one of them calls its identity
// endpoint in the same second.
//
// It is fair across credentials: waiting calls queue per credential and
// the credentials take turns at each free slot, and no credential runs
// more than an eighth of the slots (only a source of bare tokens makes
// more than one call at a time), so a slow or hung identity endpoint holds
// a few slots at most while the others keep being served.
type callLimiter struct {
	mu       sync.Mutex
	free     int
	perOwner int
	running  map[*provider]int
	turns    []*callQueue // credentials with calls waiting, in turn order
	queues   map[*provider]*callQueue
	waiting  int64
}

type callQueue struct {
	owner   *provider
	waiters []*callWaiter
}

type callWaiter struct {
	ready   chan struct{} // closed when the slot is handed over
	granted bool          // under mu: the slot is this waiter's
}

func newCallLimiter(slots int) *callLimiter {
	return &callLimiter{
		free:     slots,
		perOwner: max(1, slots/8),
		running:  map[*provider]int{},
		queues:   map[*provider]*callQueue{},
	}
}

// acquire waits for a slot for a call of owner, or for ctx to end. On nil
// the caller must release the slot.
func (l *callLimiter) acquire(ctx context.Context, owner *provider) error {
	w := &callWaiter{ready: make(chan struct{})}
	l.mu.Lock()
	q := l.queues[owner]
	if q == nil {
		q = &callQueue{owner: owner}
		l.queues[owner] = q
		l.turns = append(l.turns, q)
	}
	q.waiters = append(q.waiters, w)
	l.waiting++
	l.dispatch()
	l.mu.Unlock()

	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.granted {
		// Handed a slot as ctx ended: pass it on.
		l.free++
		l.done(owner)
		return ctx.Err()
	}
	l.remove(q, w)
	return ctx.Err()
}

// release frees owner's slot for the credential whose turn it is.
func (l *callLimiter) release(owner *provider) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.free++
	l.done(owner)
}

// done counts one call of owner less and hands out free slots. Called with
// mu held.
func (l *callLimiter) done(owner *provider) {
	if l.running[owner]--; l.running[owner] == 0 {
		delete(l.running, owner)
	}
	l.dispatch()
}

// dispatch hands free slots to the first waiter of each credential in
// turn, skipping credentials at their cap; a credential served goes to the
// back of the line. Called with mu held.
func (l *callLimiter) dispatch() {
	for l.free > 0 {
		i := 0
		for i < len(l.turns) && l.running[l.turns[i].owner] >= l.perOwner {
			i++
		}
		if i == len(l.turns) {
			return
		}
		q := l.turns[i]
		l.turns = append(l.turns[:i], l.turns[i+1:]...)
		w := q.waiters[0]
		q.waiters = q.waiters[1:]
		if len(q.waiters) > 0 {
			l.turns = append(l.turns, q)
		} else {
			delete(l.queues, q.owner)
		}
		l.free--
		l.waiting--
		l.running[q.owner]++
		w.granted = true
		close(w.ready)
	}
}

// remove drops a waiter that gave up. Called with mu held.
func (l *callLimiter) remove(q *callQueue, w *callWaiter) {
	for i, x := range q.waiters {
		if x == w {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			l.waiting--
			break
		}
	}
	if len(q.waiters) > 0 {
		return
	}
	delete(l.queues, q.owner)
	for i, x := range l.turns {
		if x == q {
			l.turns = append(l.turns[:i], l.turns[i+1:]...)
			break
		}
	}
}

// queued is the number of calls waiting for a slot.
func (l *callLimiter) queued() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiting
}
