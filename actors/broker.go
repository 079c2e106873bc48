// Package actors runs tokenbroker's protoactor-go actors: one provider actor
// per credential, owning its source and cached token and applying the
// refresh policy; one session actor per runtime session, routing token
// requests to its providers by name; and a Router per runtime connection
// mapping session ids to sessions.
//
// The hot path does not cross an actor when the cache can answer: a provider
// actor publishes an immutable snapshot of its token that Router.Acquire
// reads, and only misses (cold, stale, bare, failing) become messages.
package actors

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/internal/requestobs"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
)

// DefaultRequestTimeout bounds a token request that has to wait for a
// credential.
const DefaultRequestTimeout = 30 * time.Second

// Options configure a Broker. The zero value is usable.
type Options struct {
	// Logger receives tokenbroker's and protoactor-go's logs. Nil: silent.
	Logger *slog.Logger
	// Policy is the token refresh policy. Nil: tokens.DefaultPolicy(); a
	// policy given has its zero fields set to the defaults (see
	// tokens.Policy.Normalize: jitter stays off unless set).
	Policy *tokens.Policy
	// RequestTimeout bounds each token request that must wait for its
	// credential. Zero: DefaultRequestTimeout.
	RequestTimeout time.Duration
	// MaxConcurrentCalls bounds the credential calls running at once,
	// across all credentials, to shape the storm of a cold start; calls
	// beyond it wait their turn, credential by credential, and no
	// credential runs more than an eighth of them. A call gives its slot
	// back when it returns or after 250 ms, whichever is first: a hung
	// identity endpoint keeps running its own calls, to their deadline,
	// but not other tenants' out. A call's RefreshTimeout starts when it
	// has a slot. Zero: DefaultMaxConcurrentCalls.
	MaxConcurrentCalls int
	// Clock and Rand replace the real clock and random draws in tests.
	Clock tokens.Clock
	Rand  func() float64
	// TracerProvider and MeterProvider default to the global ones.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

// Broker owns the actor system, the shared credentials and the routers of
// every runtime connection. Close releases all of it.
type Broker struct {
	system   *actor.ActorSystem
	root     *actor.RootContext
	log      *slog.Logger
	policy   tokens.Policy
	timeout  time.Duration
	clock    tokens.Clock
	rand     func() float64
	tp       trace.TracerProvider
	mp       metric.MeterProvider
	tracer   trace.Tracer
	metrics  *instruments
	requests *requestobs.Recorder // of Credential.BearerToken's requests

	calls *callLimiter

	ctx    context.Context // cancelled by Close: ends every credential call
	cancel context.CancelFunc
	shut   atomic.Bool // Close has begun: refusals say "broker closed"

	live    sync.WaitGroup // actors spawned and not yet stopped
	running sync.WaitGroup // credential calls in progress

	mu      sync.Mutex
	closed  bool
	routers map[*Router]struct{}
	creds   map[*Credential]struct{}

	sessionsOpen  atomic.Int64
	providersLive atomic.Int64
}

// NewBroker starts a broker.
func NewBroker(opts Options) *Broker {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	policy := tokens.DefaultPolicy()
	if opts.Policy != nil {
		policy = opts.Policy.Normalize()
	}
	b := &Broker{
		log:     log,
		policy:  policy,
		timeout: opts.RequestTimeout,
		clock:   opts.Clock,
		rand:    opts.Rand,
		routers: map[*Router]struct{}{},
		creds:   map[*Credential]struct{}{},
	}
	if b.timeout <= 0 {
		b.timeout = DefaultRequestTimeout
	}
	slots := opts.MaxConcurrentCalls
	if slots <= 0 {
		slots = DefaultMaxConcurrentCalls
	}
	if b.clock == nil {
		b.clock = tokens.SystemClock()
	}
	if b.rand == nil {
		b.rand = tokens.RandomDraw
	}
	b.tp, b.mp = opts.TracerProvider, opts.MeterProvider
	if b.tp == nil {
		b.tp = otel.GetTracerProvider()
	}
	if b.mp == nil {
		b.mp = otel.GetMeterProvider()
	}
	b.tracer = b.tp.Tracer(tracing.InstrumentationName)
	b.calls = newCallLimiter(slots, callLease, b.clock, func() { b.metrics.leaseExpired() })
	b.metrics = newInstruments(b.mp.Meter(tracing.InstrumentationName), b)
	b.requests = requestobs.New(b.tp, b.mp)
	b.ctx, b.cancel = context.WithCancel(context.Background())
	actorLog := slog.New(typesOnly{log.With("lib", "protoactor").Handler()})
	b.system = actor.NewActorSystem(
		actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return actorLog }),
		// Token requests never carry a protoactor sender; a dead letter is
		// worth a debug line at most.
		actor.WithDeadLetterRequestLogging(false),
	)
	b.root = b.system.Root
	return b
}

// Logger returns the logger the broker was given (a silent one by default).
func (b *Broker) Logger() *slog.Logger { return b.log }

// Policy returns the refresh policy in force.
func (b *Broker) Policy() tokens.Policy { return b.policy }

// NewRouter returns the session registry of one runtime connection. Token
// requests arriving on that connection must be answered through it and no
// other: a session opened on one Router is unknown to every other.
func (b *Broker) NewRouter() *Router {
	r := &Router{b: b, sessions: map[string]*session{}}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		r.closed = true
		return r
	}
	b.routers[r] = struct{}{}
	return r
}

// closeTimeout bounds how long Close waits for credential calls that ignore
// their context.
const closeTimeout = 5 * time.Second

// Close stops every session, provider and shared credential, cancels the
// credential calls in progress and waits for them and for every actor to
// stop. It returns an error if a credential call ignored its cancellation
// for longer than a few seconds; the broker is closed anyway.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.shut.Store(true)
	routers := make([]*Router, 0, len(b.routers))
	for r := range b.routers {
		routers = append(routers, r)
	}
	creds := make([]*Credential, 0, len(b.creds))
	for c := range b.creds {
		creds = append(creds, c)
	}
	b.mu.Unlock()

	for _, r := range routers {
		r.Close()
	}
	for _, c := range creds {
		c.Close()
	}
	b.cancel()
	b.live.Wait()
	var err error
	if !waitTimeout(&b.running, closeTimeout) {
		err = fmt.Errorf("tokenbroker: credential calls still running %s after Close: a Source ignores its context", closeTimeout)
	}
	b.system.Shutdown()
	b.metrics.close()
	return err
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// closedError is the refusal of a request that what's closing ended; once
// the broker is closing, that is the cause to name.
func (b *Broker) closedError(what string) error {
	if b.shut.Load() {
		return closedError("broker")
	}
	return closedError(what)
}

func (b *Broker) forget(r *Router) {
	b.mu.Lock()
	delete(b.routers, r)
	b.mu.Unlock()
}

// spawn starts an actor under the root and tracks it until it stops.
func (b *Broker) spawn(props *actor.Props) *actor.PID {
	b.live.Add(1)
	return b.root.Spawn(props)
}

// typesOnly keeps message contents out of protoactor's logs. It logs a dead
// letter with the undelivered message itself, and ours can carry a token
// (a credential's answer reaching a provider whose session just closed),
// which slog's text handler would print field by field. Arbitrary values
// are logged by type; errors and PIDs keep their text.
type typesOnly struct{ slog.Handler }

func (h typesOnly) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(typeOnly(a))
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h typesOnly) WithAttrs(as []slog.Attr) slog.Handler {
	safe := make([]slog.Attr, len(as))
	for i, a := range as {
		safe[i] = typeOnly(a)
	}
	return typesOnly{h.Handler.WithAttrs(safe)}
}

func (h typesOnly) WithGroup(name string) slog.Handler { return typesOnly{h.Handler.WithGroup(name)} }

func typeOnly(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindAny:
		switch x := v.Any().(type) {
		case *actor.PID:
			return slog.String(a.Key, x.String())
		case error:
			return slog.String(a.Key, x.Error())
		}
		return slog.String(a.Key, fmt.Sprintf("%T", v.Any()))
	case slog.KindGroup:
		g := v.Group()
		safe := make([]any, len(g))
		for i, ga := range g {
			safe[i] = typeOnly(ga)
		}
		return slog.Group(a.Key, safe...)
	}
	return slog.Attr{Key: a.Key, Value: v}
}
