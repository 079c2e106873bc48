package actors

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// provider is the handle shared by the hot path and the provider actor. Its
// immutable fields are set before the actor starts; the snapshot is written
// only by the actor.
type provider struct {
	b      *Broker
	name   string
	scope  string
	src    tokens.Source
	shared *Credential // nil for a per-session provider

	snap    atomic.Pointer[snapshot]
	lastUse atomic.Int64 // unix nanoseconds of the latest request
	// epoch counts invalidations. Invalidate bumps it before returning, and
	// neither the hot path nor the actor serves a token fetched in an
	// earlier epoch: no request that starts after Invalidate returns gets
	// the dropped token, whichever way its messages travel.
	epoch atomic.Uint64
	// rejectedEpoch is the epoch that Router.Rejected started by dropping a
	// rejected token: a token fetched in it replaces a rejected one.
	rejectedEpoch atomic.Uint64
	gens          atomic.Uint64 // tokens fetched, numbering them for Grant.gen
	closed        atomic.Bool   // a shared credential's Close: serve nothing more
	// slotWaiters counts this provider's calls waiting for a slot of the
	// broker's call limit.
	slotWaiters atomic.Int32

	servedState atomic.Pointer[servedTokens] // nil until the first token: see served
}

// snapshot is what the actor publishes for lock-free cache hits.
type snapshot struct {
	tok       tokens.Token
	gen       uint64
	obtained  time.Time
	refreshAt time.Time
	staleAt   time.Time
	epoch     uint64
	self      *actor.PID
	nudged    atomic.Bool // a background refresh was asked for
	// replacesRejected: fetched because the model provider rejected the
	// token before it. If it is rejected too, a fresh token will not help.
	replacesRejected bool
}

// cached serves a token without a message when the snapshot allows it, and
// asks the actor for a background refresh once the refresh point passed;
// that refresh's span links to the span in trigger.
func (p *provider) cached(trigger context.Context, now time.Time) (Grant, bool) {
	s := p.snap.Load()
	if s == nil || !now.Before(s.staleAt) || s.epoch != p.epoch.Load() {
		return Grant{}, false
	}
	p.touch(now)
	if !now.Before(s.refreshAt) && s.nudged.CompareAndSwap(false, true) {
		p.b.root.Send(s.self, refreshDue{link: trace.SpanContextFromContext(trigger)})
	}
	return Grant{Token: s.tok, Outcome: OutcomeHit, gen: s.gen}, true
}

// afterRejection reports whether epoch began with Router.Rejected dropping
// a token (epochs start at 0, and the first drop makes 1).
func (p *provider) afterRejection(epoch uint64) bool {
	return epoch != 0 && epoch == p.rejectedEpoch.Load()
}

// rejected drops the cached token numbered gen, which the model provider
// rejected, so that the next request fetches a fresh one; see
// Router.Rejected. Of many reports of one token, one drops it. A token
// fetched to replace a rejected one is not dropped: the provider refuses
// the identity, not the token, and each drop would cost an identity call.
func (p *provider) rejected(gen uint64, now time.Time) error {
	s := p.snap.Load()
	if gen == 0 || s == nil || s.gen != gen || s.epoch != p.epoch.Load() {
		return nil // bare, or no longer cached: the next request gets another token
	}
	if s.replacesRejected {
		return rejectedAgain(now.Sub(s.obtained))
	}
	if p.snap.CompareAndSwap(s, nil) {
		p.rejectedEpoch.Store(p.epoch.Add(1))
	}
	return nil
}

// touch records use; it skips the store when the last one is recent so that
// many cores hitting one shared credential do not fight over a cache line.
func (p *provider) touch(now time.Time) {
	n := now.UnixNano()
	if n-p.lastUse.Load() > int64(100*time.Millisecond) {
		p.lastUse.Store(n)
	}
}

// invalidate drops the cached token for every request that starts after it
// returns; the actor notices the new epoch on its next message.
func (p *provider) invalidate() {
	p.epoch.Add(1)
	p.snap.Store(nil)
}

func (p *provider) request(session string) tokens.Request {
	if p.shared != nil {
		session = "" // a shared token belongs to no one session
	}
	return tokens.Request{SessionID: session, ProviderName: p.name, Scope: p.scope}
}

// closedWhat names what closing ends this provider's calls.
func (p *provider) closedWhat() string {
	if p.shared != nil {
		return "shared credential"
	}
	return "session"
}

// Messages the provider actor receives.
type (
	// acquire asks for a token; the reply goes to a buffered channel so the
	// actor never blocks on a caller who gave up.
	acquire struct {
		ctx      context.Context // for trace parentage only; its deadline is the caller's business
		session  string
		provider string // routing key for the session actor
		reply    chan<- reply
	}
	reply struct {
		grant Grant
		err   error
	}
	refreshDue struct{ link trace.SpanContext } // the hot path saw the refresh point pass (the request in link)
	timerDue   struct{ gen uint64 }             // the actor's timer: refresh point or end of back-off
	released   struct{}                         // the last session using a shared credential closed
	callDone   struct {                         // a credential call ended
		id  uint64
		tok tokens.Token
		err error
	}
	callExpired struct{ id uint64 } // a credential call overran RefreshTimeout
)

// The provider actor's state, in the four parts its state machine reads.
type (
	// cachedToken is the last token fetched, while the epoch it was
	// fetched in lasts.
	cachedToken struct {
		tok         tokens.Token
		gen         uint64 // numbers the tokens fetched: see Router.Rejected
		obtained    time.Time
		refreshAt   time.Time
		valid       bool // tok holds a fetched token (perhaps below the floor by now)
		bare        bool // the Source's last token was bare: one call per request
		invalidated bool // dropped by Invalidate, nothing fetched since
	}
	// callInFlight is the one credential call that fills the cache, and
	// the requests waiting for it.
	callInFlight struct {
		id      uint64 // 0 when none runs
		lastID  uint64
		epoch   uint64 // the provider's epoch when it started
		waiters []chan<- reply
	}
	// backoff is the last failure and when the credential may be tried
	// again; requests meanwhile get the failure at once.
	backoff struct {
		failures int       // consecutive; a timeout counts Policy.TimeoutFailures
		since    time.Time // the first of them
		last     error
		until    time.Time
	}
	// timer is the actor's one timer: the refresh point, or the end of a
	// back-off while a valid token is still served. Timers send messages to
	// self rather than use SetReceiveTimeout, which races upstream.
	timer struct {
		gen  uint64 // a timerDue of another generation was cancelled
		stop func() bool
	}
)

func (c *cachedToken) servable(p tokens.Policy, now time.Time) bool {
	return c.valid && p.Servable(c.tok, now)
}

func (k *backoff) active(now time.Time) bool {
	return k.last != nil && now.Before(k.until)
}

// fail starts or extends the back-off. Its window depends on what failed
// (see tokens.Policy): a timeout waits out the floor that covers a
// runtime's retries, any other failure a window that follows the outage.
func (k *backoff) fail(err error, p tokens.Policy, draw float64, now time.Time) {
	if k.last == nil {
		k.since = now
	}
	k.last = err
	if errors.Is(err, ErrTimeout) {
		k.failures += p.TimeoutFailures
		k.until = now.Add(p.TimeoutBackoff(k.failures, draw))
		return
	}
	k.failures++
	k.until = now.Add(p.ErrorBackoff(now.Sub(k.since), draw))
}

// providerActor owns the credential's mutable state; all of it is touched
// only from Receive.
type providerActor struct {
	p       *provider
	session string // a per-session provider's session, from its requests: its Source is asked with it
	epoch   uint64 // the provider epoch the state below belongs to

	cache   cachedToken
	call    callInFlight
	backoff backoff
	timer   timer

	// halt ends this actor's credential calls when it stops (its session
	// or credential closed) or the broker closes: no one is left to use
	// their tokens.
	halt context.Context
	stop context.CancelFunc
}

func newProviderProps(p *provider) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return &providerActor{p: p} })
}

func (a *providerActor) Receive(ctx actor.Context) {
	defer a.recoverPanic(ctx)
	now := a.p.b.clock.Now()
	a.catchUp()
	switch m := ctx.Message().(type) {
	case *acquire:
		a.onAcquire(ctx, m, now)
	case refreshDue:
		a.onRefreshDue(ctx, m.link, now)
	case timerDue:
		if m.gen == a.timer.gen { // not a timer cancelled as it fired
			a.onRefreshDue(ctx, trace.SpanContext{}, now)
		}
	case *callDone:
		a.onCallDone(ctx, m, now)
	case callExpired:
		if m.id == a.call.id {
			a.onCallDone(ctx, &callDone{id: m.id, err: timedOut(a.p.b.policy.RefreshTimeout, nil)}, now)
		}
	case released:
		a.cancelTimer()
	case *actor.Started:
		a.halt, a.stop = context.WithCancel(a.p.b.ctx)
		a.p.b.providersLive.Add(1)
	case *actor.Stopping:
		a.stop()
		a.cancelTimer()
		a.p.snap.Store(nil)
		a.failWaiters(a.p.b.closedError(a.p.closedWhat()))
	case *actor.Stopped:
		a.p.b.providersLive.Add(-1)
		a.p.b.live.Done()
	}
}

// catchUp applies invalidations made since the last message: the cached
// token and the back-off go, so the next request calls the credential.
func (a *providerActor) catchUp() {
	if e := a.p.epoch.Load(); e != a.epoch {
		a.epoch = e
		a.cache = cachedToken{bare: a.cache.bare, invalidated: a.cache.valid || a.cache.invalidated}
		a.backoff = backoff{}
		a.cancelTimer()
	}
}

// recoverPanic keeps a bug in this actor from restarting it silently: the
// waiters get an error instead of waiting for their deadline.
func (a *providerActor) recoverPanic(ctx actor.Context) {
	if v := recover(); v != nil {
		a.p.b.log.Error("tokenbroker: provider actor panicked", "provider", a.p.name, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		err := newError(ErrCredential, nil, "internal error")
		if m, ok := ctx.Message().(*acquire); ok {
			m.reply <- reply{err: err}
		}
		a.failWaiters(err)
		a.call.id = 0
	}
}

func (a *providerActor) onAcquire(ctx actor.Context, m *acquire, now time.Time) {
	p, policy := a.p, a.p.b.policy
	p.touch(now)
	if m.session != "" {
		a.session = m.session
	}
	switch {
	case p.closed.Load():
		m.reply <- reply{err: p.b.closedError(p.closedWhat())}
		return
	case a.cache.servable(policy, now):
		m.reply <- reply{grant: Grant{Token: a.cache.tok, Outcome: OutcomeHit, gen: a.cache.gen}}
		if a.call.id == 0 && !now.Before(a.cache.refreshAt) && !a.backoff.active(now) {
			a.startCall(ctx, reasonProactive, m.ctx, true)
		}
		return
	case a.backoff.active(now):
		m.reply <- reply{err: backingOff(a.backoff.last, a.backoff.until, now)}
		return
	case a.cache.bare:
		a.callBare(m)
		return
	}
	a.call.waiters = append(a.call.waiters, m.reply)
	if a.call.id != 0 {
		return // coalesced; the outcome is settled when the call ends
	}
	reason := reasonCold
	switch {
	case a.backoff.last != nil:
		reason = reasonRetry
	case a.cache.invalidated && a.p.afterRejection(a.epoch):
		reason = reasonRejected
	case a.cache.invalidated:
		reason = reasonInvalidated
	case a.cache.valid:
		reason = reasonExpired
	}
	a.startCall(ctx, reason, m.ctx, false)
}

// onRefreshDue starts a background refresh if the provider is still in use:
// an abandoned provider stops refreshing and costs nothing. link is the
// request that noticed the refresh was due, if one did.
func (a *providerActor) onRefreshDue(ctx actor.Context, link trace.SpanContext, now time.Time) {
	if a.call.id != 0 || a.backoff.active(now) || !a.cache.valid || a.p.closed.Load() || !a.inUse() {
		return
	}
	reason := reasonProactive
	if a.backoff.last != nil {
		reason = reasonRetry
	}
	a.startCall(ctx, reason, trace.ContextWithSpanContext(context.Background(), link), true)
}

// inUse: used since the current token was obtained, and for a shared
// credential, still referenced by at least one session or its owner.
func (a *providerActor) inUse() bool {
	if c := a.p.shared; c != nil && c.refs.Load() <= 0 {
		return false
	}
	return a.p.lastUse.Load() > a.cache.obtained.UnixNano()
}

// startCall runs the credential call that fills the cache in its own
// goroutine, detached from any caller's cancellation. Its RefreshTimeout
// starts once the broker's call limit lets it run: waiting for a slot is
// not the credential's fault.
func (a *providerActor) startCall(ctx actor.Context, reason reason, trigger context.Context, background bool) {
	a.call.lastID++
	id := a.call.lastID
	a.call.id, a.call.epoch = id, a.p.epoch.Load()
	b, p, halt, self := a.p.b, a.p, a.halt, ctx.Self()
	spec := callSpec{reason: reason, session: a.session, trigger: trigger, background: background}
	b.running.Add(1)
	go func() {
		defer b.running.Done()
		var stopDeadline func() bool
		tok, err := b.runSource(p, spec, halt, func() {
			// For a Source that ignores its context; a stopped actor
			// needs no word of it.
			stopDeadline = b.clock.AfterFunc(b.policy.RefreshTimeout, func() {
				if halt.Err() == nil {
					b.root.Send(self, callExpired{id: id})
				}
			})
		})
		if stopDeadline != nil {
			stopDeadline()
		}
		b.root.Send(self, &callDone{id: id, tok: tok, err: err})
	}()
}

// callBare gets a single-use token for one request.
func (a *providerActor) callBare(m *acquire) {
	b, p, halt := a.p.b, a.p, a.halt
	spec := callSpec{reason: reasonBare, session: m.session, trigger: m.ctx}
	b.running.Add(1)
	go func() {
		defer b.running.Done()
		tok, err := b.runSource(p, spec, halt, nil)
		if err != nil {
			m.reply <- reply{err: err}
			return
		}
		m.reply <- reply{grant: Grant{Token: tok, Outcome: OutcomeBare}}
	}()
}

func (a *providerActor) onCallDone(ctx actor.Context, m *callDone, now time.Time) {
	if m.id != a.call.id {
		return // a call that overran its deadline; its waiters were answered
	}
	a.call.id = 0
	b := a.p.b
	if m.err != nil {
		a.backoff.fail(m.err, b.policy, b.rand(), now)
		a.failWaiters(m.err)
		// With a still-valid token, keep serving it and retry in the background.
		if a.cache.servable(b.policy, now) {
			a.schedule(ctx, a.backoff.until.Sub(now))
		}
		return
	}
	if a.call.epoch != a.epoch {
		// Invalidated while the call ran: its token may be the one revoked.
		if len(a.call.waiters) > 0 && !a.p.closed.Load() {
			a.startCall(ctx, reasonInvalidated, context.Background(), false)
		}
		return
	}
	a.backoff = backoff{}
	if m.tok.Bare() {
		a.cache = cachedToken{bare: true}
		a.p.snap.Store(nil)
		a.cancelTimer()
		a.serveBare(m.tok)
		return
	}
	refreshAt := b.policy.RefreshAt(m.tok, now, b.rand())
	gen := a.p.gens.Add(1)
	// The first token since a rejection dropped the cache replaces the
	// rejected one; later ones are refreshed on schedule.
	replaces := a.cache.invalidated && a.p.afterRejection(a.epoch)
	a.cache = cachedToken{tok: m.tok, gen: gen, obtained: now, refreshAt: refreshAt, valid: true}
	a.p.snap.Store(&snapshot{
		tok: m.tok, gen: gen, obtained: now, refreshAt: refreshAt, staleAt: b.policy.StaleAt(m.tok), epoch: a.epoch, self: ctx.Self(),
		replacesRejected: replaces,
	})
	// A freshly fetched token goes to its waiters even below the floor:
	// nothing fresher exists.
	for i, w := range a.call.waiters {
		outcome := OutcomeCoalesced
		if i == 0 {
			outcome = OutcomeRefreshed
		}
		w <- reply{grant: Grant{Token: m.tok, Outcome: outcome, gen: gen}}
	}
	a.call.waiters = a.call.waiters[:0]
	a.schedule(ctx, refreshAt.Sub(now))
}

// serveBare hands a single-use token to the first waiter and fetches one
// for each of the others.
func (a *providerActor) serveBare(tok tokens.Token) {
	waiters := a.call.waiters
	a.call.waiters = nil
	for i, w := range waiters {
		if i == 0 {
			w <- reply{grant: Grant{Token: tok, Outcome: OutcomeBare}}
			continue
		}
		a.callBare(&acquire{ctx: context.Background(), session: a.session, reply: w})
	}
}

func (a *providerActor) failWaiters(err error) {
	for _, w := range a.call.waiters {
		w <- reply{err: err}
	}
	a.call.waiters = a.call.waiters[:0]
}

// schedule arms the actor's one timer.
func (a *providerActor) schedule(ctx actor.Context, d time.Duration) {
	a.cancelTimer()
	msg, self, root := timerDue{gen: a.timer.gen}, ctx.Self(), a.p.b.root
	a.timer.stop = a.p.b.clock.AfterFunc(max(d, 0), func() { root.Send(self, msg) })
}

func (a *providerActor) cancelTimer() {
	if a.timer.stop != nil {
		a.timer.stop()
		a.timer.stop = nil
	}
	a.timer.gen++
}
