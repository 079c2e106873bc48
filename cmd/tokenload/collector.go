package main

import (
	"context"
	"encoding/binary"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/transport"
)

// outcomes in the order the charts stack them.
var outcomeOrder = []string{tracing.OutcomeHit, tracing.OutcomeCoalesced, tracing.OutcomeRefreshed, tracing.OutcomeBare, tracing.OutcomeError}

// point is one interval of the time series: every series a chart draws.
// Latency quantiles are absent for an interval without samples.
type point struct {
	T    float64 `json:"t_s"`    // end of the interval, seconds since the start
	Span float64 `json:"span_s"` // its length (the last one may be short)

	Requests     uint64             `json:"token_requests"` // answered in the interval
	RequestsPerS float64            `json:"token_requests_per_s"`
	OutcomesPerS map[string]float64 `json:"outcomes_per_s"`
	P50          *float64           `json:"p50_us,omitempty"`
	P90          *float64           `json:"p90_us,omitempty"`
	P99          *float64           `json:"p99_us,omitempty"`

	TokenErrors uint64  `json:"token_request_errors"`
	TurnErrors  uint64  `json:"turn_errors"`
	ErrorsPerS  float64 `json:"errors_per_s"` // both kinds

	Turns     uint64   `json:"turns"`
	TurnsPerS float64  `json:"turns_per_s"`
	TurnP50   *float64 `json:"turn_p50_us,omitempty"`
	TurnP90   *float64 `json:"turn_p90_us,omitempty"`
	TurnP99   *float64 `json:"turn_p99_us,omitempty"`

	// The load loop's operations (turns, or token requests with -runtime
	// direct): in flight at the end of the interval, and the age then of
	// the oldest unfinished one (in the open loop, due and not yet
	// started counts). Started and started late per second in the interval.
	InFlight    int     `json:"operations_in_flight"`
	OldestS     float64 `json:"oldest_unfinished_s"`
	StartedPerS float64 `json:"operations_started_per_s"`
	LatePerS    float64 `json:"operations_started_late_per_s,omitempty"`

	// Credential calls started in the interval and the most in flight at
	// once during it, per provider (index j is provider pj) and in total.
	CredCalls     []uint64  `json:"credential_calls"`
	CredPerS      []float64 `json:"credential_calls_per_s"`
	CredPeak      []int     `json:"credential_calls_in_flight"`
	CredTotalPerS float64   `json:"credential_calls_total_per_s"`
	CredTotalPeak int       `json:"credential_calls_total_in_flight"`
}

// slow is one of the slowest token requests or turns.
type slow struct {
	AtS      float64 `json:"at_s"` // when it ended (unfinished: the end of the run), seconds since the start
	US       float64 `json:"duration_us"`
	TraceID  string  `json:"trace_id,omitempty"`
	What     string  `json:"what"` // session, provider, outcome or error; "unfinished"
	duration time.Duration
}

const slowest = 10

// keepSlowest inserts s into list (longest first, at most slowest).
func keepSlowest(list []slow, s slow) []slow {
	if len(list) == slowest && list[slowest-1].duration >= s.duration {
		return list
	}
	i, _ := slices.BinarySearchFunc(list, s, func(a, b slow) int { return int(b.duration - a.duration) })
	list = slices.Insert(list, i, s)
	return list[:min(len(list), slowest)]
}

// errorKey files an error message under where it was seen.
type errorKey struct{ where, msg string }

// varying parts of error messages that would split one cause over many
// rows: session names, back-off waits and their clock times, measured
// timeouts.
var (
	sessionNameRE = regexp.MustCompile(`load-\d{6}`)
	waitRE        = regexp.MustCompile(`(next try in|timed out after) [0-9.]+[µmn]?s`)
	clockRE       = regexp.MustCompile(`\(at \d\d:\d\d:\d\d UTC\)`)
)

func normalizeError(msg string) string {
	msg = tokens.Scrub(msg)
	msg = sessionNameRE.ReplaceAllString(msg, "load-*")
	msg = clockRE.ReplaceAllString(msg, "(at …)")
	return waitRE.ReplaceAllString(msg, "$1 …")
}

// interval accumulates what happens until the next tick.
type interval struct {
	requests    uint64 // token requests answered (spans ended)
	req         hist   // token request latencies
	outcomes    map[string]uint64
	tokenErrors uint64
	turn        hist
	turnErrors  uint64
	started     uint64 // operations started, and of them late
	late        uint64
	credCalls   []uint64
	credPeak    []int
	// credTotalPeak is the most calls in flight at once over all providers.
	credTotalPeak int
}

// newInterval starts an interval with the calls in flight now as peaks.
func newInterval(providers int, inFlight []int) interval {
	return interval{outcomes: map[string]uint64{}, credCalls: make([]uint64, providers), credPeak: slices.Clone(inFlight), credTotalPeak: sumInts(inFlight)}
}

// openTurn is a turn in flight on a session, for the links between it and
// the token requests the runtime sends for that session meanwhile (the
// runtime does not carry the turn's trace context into them).
type openTurn struct {
	span     trace.SpanContext
	requests []trace.SpanContext
}

// maxTurnLinks bounds the links a turn's span gets to its token requests.
const maxTurnLinks = 16

// linkKind is the attribute that says what a tokenload link points to.
const linkKind = attribute.Key("tokenload.link")

// collector turns the broker's spans, the credential calls and the load
// loop's operations into the run's statistics. It is an
// sdktrace.SpanProcessor, so every token request and refresh the broker
// traces is counted whatever runtime drives it. Between begin and finish
// it keeps a time series; after finish it ignores everything (no point
// past the end of the run).
//
// Latencies go through ledgers, so that operations unfinished at the end
// count at their age: ops is the load loop's (turns, or the token requests
// it sends with -runtime direct, from each one's intended start), reqs the
// broker's token request spans (from their start), which give the token
// request latency when the runtime sends the requests.
type collector struct {
	mu       sync.Mutex
	start    time.Time
	last     time.Time // end of the previous interval
	running  bool
	finished bool
	// opsAreRequests: the operations are token requests (-runtime
	// direct), and their latency is the token request latency.
	opsAreRequests bool

	cur      interval
	prev     interval  // the last closed interval,
	prevFrom time.Time // from here to last
	sliver   time.Duration

	ops, reqs       *ledger
	opsEnd, reqsEnd ledgerReport // at finish
	turns           map[string][]*openTurn
	methods         map[string]uint64 // token requests by method (dialect)
	outcomes        map[string]uint64
	refreshes       map[string]uint64 // "reason/outcome"
	lowLeft         uint64            // tokens served with < 60 s left
	leaks           uint64            // telemetry values carrying a token
	errors          map[errorKey]uint64
	reqInFlight     int
	reqAtEnd        int // token requests unanswered at the end
	opErrors        uint64
	credInFlight    []int
	credAtEnd       []int // credential calls still running at the end
	credCalls       []uint64
	credFailures    []uint64
	slowRequests    []slow
	slowOps         []slow
	series          []point
}

func newCollector(providers int, opsAreRequests bool) *collector {
	c := &collector{
		methods: map[string]uint64{}, outcomes: map[string]uint64{}, refreshes: map[string]uint64{}, errors: map[errorKey]uint64{},
		credInFlight: make([]int, providers), credCalls: make([]uint64, providers), credFailures: make([]uint64, providers),
		opsAreRequests: opsAreRequests, turns: map[string][]*openTurn{},
		reqs: newLedger(time.Now(), 0),
	}
	c.cur = newInterval(providers, c.credInFlight)
	return c
}

// begin starts the clock and the load loop's ledger (rate 0: closed
// loop); the series has a point per interval. What happened before
// (session creation) counts in the totals, not in the series.
func (c *collector) begin(now time.Time, interval time.Duration, rate float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur = newInterval(len(c.credCalls), c.credInFlight)
	c.ops = newLedger(now, rate)
	c.reqs.start = now
	c.start, c.last, c.running, c.sliver = now, now, true, interval/4
}

// spanKey files a span in a ledger by its id (random, 64 bits).
func spanKey(sc trace.SpanContext) uint64 {
	id := sc.SpanID()
	return binary.BigEndian.Uint64(id[:])
}

func isTokenRequest(name string) bool {
	return name == transport.MethodAcquire || name == transport.MethodGetToken
}

// OnStart counts a token request in flight and, when the session it is
// for has one turn in flight, links the two spans both ways.
func (c *collector) OnStart(_ context.Context, s sdktrace.ReadWriteSpan) {
	if !isTokenRequest(s.Name()) {
		return
	}
	a := readAttributes(s.Attributes())
	c.mu.Lock()
	c.reqInFlight++
	if !c.opsAreRequests {
		c.reqs.begin(spanKey(s.SpanContext()), s.StartTime(), s.SpanContext().TraceID().String(), a.session+" "+a.provider)
	}
	var turn trace.SpanContext
	if open := c.turns[a.session]; len(open) == 1 { // several: which one is unknown
		turn = open[0].span
		if len(open[0].requests) < maxTurnLinks {
			open[0].requests = append(open[0].requests, s.SpanContext())
		}
	}
	c.mu.Unlock()
	if turn.IsValid() {
		s.AddLink(trace.Link{SpanContext: turn, Attributes: []attribute.KeyValue{linkKind.String("turn")}})
	}
}

func (c *collector) Shutdown(context.Context) error   { return nil }
func (c *collector) ForceFlush(context.Context) error { return nil }

func (c *collector) OnEnd(s sdktrace.ReadOnlySpan) {
	name := s.Name()
	request := isTokenRequest(name)
	if !request && name != tracing.SpanRefresh {
		return
	}
	a := readAttributes(s.Attributes())
	d := s.EndTime().Sub(s.StartTime())
	c.mu.Lock()
	defer c.mu.Unlock()
	if request {
		c.reqInFlight--
	}
	if c.finished {
		return
	}
	if a.leak || strings.Contains(s.Status().Description, secretMarker) {
		c.leaks++
	}
	if !request {
		c.refreshes[a.reason+"/"+a.refreshOutcome]++
		return
	}
	c.methods[name]++
	c.cur.requests++
	if !c.opsAreRequests {
		if _, ok := c.reqs.end(spanKey(s.SpanContext()), s.EndTime()); ok {
			c.cur.req.add(d)
		}
	}
	c.cur.outcomes[a.outcome]++
	c.outcomes[a.outcome]++
	if a.outcome == tracing.OutcomeError {
		c.cur.tokenErrors++
		c.errors[errorKey{"token request", normalizeError(s.Status().Description)}]++
	}
	if a.hasRemaining && a.remaining < 60 {
		c.lowLeft++
	}
	if c.running && !c.opsAreRequests {
		c.slowRequests = keepSlowest(c.slowRequests, slow{
			AtS: s.EndTime().Sub(c.start).Seconds(), US: us(d), duration: d, TraceID: s.SpanContext().TraceID().String(),
			What: a.session + " " + a.provider + " " + a.outcome,
		})
	}
}

// spanAttributes is what the collector reads of a broker span's
// attributes; leak is set when a string value carries a token.
type spanAttributes struct {
	session, provider, outcome, reason, refreshOutcome string
	remaining                                          float64
	hasRemaining, leak                                 bool
}

func readAttributes(kvs []attribute.KeyValue) (a spanAttributes) {
	for _, kv := range kvs {
		switch kv.Key {
		case tracing.SessionID:
			a.session = kv.Value.AsString()
		case tracing.ProviderName:
			a.provider = kv.Value.AsString()
		case tracing.Outcome:
			a.outcome = kv.Value.AsString()
		case tracing.RefreshReason:
			a.reason = kv.Value.AsString()
		case tracing.RefreshOutcome:
			a.refreshOutcome = kv.Value.AsString()
		case tracing.RemainingSeconds:
			a.remaining, a.hasRemaining = kv.Value.AsFloat64(), true
		}
		if kv.Value.Type() == attribute.STRING && strings.Contains(kv.Value.AsString(), secretMarker) {
			a.leak = true
		}
	}
	return a
}

// credStart and credEnd bracket one credential call of provider j.
func (c *collector) credStart(j int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		return
	}
	c.credInFlight[j]++
	c.credCalls[j]++
	c.cur.credCalls[j]++
	c.cur.credPeak[j] = max(c.cur.credPeak[j], c.credInFlight[j])
	c.cur.credTotalPeak = max(c.cur.credTotalPeak, sumInts(c.credInFlight))
}

func (c *collector) credEnd(j int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		return
	}
	c.credInFlight[j]--
	if err != nil {
		c.credFailures[j]++
	}
}

// opStart records that the load loop started operation id at started on
// session, traced by span (invalid when untraced); opEnd records how it
// ended and returns the spans of the token requests to link the turn to.
// An operation the end of the run cut short (cut) stays unfinished,
// neither an error nor a latency sample, whether it returns before finish
// or after (which ignores everything).
func (c *collector) opStart(id uint64, started time.Time, session string, span trace.SpanContext) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		return
	}
	traceID := ""
	if span.IsValid() {
		traceID = span.TraceID().String()
		if !c.opsAreRequests {
			c.turns[session] = append(c.turns[session], &openTurn{span: span})
		}
	}
	c.cur.started++
	if c.ops.begin(id, started, traceID, session) {
		c.cur.late++
	}
}

func (c *collector) opEnd(id uint64, at time.Time, err error, cut bool, session string, span trace.SpanContext) (links []trace.SpanContext) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if span.IsValid() && !c.opsAreRequests {
		open := c.turns[session]
		for i, t := range open {
			if t.span.Equal(span) {
				links = t.requests
				c.turns[session] = slices.Delete(open, i, i+1)
				break
			}
		}
		if len(c.turns[session]) == 0 {
			delete(c.turns, session)
		}
	}
	if c.finished || cut {
		return links
	}
	d, ok := c.ops.end(id, at)
	if !ok {
		return links
	}
	samples := &c.cur.turn
	if c.opsAreRequests {
		samples = &c.cur.req
	}
	samples.add(d)
	what := session
	if err != nil {
		c.opErrors++
		if !c.opsAreRequests {
			// A direct token request's error is the broker's, counted
			// from its span.
			c.cur.turnErrors++
			c.errors[errorKey{"turn", normalizeError(err.Error())}]++
		}
		what += " error"
	}
	if span.IsValid() {
		c.slowOps = keepSlowest(c.slowOps, slow{AtS: at.Sub(c.start).Seconds(), US: us(d), duration: d, TraceID: span.TraceID().String(), What: what})
	}
	return links
}

// tick closes the current interval at now.
func (c *collector) tick(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tickLocked(now)
}

func (c *collector) tickLocked(now time.Time) {
	if !c.running || !now.After(c.last) {
		return
	}
	c.series = append(c.series, c.point(&c.cur, c.last, now))
	c.closeInterval(now)
}

// closeInterval starts the next interval at now.
func (c *collector) closeInterval(now time.Time) {
	c.prev, c.prevFrom = c.cur, c.last
	c.cur = newInterval(len(c.credCalls), c.credInFlight)
	c.last = now
}

// point is what the charts show of interval in from..to.
func (c *collector) point(in *interval, from, to time.Time) point {
	span := to.Sub(from).Seconds()
	p := point{
		T: to.Sub(c.start).Seconds(), Span: span,
		Requests: in.requests, RequestsPerS: float64(in.requests) / span, OutcomesPerS: map[string]float64{},
		P50: in.req.quantileUS(0.5), P90: in.req.quantileUS(0.9), P99: in.req.quantileUS(0.99),
		TokenErrors: in.tokenErrors, TurnErrors: in.turnErrors, ErrorsPerS: float64(in.tokenErrors+in.turnErrors) / span,
		Turns: in.turn.n, TurnsPerS: float64(in.turn.n) / span,
		TurnP50: in.turn.quantileUS(0.5), TurnP90: in.turn.quantileUS(0.9), TurnP99: in.turn.quantileUS(0.99),
		InFlight: c.ops.inFlight(), OldestS: c.ops.oldest(to).Seconds(),
		StartedPerS: float64(in.started) / span, LatePerS: float64(in.late) / span,
		CredCalls: slices.Clone(in.credCalls), CredPeak: slices.Clone(in.credPeak), CredTotalPeak: in.credTotalPeak,
	}
	for _, o := range outcomeOrder {
		p.OutcomesPerS[o] = float64(in.outcomes[o]) / span
	}
	var total uint64
	for _, n := range in.credCalls {
		p.CredPerS = append(p.CredPerS, float64(n)/span)
		total += n
	}
	p.CredTotalPerS = float64(total) / span
	return p
}

// merge adds o's counts to in.
func (in *interval) merge(o *interval) {
	in.requests += o.requests
	in.req.merge(&o.req)
	in.turn.merge(&o.turn)
	for k, n := range o.outcomes {
		in.outcomes[k] += n
	}
	in.tokenErrors += o.tokenErrors
	in.turnErrors += o.turnErrors
	in.started += o.started
	in.late += o.late
	for j := range o.credCalls {
		in.credCalls[j] += o.credCalls[j]
		in.credPeak[j] = max(in.credPeak[j], o.credPeak[j])
	}
	in.credTotalPeak = max(in.credTotalPeak, o.credTotalPeak)
}

func sumInts(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

// finish closes the last interval at the end of the run and freezes the
// statistics: the ledgers close, so operations and token requests still
// running (and, in the open loop, operations never started) count
// unfinished at their age, and nothing that ends later is plotted or
// counted.
func (c *collector) finish(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The in-flight figures of the last point are those at the end,
	// before the ledgers close.
	if n := len(c.series); n > 0 && c.running && now.Sub(c.last) < c.sliver {
		// The end falls just after a tick: fold the sliver into the last
		// interval rather than plot a rate over a few milliseconds.
		prev := c.prev
		prev.merge(&c.cur)
		c.series[n-1] = c.point(&prev, c.prevFrom, now)
		c.closeInterval(now)
	} else {
		c.tickLocked(now)
	}
	c.opsEnd, c.reqsEnd = c.ops.close(now), c.reqs.close(now)
	c.reqAtEnd, c.credAtEnd = c.reqInFlight, slices.Clone(c.credInFlight)
	c.running, c.finished = false, true
}

// progress is what the live line shows.
type progress struct {
	elapsed   time.Duration
	reqRate   float64
	turnRate  float64
	hitRatio  float64
	hasHits   bool
	errors    uint64
	credCalls uint64
}

func (c *collector) progress(now time.Time) progress {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := progress{elapsed: now.Sub(c.start), errors: c.outcomes[tracing.OutcomeError]}
	if !c.opsAreRequests {
		p.errors += c.opErrors
	}
	for _, n := range c.credCalls {
		p.credCalls += n
	}
	var all uint64
	for _, n := range c.outcomes {
		all += n
	}
	if all > 0 {
		p.hitRatio, p.hasHits = float64(c.outcomes[tracing.OutcomeHit])/float64(all), true
	}
	if n := len(c.series); n > 0 {
		p.reqRate, p.turnRate = c.series[n-1].RequestsPerS, c.series[n-1].TurnsPerS
	}
	return p
}
