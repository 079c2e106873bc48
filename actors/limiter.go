package actors

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// DefaultMaxConcurrentCalls bounds the credential calls a broker starts
// within one call lease (Options.MaxConcurrentCalls).
const DefaultMaxConcurrentCalls = 64

// callLease is how long a credential call holds its slot of the broker's
// limit. A managed identity endpoint answers well within it (tens of
// milliseconds); a slower call (Entra ID can take a few hundred) or a stuck
// one keeps running until its own deadline without keeping other tenants'
// calls out, and only lets the next call start early. With 64 slots, calls
// start at 256 per second at least however many hang: 300 hung tenants
// delay a healthy one by about a second, once.
const callLease = 250 * time.Millisecond

// callLimiter shapes cold-start storms. A multi-tenant host that restarts
// resumes thousands of sessions on hundreds of credentials at once;
// without it, every one of them calls its identity endpoint in the same
// second.
//
// A call holds one of the broker-wide slots until it returns or its lease
// ends, whichever is first. It is fair across credentials: waiting calls
// queue per credential and the credentials take turns at each free slot,
// and no credential runs more than an eighth of the slots' number of calls
// (lease over or not: only a source of bare tokens makes more than one
// call at a time), so a hung endpoint neither keeps slots from the others
// nor piles up calls of its own.
type callLimiter struct {
	lease   time.Duration
	clock   tokens.Clock
	expired func() // a call's lease ended before the call did

	slots int

	mu       sync.Mutex
	free     int
	perOwner int
	running  map[*provider]int // calls running per credential, lease over or not
	turns    []*callQueue      // credentials with calls waiting, in turn order
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

// callSlot is a running call's admission: release it when the call ends.
type callSlot struct {
	l         *callLimiter
	owner     *provider
	holds     bool // under l.mu: the call still holds its slot
	stopLease func() bool
}

func newCallLimiter(slots int, lease time.Duration, clock tokens.Clock, expired func()) *callLimiter {
	return &callLimiter{
		lease:    lease,
		clock:    clock,
		expired:  expired,
		slots:    slots,
		free:     slots,
		perOwner: max(1, slots/8),
		running:  map[*provider]int{},
		queues:   map[*provider]*callQueue{},
	}
}

// acquire waits for a slot for a call of owner, or for ctx to end. On nil
// error the caller must release the slot when the call ends.
func (l *callLimiter) acquire(ctx context.Context, owner *provider) (*callSlot, error) {
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
		s := &callSlot{l: l, owner: owner, holds: true}
		s.stopLease = l.clock.AfterFunc(l.lease, s.leaseOver)
		return s, nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.granted {
		// Handed a slot as ctx ended: pass it on.
		l.free++
		l.done(owner)
		return nil, ctx.Err()
	}
	l.remove(q, w)
	return nil, ctx.Err()
}

// leaseOver gives the slot of a call still running to the next waiter.
func (s *callSlot) leaseOver() {
	l := s.l
	l.mu.Lock()
	held := s.holds
	if held {
		s.holds = false
		l.free++
		l.dispatch()
	}
	l.mu.Unlock()
	if held && l.expired != nil {
		l.expired()
	}
}

// release ends the call: its slot, if its lease has not ended, goes to the
// credential whose turn it is. Safe to call more than once.
func (s *callSlot) release() {
	s.stopLease()
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.owner == nil {
		return
	}
	if s.holds {
		s.holds = false
		l.free++
	}
	l.done(s.owner)
	s.owner = nil
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

// busy says what keeps owner's call waiting: all slots held, or owner at
// its cap (only a source of bare tokens makes several calls at once).
func (l *callLimiter) busy(owner *provider) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.running[owner]; n >= l.perOwner {
		return fmt.Sprintf("%s of this credential running, its share of the limit", plural(n, "call"))
	}
	return plural(l.slots-l.free, "call") + " running"
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
