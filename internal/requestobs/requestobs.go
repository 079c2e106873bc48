// Package requestobs records a token request's span and metrics, the same
// whichever door the request came through: the JSON-RPC middleware
// (transport) or the official SDK's token callback (actors). It knows
// nothing of either; callers add their own span attributes.
package requestobs

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/tracing"
)

// Dialect is the door a token request came through.
type Dialect uint8

const (
	Acquire  Dialect = iota // JSON-RPC providerToken.acquire
	GetToken                // JSON-RPC providerToken.getToken
	Callback                // the official SDK's BearerTokenProvider callback
	numDialects
)

var dialects = [numDialects]struct {
	value string // of tracing.Dialect
	span  string
	kind  trace.SpanStartOption
}{
	Acquire:  {tracing.DialectAcquire, tracing.DialectAcquire, trace.WithSpanKind(trace.SpanKindServer)},
	GetToken: {tracing.DialectGetToken, tracing.DialectGetToken, trace.WithSpanKind(trace.SpanKindServer)},
	Callback: {tracing.DialectCallback, tracing.SpanCallback, trace.WithSpanKind(trace.SpanKindInternal)},
}

// outcomes are the values of tracing.Outcome, in the order of the sets
// built for them.
var outcomes = [...]string{tracing.OutcomeError, tracing.OutcomeHit, tracing.OutcomeCoalesced, tracing.OutcomeRefreshed, tracing.OutcomeBare}

// Recorder records token requests to one tracer and meter. It is safe for
// concurrent use.
type Recorder struct {
	tracer    trace.Tracer
	requests  metric.Int64Counter
	duration  metric.Float64Histogram
	remaining metric.Float64Histogram
	sets      [numDialects]dialectSets
}

// dialectSets are one dialect's metric attribute sets, built once: building
// a set sorts and hashes its attributes, which the hot path cannot afford
// per request even when the meter is a no-op. They are kept as the option
// slices Add and Record take, so passing them allocates nothing either.
type dialectSets struct {
	dialect   []metric.RecordOption
	byOutcome [len(outcomes)]outcomeSet
}

type outcomeSet struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

// New returns a Recorder reporting to tp and mp; neither may be nil.
func New(tp trace.TracerProvider, mp metric.MeterProvider) *Recorder {
	r := &Recorder{tracer: tp.Tracer(tracing.InstrumentationName)}
	for i, d := range dialects {
		dv := tracing.Dialect.String(d.value)
		r.sets[i].dialect = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(dv))}
		for o, outcome := range outcomes {
			r.sets[i].byOutcome[o] = newOutcomeSet(dv, tracing.Outcome.String(outcome))
		}
	}
	m := mp.Meter(tracing.InstrumentationName)
	// Instrument constructors only fail on invalid names; ours are constant
	// and valid, and a failed one is a no-op instrument anyway.
	r.requests, _ = m.Int64Counter(tracing.MetricRequests,
		metric.WithDescription("Token requests answered, by dialect and outcome."))
	r.duration, _ = m.Float64Histogram(tracing.MetricRequestDuration,
		metric.WithDescription("Time to answer a token request."), metric.WithUnit("s"))
	r.remaining, _ = m.Float64Histogram(tracing.MetricTokenRemaining,
		metric.WithDescription("Validity left on served tokens."), metric.WithUnit("s"))
	return r
}

// Request is one token request being recorded. End it with Served or
// Failed, exactly once.
type Request struct {
	// Span is the request's span, for the caller's own attributes.
	Span  trace.Span
	r     *Recorder
	d     Dialect
	start time.Time
}

// Start begins recording a request: its span is a child of ctx's, carrying
// the session and provider plus attrs. The returned context carries the span.
func (r *Recorder) Start(ctx context.Context, d Dialect, sessionID, providerName string, attrs ...attribute.KeyValue) (context.Context, Request) {
	start := time.Now()
	ctx, span := r.tracer.Start(ctx, dialects[d].span, dialects[d].kind,
		trace.WithAttributes(attrs...),
		trace.WithAttributes(tracing.SessionID.String(sessionID), tracing.ProviderName.String(providerName)))
	return ctx, Request{Span: span, r: r, d: d, start: start}
}

// Served ends a request answered with a token: outcome is one of the
// tracing.Outcome* values, expiresOn the token's expiry (zero for a bare
// token, which has no remaining validity to report).
func (q Request) Served(ctx context.Context, outcome string, expiresOn time.Time) {
	if expiresOn.IsZero() {
		q.Span.SetAttributes(tracing.Outcome.String(outcome))
	} else {
		left := time.Until(expiresOn).Seconds()
		q.Span.SetAttributes(tracing.Outcome.String(outcome), tracing.RemainingSeconds.Float64(left))
		q.r.remaining.Record(ctx, left, q.r.sets[q.d].dialect...)
	}
	q.end(ctx, outcome)
}

// Failed ends a request answered with an error; message is the error's
// text as the caller shows it (never a token value).
func (q Request) Failed(ctx context.Context, message string) {
	q.Span.SetStatus(codes.Error, message)
	q.Span.SetAttributes(tracing.Outcome.String(tracing.OutcomeError))
	q.end(ctx, tracing.OutcomeError)
}

func (q Request) end(ctx context.Context, outcome string) {
	set := q.r.outcomeSet(q.d, outcome)
	q.r.requests.Add(ctx, 1, set.add...)
	q.r.duration.Record(ctx, time.Since(q.start).Seconds(), set.record...)
	q.Span.End()
}

func (r *Recorder) outcomeSet(d Dialect, outcome string) outcomeSet {
	for i, o := range outcomes {
		if o == outcome {
			return r.sets[d].byOutcome[i]
		}
	}
	// Not one of tracing's values: still counted, at the cost of a set.
	return newOutcomeSet(tracing.Dialect.String(dialects[d].value), tracing.Outcome.String(outcome))
}

func newOutcomeSet(dialect, outcome attribute.KeyValue) outcomeSet {
	opt := metric.WithAttributeSet(attribute.NewSet(dialect, outcome))
	return outcomeSet{add: []metric.AddOption{opt}, record: []metric.RecordOption{opt}}
}
