package actors

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
)

// Outcome says how a token request was served.
type Outcome uint8

const (
	OutcomeError     Outcome = iota
	OutcomeHit               // served from the cache
	OutcomeCoalesced         // joined a refresh another request started
	OutcomeRefreshed         // started the refresh that served it
	OutcomeBare              // a single-use token fetched for this request
)

func (o Outcome) String() string {
	switch o {
	case OutcomeHit:
		return "hit"
	case OutcomeCoalesced:
		return "coalesced"
	case OutcomeRefreshed:
		return "refreshed"
	case OutcomeBare:
		return "bare"
	}
	return "error"
}

// Reason says why a credential was called.
type Reason uint8

const (
	ReasonCold        Reason = iota // nothing cached yet
	ReasonProactive                 // past the refresh point, token still valid
	ReasonExpired                   // cached token past the floor
	ReasonInvalidated               // cache dropped by Invalidate
	ReasonRetry                     // background retry after a failure
	ReasonBare                      // single-use token
)

func (r Reason) String() string {
	return [...]string{"cold", "proactive", "expired", "invalidated", "retry", "bare"}[r]
}

// Grant is a served token and how it was served.
type Grant struct {
	Token   tokens.Token
	Outcome Outcome
}

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
}

// snapshot is what the actor publishes for lock-free cache hits.
type snapshot struct {
	tok       tokens.Token
	refreshAt time.Time
	staleAt   time.Time
	self      *actor.PID
	nudged    atomic.Bool // a background refresh was asked for
}

// cached serves a token without a message when the snapshot allows it, and
// asks the actor for a background refresh once the refresh point passed;
// that refresh's span links to the span in trigger.
func (p *provider) cached(trigger context.Context, now time.Time) (tokens.Token, bool) {
	s := p.snap.Load()
	if s == nil || !now.Before(s.staleAt) {
		return tokens.Token{}, false
	}
	p.touch(now)
	if !now.Before(s.refreshAt) && s.nudged.CompareAndSwap(false, true) {
		p.b.root.Send(s.self, refreshDue{link: trace.SpanContextFromContext(trigger)})
	}
	return s.tok, true
}

// touch records use; it skips the store when the last one is recent so that
// many cores hitting one shared credential do not fight over a cache line.
func (p *provider) touch(now time.Time) {
	n := now.UnixNano()
	if n-p.lastUse.Load() > int64(100*time.Millisecond) {
		p.lastUse.Store(n)
	}
}

func (p *provider) request(session string) tokens.Request {
	if p.shared != nil {
		session = "" // a shared token belongs to no one session
	}
	return tokens.Request{SessionID: session, ProviderName: p.name, Scope: p.scope}
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
	invalidate struct{}                         // drop the cached token
	released   struct{}                         // the last session using a shared credential closed
	fetchDone  struct {                         // a credential call ended
		id  uint64
		tok tokens.Token
		err error
	}
	fetchExpired struct{ id uint64 } // a credential call overran RefreshTimeout
)

// providerActor owns the credential's mutable state. All fields are
// touched only from Receive.
type providerActor struct {
	p       *provider
	session string // a per-session provider's session, from its requests: its Source is asked with it

	tok      tokens.Token
	obtained time.Time
	have     bool
	bare     bool // the source's last token was bare: fetch per request

	flight      uint64 // id of the refresh in progress, 0 when none
	flightTimer func() bool
	refetch     bool // invalidated while the refresh was running: its token may be the revoked one
	nextID      uint64
	waiters     []chan<- reply
	invalidated bool

	// halt ends this actor's credential calls when it stops (its session
	// closed) or the broker closes: no one is left to use their tokens.
	halt context.Context
	stop context.CancelFunc

	failures int
	lastErr  error
	retryAt  time.Time

	timerGen  uint64
	stopTimer func() bool
}

func newProviderProps(p *provider) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return &providerActor{p: p} })
}

func (a *providerActor) Receive(ctx actor.Context) {
	defer a.recoverPanic(ctx)
	now := a.p.b.clock.Now()
	switch m := ctx.Message().(type) {
	case *acquire:
		a.onAcquire(ctx, m, now)
	case refreshDue:
		a.onRefreshDue(ctx, m.link, now)
	case timerDue:
		if m.gen == a.timerGen { // not a timer cancelled as it fired
			a.onRefreshDue(ctx, trace.SpanContext{}, now)
		}
	case *fetchDone:
		a.onFetchDone(ctx, m, now)
	case fetchExpired:
		if m.id == a.flight {
			a.onFetchDone(ctx, &fetchDone{id: m.id, err: newError(ErrTimeout, nil,
				"credential did not answer within %s", a.p.b.policy.RefreshTimeout)}, now)
		}
	case invalidate:
		a.refetch = a.flight != 0
		a.have, a.invalidated = false, true
		a.failures, a.lastErr = 0, nil
		a.cancelTimer()
		a.p.snap.Store(nil)
	case released:
		a.cancelTimer()
	case *actor.Started:
		a.halt, a.stop = context.WithCancel(a.p.b.ctx)
		a.p.b.providersLive.Add(1)
	case *actor.Stopping:
		a.stop()
		a.cancelTimer()
		if a.flightTimer != nil {
			a.flightTimer()
		}
		a.p.snap.Store(nil)
		a.failWaiters(closedError("provider"))
	case *actor.Stopped:
		a.p.b.providersLive.Add(-1)
		a.p.b.live.Done()
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
		a.flight = 0
	}
}

func (a *providerActor) onAcquire(ctx actor.Context, m *acquire, now time.Time) {
	p := a.p
	p.touch(now)
	if m.session != "" {
		a.session = m.session
	}
	policy := p.b.policy
	if a.have && policy.Servable(a.tok, now) {
		m.reply <- reply{grant: Grant{Token: a.tok, Outcome: OutcomeHit}}
		if a.flight == 0 && !now.Before(a.refreshAt()) && !a.backingOff(now) {
			a.startFetch(ctx, ReasonProactive, m.ctx, true)
		}
		return
	}
	if a.backingOff(now) {
		m.reply <- reply{err: newError(ErrBackoff, a.lastErr, "%s (next try in %s)",
			a.lastErr.Error(), a.retryAt.Sub(now).Round(time.Millisecond))}
		return
	}
	if a.bare {
		a.fetchBare(m)
		return
	}
	a.waiters = append(a.waiters, m.reply)
	if a.flight != 0 {
		return // coalesced; the outcome is settled when the refresh ends
	}
	reason := ReasonCold
	switch {
	case a.lastErr != nil:
		reason = ReasonRetry
	case a.invalidated:
		reason = ReasonInvalidated
	case a.have:
		reason = ReasonExpired
	}
	a.startFetch(ctx, reason, m.ctx, false)
}

func (a *providerActor) backingOff(now time.Time) bool {
	return a.lastErr != nil && now.Before(a.retryAt)
}

func (a *providerActor) refreshAt() time.Time {
	if s := a.p.snap.Load(); s != nil {
		return s.refreshAt
	}
	return a.obtained
}

// onRefreshDue starts a background refresh if the provider is still in use:
// an abandoned provider stops refreshing and costs nothing. link is the
// request that noticed the refresh was due, if one did.
func (a *providerActor) onRefreshDue(ctx actor.Context, link trace.SpanContext, now time.Time) {
	if a.flight != 0 || a.backingOff(now) || !a.have {
		return
	}
	if !a.inUse() {
		return
	}
	reason := ReasonProactive
	if a.lastErr != nil {
		reason = ReasonRetry
	}
	a.startFetch(ctx, reason, trace.ContextWithSpanContext(context.Background(), link), true)
}

// inUse: used since the current token was obtained, and for a shared
// credential, still referenced by at least one session or its owner.
func (a *providerActor) inUse() bool {
	if c := a.p.shared; c != nil && c.refs.Load() <= 0 {
		return false
	}
	return a.p.lastUse.Load() > a.obtained.UnixNano()
}

// startFetch calls the source in its own goroutine, detached from any
// caller's cancellation, bounded by the policy's RefreshTimeout.
func (a *providerActor) startFetch(ctx actor.Context, reason Reason, trigger context.Context, background bool) {
	a.nextID++
	a.flight = a.nextID
	id := a.flight
	b := a.p.b
	self := ctx.Self()
	a.flightTimer = b.clock.AfterFunc(b.policy.RefreshTimeout, func() { b.root.Send(self, fetchExpired{id: id}) })
	b.fetches.Add(1)
	p, session, halt := a.p, a.session, a.halt
	go func() {
		defer b.fetches.Done()
		tok, err := b.runSource(p, trigger, halt, reason, background, session)
		b.root.Send(self, &fetchDone{id: id, tok: tok, err: err})
	}()
}

// fetchBare gets a single-use token for one request.
func (a *providerActor) fetchBare(m *acquire) {
	b, p, halt := a.p.b, a.p, a.halt
	b.fetches.Add(1)
	go func() {
		defer b.fetches.Done()
		tok, err := b.runSource(p, m.ctx, halt, ReasonBare, false, m.session)
		if err != nil {
			m.reply <- reply{err: err}
			return
		}
		m.reply <- reply{grant: Grant{Token: tok, Outcome: OutcomeBare}}
	}()
}

// runSource makes one credential call with its own deadline and span, and
// turns a panic, an error or an invalid token into a readable error. The
// call ends early when halt does.
func (b *Broker) runSource(p *provider, trigger, halt context.Context, reason Reason, background bool, session string) (tok tokens.Token, err error) {
	if trigger == nil {
		trigger = context.Background()
	}
	var ctx context.Context
	var span trace.Span
	attrs := trace.WithAttributes(
		tracing.ProviderName.String(p.name),
		tracing.RefreshReason.String(reason.String()),
		tracing.Shared.Bool(p.shared != nil),
	)
	if background {
		// A background refresh serves whoever comes next, not the request
		// that noticed it was due: a new trace, linked to that request.
		link := trace.LinkFromContext(trigger)
		ctx, span = b.tracer.Start(context.Background(), tracing.SpanRefresh, attrs, trace.WithNewRoot(), trace.WithLinks(link))
	} else {
		ctx, span = b.tracer.Start(context.WithoutCancel(trigger), tracing.SpanRefresh, attrs)
	}
	defer span.End()
	ctx, cancel := context.WithTimeout(ctx, b.policy.RefreshTimeout)
	defer cancel()
	stop := context.AfterFunc(halt, cancel)
	defer stop()

	start := time.Now()
	tok, err = callSafely(ctx, p.src, p.request(session))
	if err == nil {
		if verr := tok.Validate(); verr != nil {
			err = newError(ErrInvalidToken, verr, "credential returned an invalid token: %s", trimPrefix(verr.Error()))
			tok = tokens.Token{}
		}
		// An already-expired token is still handed to its waiters, as the
		// published design's scenario requires: it is never cached (it is
		// not servable), so every request fetches a fresh one.
	} else {
		err = credentialError(ctx, err)
	}
	outcome := tracing.RefreshOK
	if err != nil {
		outcome = tracing.RefreshError
		span.SetStatus(codes.Error, err.Error())
	} else if !tok.Bare() {
		span.SetAttributes(tracing.TokenLifetime.Float64(tok.ExpiresOn.Sub(b.clock.Now()).Seconds()))
	}
	span.SetAttributes(tracing.RefreshOutcome.String(outcome))
	b.metrics.refreshed(reason, outcome, time.Since(start).Seconds())
	switch {
	case errors.Is(err, ErrClosed):
		b.log.Debug("tokenbroker: credential call cancelled", "provider", p.name, "reason", reason.String())
	case err != nil:
		b.log.Warn("tokenbroker: credential call failed", "provider", p.name, "reason", reason.String(), "error", err.Error())
	}
	return tok, err
}

// callSafely runs the source and turns a panic into an error.
func callSafely(ctx context.Context, src tokens.Source, req tokens.Request) (tok tokens.Token, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("credential panicked: %s", panicSummary(v))
		}
	}()
	return src.Token(ctx, req)
}

// panicSummary describes a panic without its value when that value is an
// arbitrary string: it could hold anything, a secret included.
func panicSummary(v any) string {
	if e, ok := v.(error); ok {
		return fmt.Sprintf("%T", e)
	}
	return fmt.Sprintf("%T value", v)
}

func credentialError(ctx context.Context, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return newError(ErrTimeout, err, "credential did not answer within its deadline: %s", redact(err.Error()))
	case ctx.Err() != nil:
		// Its provider stopped (session or credential closed) or the broker
		// is closing: nobody is waiting for this answer any more.
		return newError(ErrClosed, err, "credential call cancelled: provider closed")
	}
	return newError(ErrCredential, err, "credential failed: %s", redact(err.Error()))
}

func (a *providerActor) onFetchDone(ctx actor.Context, m *fetchDone, now time.Time) {
	if m.id != a.flight {
		return // a call that overran its deadline; its waiters were answered
	}
	a.flight = 0
	if a.flightTimer != nil {
		a.flightTimer()
		a.flightTimer = nil
	}
	if m.err != nil {
		a.refetch = false
		a.failures++
		a.lastErr = m.err
		a.retryAt = now.Add(a.p.b.policy.Backoff(a.failures, a.p.b.rand()))
		a.failWaiters(m.err)
		// With a still-valid token, keep serving it and retry in the background.
		if a.have && a.p.b.policy.Servable(a.tok, now) {
			a.schedule(ctx, a.retryAt.Sub(now))
		}
		return
	}
	if a.refetch {
		// Invalidated mid-refresh: this token may be the one revoked.
		a.refetch = false
		if len(a.waiters) > 0 {
			a.startFetch(ctx, ReasonInvalidated, context.Background(), false)
		}
		return
	}
	a.failures, a.lastErr, a.invalidated = 0, nil, false
	if m.tok.Bare() {
		a.bare, a.have = true, false
		a.p.snap.Store(nil)
		a.cancelTimer()
		a.serveBare(m.tok)
		return
	}
	a.bare, a.have = false, true
	a.tok, a.obtained = m.tok, now
	refreshAt := a.p.b.policy.RefreshAt(m.tok, now, a.p.b.rand())
	a.p.snap.Store(&snapshot{tok: m.tok, refreshAt: refreshAt, staleAt: a.p.b.policy.StaleAt(m.tok), self: ctx.Self()})
	// A freshly fetched token goes to its waiters even below the floor:
	// nothing fresher exists.
	for i, w := range a.waiters {
		outcome := OutcomeCoalesced
		if i == 0 {
			outcome = OutcomeRefreshed
		}
		w <- reply{grant: Grant{Token: m.tok, Outcome: outcome}}
	}
	a.waiters = a.waiters[:0]
	a.schedule(ctx, refreshAt.Sub(now))
}

// serveBare hands a single-use token to the first waiter and fetches one
// for each of the others.
func (a *providerActor) serveBare(tok tokens.Token) {
	waiters := a.waiters
	a.waiters = nil
	for i, w := range waiters {
		if i == 0 {
			w <- reply{grant: Grant{Token: tok, Outcome: OutcomeBare}}
			continue
		}
		a.fetchBare(&acquire{ctx: context.Background(), session: a.session, reply: w})
	}
}

func (a *providerActor) failWaiters(err error) {
	for _, w := range a.waiters {
		w <- reply{err: err}
	}
	a.waiters = a.waiters[:0]
}

// schedule arms the one timer this actor keeps. Timers send messages to
// self rather than use SetReceiveTimeout, which races upstream.
func (a *providerActor) schedule(ctx actor.Context, d time.Duration) {
	a.cancelTimer()
	msg, self, root := timerDue{gen: a.timerGen}, ctx.Self(), a.p.b.root
	a.stopTimer = a.p.b.clock.AfterFunc(max(d, 0), func() { root.Send(self, msg) })
}

func (a *providerActor) cancelTimer() {
	if a.stopTimer != nil {
		a.stopTimer()
		a.stopTimer = nil
	}
	a.timerGen++
}
