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
// Waiting calls queue per credential and the credentials take turns, so a
// credential with many waiting calls (a source of bare tokens) or a slow
// one cannot keep the others out: each gets the next free slot in turn.
type callLimiter struct {
	mu      sync.Mutex
	free    int
	turns   []*callQueue // credentials with calls waiting, in turn order
	queues  map[*provider]*callQueue
	waiting int64
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
	return &callLimiter{free: slots, queues: map[*provider]*callQueue{}}
}

// acquire waits for a slot for a call of owner, or for ctx to end. On nil
// the caller must release the slot.
func (l *callLimiter) acquire(ctx context.Context, owner *provider) error {
	l.mu.Lock()
	if l.free > 0 && len(l.turns) == 0 {
		l.free--
		l.mu.Unlock()
		return nil
	}
	w := &callWaiter{ready: make(chan struct{})}
	q := l.queues[owner]
	if q == nil {
		q = &callQueue{owner: owner}
		l.queues[owner] = q
		l.turns = append(l.turns, q)
	}
	q.waiters = append(q.waiters, w)
	l.waiting++
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
		l.handOver()
		return ctx.Err()
	}
	l.remove(q, w)
	return ctx.Err()
}

// release frees a slot, handing it to the credential whose turn it is.
func (l *callLimiter) release() {
	l.mu.Lock()
	l.handOver()
	l.mu.Unlock()
}

// handOver gives a free slot to the first waiter of the next credential in
// turn, which then goes to the back of the line. Called with mu held.
func (l *callLimiter) handOver() {
	if len(l.turns) == 0 {
		l.free++
		return
	}
	q := l.turns[0]
	w := q.waiters[0]
	q.waiters = q.waiters[1:]
	l.turns = l.turns[1:]
	if len(q.waiters) > 0 {
		l.turns = append(l.turns, q)
	} else {
		delete(l.queues, q.owner)
	}
	l.waiting--
	w.granted = true
	close(w.ready)
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
