package actors

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
)

// callSpec says which credential call to make and why.
type callSpec struct {
	reason  reason
	session string          // a per-session provider's session, passed to its Source
	trigger context.Context // the request that caused it, for trace parentage; nil: none
	// background: the call serves whoever comes next, not the trigger: a
	// new trace, linked to the trigger's span.
	background bool
}

// expiredWarnEvery rate-limits the warning about a Source handing out
// expired tokens: it fires on every request such a Source serves.
const expiredWarnEvery = time.Minute

// runSource makes one credential call with its own span, waits for a slot
// of the broker's call limit, bounds the call by RefreshTimeout from the
// moment it has one (started is called then), and turns a panic, an
// error, a timeout or an invalid token into the one message of its kind.
// While it waits for a slot, p.slotWaiters counts it, so that a request
// giving up meanwhile blames the limit, not the credential.
// The call ends early when halt does.
func (b *Broker) runSource(p *provider, c callSpec, halt context.Context, started func()) (tok tokens.Token, err error) {
	trigger := c.trigger
	if trigger == nil {
		trigger = context.Background()
	}
	attrs := trace.WithAttributes(
		tracing.ProviderName.String(p.name),
		tracing.RefreshReason.String(c.reason.String()),
		tracing.Shared.Bool(p.shared != nil),
	)
	var ctx context.Context
	var span trace.Span
	if c.background {
		link := trace.LinkFromContext(trigger)
		ctx, span = b.tracer.Start(context.Background(), tracing.SpanRefresh, attrs, trace.WithNewRoot(), trace.WithLinks(link))
	} else {
		ctx, span = b.tracer.Start(context.WithoutCancel(trigger), tracing.SpanRefresh, attrs)
	}
	defer span.End()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(halt, cancel)
	defer stop()

	start := time.Now()
	p.slotWaiters.Add(1)
	slot, err := b.calls.acquire(ctx, p)
	p.slotWaiters.Add(-1)
	if err == nil {
		if started != nil {
			started()
		}
		callCtx, cancelCall := context.WithTimeout(ctx, b.policy.RefreshTimeout)
		// The call ends for the limiter when it returns or its deadline
		// passes: a Source that ignores its context must not count as
		// running.
		stop := context.AfterFunc(callCtx, slot.release)
		tok, err = callSafely(callCtx, p.src, p.request(c.session))
		if sp, ok := err.(*sourcePanic); ok {
			b.logPanic(p, sp)
		}
		err = b.callError(p, callCtx, tok, err)
		stop()
		slot.release()
		cancelCall()
	} else {
		err = b.closedError(p.closedWhat())
	}
	if err != nil {
		tok = tokens.Token{}
	} else {
		p.remember(tok.Value)
		b.warnIfExpired(p, tok)
	}

	outcome := tracing.RefreshOK
	if err != nil {
		outcome = tracing.RefreshError
		span.SetStatus(codes.Error, err.Error())
	} else if !tok.Bare() {
		span.SetAttributes(tracing.TokenLifetime.Float64(tok.ExpiresOn.Sub(b.clock.Now()).Seconds()))
	}
	span.SetAttributes(tracing.RefreshOutcome.String(outcome))
	b.metrics.refreshed(c.reason, outcome, time.Since(start).Seconds())
	switch {
	case errors.Is(err, ErrClosed):
		b.log.Debug("tokenbroker: credential call cancelled", "provider", p.name, "reason", c.reason.String())
	case err != nil:
		b.log.Warn("tokenbroker: credential call failed", "provider", p.name, "reason", c.reason.String(), "error", err.Error())
	}
	return tok, err
}

// callError maps what the Source returned to the broker's errors. Every
// text taken from the Source is scrubbed of secrets, the tokens this
// provider served recently included.
func (b *Broker) callError(p *provider, ctx context.Context, tok tokens.Token, err error) error {
	switch {
	case err == nil:
		if verr := tok.Validate(); verr != nil {
			return invalidToken(verr)
		}
		return nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The Source's own words add nothing here ("context deadline
		// exceeded", and advice to troubleshoot elsewhere).
		return timedOut(b.policy.RefreshTimeout, err)
	case ctx.Err() != nil:
		// Its provider stopped or the broker is closing: nobody is
		// waiting for this answer any more.
		return b.closedError(p.closedWhat())
	}
	return failed(err, p.scrub(err.Error()))
}

// warnIfExpired logs a Source that hands out tokens already expired: they
// are never cached, so every request calls the Source.
func (b *Broker) warnIfExpired(p *provider, tok tokens.Token) {
	now := b.clock.Now()
	if tok.Bare() || tok.ExpiresOn.After(now) {
		return
	}
	if p.shouldWarnExpired(now) {
		b.log.Warn("tokenbroker: credential returned an expired token; it is not cached, so every request calls the credential",
			"provider", p.name, "expired_for", now.Sub(tok.ExpiresOn).Round(time.Second).String(), "token", tok)
	}
}

// callSafely runs the source and turns a panic into a *sourcePanic.
func callSafely(ctx context.Context, src tokens.Source, req tokens.Request) (tok tokens.Token, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &sourcePanic{value: v, stack: debug.Stack()}
		}
	}()
	return src.Token(ctx, req)
}

// sourcePanic is a Source's panic. Its message, which reaches the runtime,
// names only the panic value's type: the value could hold anything, a
// secret included. The service's log gets the value, scrubbed, and the
// stack (see logPanic).
type sourcePanic struct {
	value any
	stack []byte
}

func (e *sourcePanic) Error() string {
	what := fmt.Sprintf("%T value", e.value)
	if _, ok := e.value.(error); ok {
		what = fmt.Sprintf("%T", e.value)
	}
	return "credential panicked: " + what + " (its value and stack are in the service's log)"
}

// panicLogEvery rate-limits the log of a Source's panics: a Source that
// panics on every call would otherwise log a stack per request.
const panicLogEvery = time.Minute

// logPanic logs a Source's panic with its value, scrubbed of the tokens p
// served and of anything shaped like a secret, and its stack, at most once
// a minute per provider.
func (b *Broker) logPanic(p *provider, sp *sourcePanic) {
	now := b.clock.Now()
	st := p.served()
	st.mu.Lock()
	due := st.loggedPanic.IsZero() || now.Sub(st.loggedPanic) >= panicLogEvery
	if due {
		st.loggedPanic = now
	}
	st.mu.Unlock()
	if due {
		b.log.Error("tokenbroker: credential panicked", "provider", p.name,
			"panic", p.scrub(fmt.Sprint(sp.value)), "stack", p.scrub(string(sp.stack)))
	}
}

// servedTokens is what a provider remembers of the tokens it served: the
// last few values, so that a Source quoting one in an error (the token it
// is asked to replace, say) does not leak it through the broker's
// messages, and when it last warned of an expired one or logged a panic.
// It is allocated with the first token: an idle session's providers carry
// a nil pointer.
type servedTokens struct {
	mu            sync.Mutex
	values        [4]string
	next          int
	warnedExpired time.Time
	loggedPanic   time.Time
}

func (p *provider) served() *servedTokens {
	if st := p.servedState.Load(); st != nil {
		return st
	}
	p.servedState.CompareAndSwap(nil, &servedTokens{})
	return p.servedState.Load()
}

func (p *provider) remember(v string) {
	st := p.served()
	st.mu.Lock()
	defer st.mu.Unlock()
	st.values[st.next] = v
	st.next = (st.next + 1) % len(st.values)
}

// scrub cuts secrets out of a Source's words, the tokens p served
// recently included.
func (p *provider) scrub(s string) string {
	st := p.servedState.Load()
	if st == nil {
		return tokens.Scrub(s)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return tokens.Scrub(s, st.values[:]...)
}

// shouldWarnExpired rate-limits the warning about expired tokens.
func (p *provider) shouldWarnExpired(now time.Time) bool {
	st := p.served()
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.warnedExpired.IsZero() && now.Sub(st.warnedExpired) < expiredWarnEvery {
		return false
	}
	st.warnedExpired = now
	return true
}
