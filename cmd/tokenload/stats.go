package main

import (
	"context"
	"math"
	"math/bits"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/transport"
)

// hist is a log-linear latency histogram: 32 sub-buckets per power of two
// (about 3 % resolution) from 1 ns to about 18 minutes, cheap to record.
type hist struct {
	counts [histBuckets]uint64
	n      uint64
	sum    time.Duration
	max    time.Duration
}

const (
	histSub     = 32
	histSubBits = 5
	histExp     = 40
	histBuckets = histExp * histSub
)

func histIndex(d time.Duration) int {
	v := uint64(max(d, 1))
	exp := bits.Len64(v) - 1
	if exp < histSubBits {
		return int(v) // exact below 32 ns
	}
	i := exp*histSub + int((v>>(exp-histSubBits))&(histSub-1))
	return min(i, histBuckets-1)
}

// histValue is the upper bound of bucket i.
func histValue(i int) time.Duration {
	exp, sub := i/histSub, i%histSub
	if exp < histSubBits {
		return time.Duration(i) // exact buckets (indexes above histSub are never used)
	}
	return time.Duration(uint64(histSub+sub+1) << (exp - histSubBits))
}

func (h *hist) add(d time.Duration) {
	h.counts[histIndex(d)]++
	h.n++
	h.sum += d
	h.max = max(h.max, d)
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if c > 0 && seen >= rank {
			return min(histValue(i), h.max)
		}
	}
	return h.max
}

// quantileUS is a quantile in microseconds, or nil without samples: a gap
// in a chart, absent in the JSON.
func (h *hist) quantileUS(q float64) *float64 {
	if h.n == 0 {
		return nil
	}
	v := us(h.quantile(q))
	return &v
}

// bucket is one bar of a latency histogram.
type bucket struct {
	LoUS  float64 `json:"from_us"`
	HiUS  float64 `json:"to_us"`
	Count uint64  `json:"count"`
}

// logBuckets regroups the histogram into 4 buckets per decade (1, 1.8,
// 3.2, 5.6 × 10ⁿ), from the first to the last non-empty one.
func (h *hist) logBuckets() []bucket {
	if h.n == 0 {
		return nil
	}
	const perDecade = 4
	edge := func(k int) float64 { return math.Pow(10, float64(k)/perDecade) } // in ns
	var out []bucket
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		// The bucket's values lie below histValue(i); file them by it.
		k := int(math.Floor(math.Log10(float64(histValue(i))) * perDecade))
		lo := edge(k) / 1e3
		if n := len(out); n > 0 && out[n-1].LoUS == lo {
			out[n-1].Count += c
			continue
		}
		for n := len(out); n > 0 && out[n-1].HiUS < lo*0.999; n = len(out) { // empty buckets between
			out = append(out, bucket{LoUS: out[n-1].HiUS, HiUS: out[n-1].HiUS * math.Pow(10, 1.0/perDecade)})
		}
		out = append(out, bucket{LoUS: lo, HiUS: edge(k+1) / 1e3, Count: c})
	}
	return out
}

// latencySummary is what the report shows of a histogram.
type latencySummary struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean_us"`
	P50   float64 `json:"p50_us"`
	P90   float64 `json:"p90_us"`
	P99   float64 `json:"p99_us"`
	Max   float64 `json:"max_us"`
}

func us(d time.Duration) float64 { return float64(d) / 1e3 }

func (h *hist) summary() latencySummary {
	s := latencySummary{Count: h.n, P50: us(h.quantile(0.5)), P90: us(h.quantile(0.9)), P99: us(h.quantile(0.99)), Max: us(h.max)}
	if h.n > 0 {
		s.Mean = us(h.sum / time.Duration(h.n))
	}
	return s
}

// outcomes in the order the charts stack them.
var outcomeOrder = []string{tracing.OutcomeHit, tracing.OutcomeCoalesced, tracing.OutcomeRefreshed, tracing.OutcomeBare, tracing.OutcomeError}

// point is one interval of the time series: every series a chart draws.
// Latency quantiles are absent for an interval without samples.
type point struct {
	T    float64 `json:"t_s"`    // end of the interval, seconds since the start
	Span float64 `json:"span_s"` // its length (the last one may be short)

	Requests     uint64             `json:"token_requests"`
	RequestsPerS float64            `json:"token_requests_per_s"`
	OutcomesPerS map[string]float64 `json:"outcomes_per_s"`
	P50          *float64           `json:"p50_us,omitempty"`
	P90          *float64           `json:"p90_us,omitempty"`
	P99          *float64           `json:"p99_us,omitempty"`

	TokenErrors uint64  `json:"token_request_errors"`
	TurnErrors  uint64  `json:"turn_errors"`
	ErrorsPerS  float64 `json:"errors_per_s"` // both kinds

	Turns      uint64   `json:"turns"`
	TurnsPerS  float64  `json:"turns_per_s"`
	TurnP50    *float64 `json:"turn_p50_us,omitempty"`
	TurnP90    *float64 `json:"turn_p90_us,omitempty"`
	TurnP99    *float64 `json:"turn_p99_us,omitempty"`
	TurnsAlive int      `json:"turns_in_flight"` // at the end of the interval

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
	AtS      float64 `json:"at_s"` // when it ended, seconds since the start
	US       float64 `json:"duration_us"`
	TraceID  string  `json:"trace_id"`
	What     string  `json:"what"` // session, provider, outcome or error
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
	req         hist
	outcomes    map[string]uint64
	tokenErrors uint64
	turn        hist
	turnErrors  uint64
	credCalls   []uint64
	credPeak    []int
	// credTotalPeak is the most calls in flight at once over all providers.
	credTotalPeak int
}

// newInterval starts an interval with the calls in flight now as peaks.
func newInterval(providers int, inFlight []int) interval {
	return interval{outcomes: map[string]uint64{}, credCalls: make([]uint64, providers), credPeak: slices.Clone(inFlight), credTotalPeak: sumInts(inFlight)}
}

// collector turns the broker's spans, the credential calls and the load
// loop's turns into the run's statistics. It is an sdktrace.SpanProcessor,
// so every token request and refresh the broker traces is counted whatever
// runtime drives it. Between begin and finish it keeps a time series;
// after finish it ignores everything (no point past the end of the run).
type collector struct {
	mu       sync.Mutex
	start    time.Time
	last     time.Time // end of the previous interval
	running  bool
	finished bool

	cur                interval
	prev               interval  // the last closed interval,
	prevFrom           time.Time // from here to last
	sliver             time.Duration
	total, totalClient hist

	methods      map[string]uint64 // token requests by method (dialect)
	outcomes     map[string]uint64
	refreshes    map[string]uint64 // "reason/outcome"
	lowLeft      uint64            // tokens served with < 60 s left
	leaks        uint64            // telemetry values carrying a token
	errors       map[errorKey]uint64
	reqInFlight  int
	reqAtEnd     int // token requests unanswered at the end
	turnsAlive   int
	turnErrors   uint64
	turnsAtEnd   int // turns still running at the end
	credInFlight []int
	credAtEnd    []int // credential calls still running at the end
	credCalls    []uint64
	credFailures []uint64
	slowRequests []slow
	slowTurns    []slow
	series       []point
}

func newCollector(providers int) *collector {
	c := &collector{
		methods: map[string]uint64{}, outcomes: map[string]uint64{}, refreshes: map[string]uint64{}, errors: map[errorKey]uint64{},
		credInFlight: make([]int, providers), credCalls: make([]uint64, providers), credFailures: make([]uint64, providers),
	}
	c.cur = newInterval(providers, c.credInFlight)
	return c
}

// begin starts the clock; the series has a point per interval. What
// happened before (session creation) counts in the totals, not in the
// series.
func (c *collector) begin(now time.Time, interval time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total.merge(&c.cur.req)
	c.cur = newInterval(len(c.credCalls), c.credInFlight)
	c.start, c.last, c.running, c.sliver = now, now, true, interval/4
}

func isTokenRequest(name string) bool {
	return name == transport.MethodAcquire || name == transport.MethodGetToken
}

func (c *collector) OnStart(_ context.Context, s sdktrace.ReadWriteSpan) {
	if !isTokenRequest(s.Name()) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqInFlight++
}

func (c *collector) Shutdown(context.Context) error   { return nil }
func (c *collector) ForceFlush(context.Context) error { return nil }

func (c *collector) OnEnd(s sdktrace.ReadOnlySpan) {
	name := s.Name()
	request := isTokenRequest(name)
	if !request && name != tracing.SpanRefresh {
		return
	}
	var outcome, reason, refreshOutcome, session, provider string
	remaining, hasRemaining := 0.0, false
	leak := strings.Contains(s.Status().Description, secretMarker)
	for _, kv := range s.Attributes() {
		switch kv.Key {
		case tracing.Outcome:
			outcome = kv.Value.AsString()
		case tracing.RefreshReason:
			reason = kv.Value.AsString()
		case tracing.RefreshOutcome:
			refreshOutcome = kv.Value.AsString()
		case tracing.RemainingSeconds:
			remaining, hasRemaining = kv.Value.AsFloat64(), true
		case tracing.SessionID:
			session = kv.Value.AsString()
		case tracing.ProviderName:
			provider = kv.Value.AsString()
		}
		if kv.Value.Type() == attribute.STRING && strings.Contains(kv.Value.AsString(), secretMarker) {
			leak = true
		}
	}
	d := s.EndTime().Sub(s.StartTime())
	c.mu.Lock()
	defer c.mu.Unlock()
	if request {
		c.reqInFlight--
	}
	if c.finished {
		return
	}
	if leak {
		c.leaks++
	}
	if !request {
		c.refreshes[reason+"/"+refreshOutcome]++
		return
	}
	c.methods[name]++
	c.cur.req.add(d)
	c.cur.outcomes[outcome]++
	c.outcomes[outcome]++
	if outcome == tracing.OutcomeError {
		c.cur.tokenErrors++
		c.errors[errorKey{"token request", normalizeError(s.Status().Description)}]++
	}
	if hasRemaining && remaining < 60 {
		c.lowLeft++
	}
	if c.running {
		c.slowRequests = keepSlowest(c.slowRequests, slow{
			AtS: s.EndTime().Sub(c.start).Seconds(), US: us(d), duration: d, TraceID: s.SpanContext().TraceID().String(),
			What: session + " " + provider + " " + outcome,
		})
	}
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

// turnStart counts a turn in flight; turnEnd records how it ended. A turn
// the end of the run cut short (cut) stays counted in flight, neither an
// error nor a latency sample, whether it returns before finish or after
// (which ignores everything).
func (c *collector) turnStart() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.turnsAlive++
}

func (c *collector) turnEnd(d time.Duration, err error, cut bool, traceID, session string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished || cut {
		return
	}
	c.turnsAlive--
	c.cur.turn.add(d)
	what := session
	if err != nil {
		c.cur.turnErrors++
		c.turnErrors++
		c.errors[errorKey{"turn", normalizeError(err.Error())}]++
		what += " error"
	}
	if traceID != "" {
		c.slowTurns = keepSlowest(c.slowTurns, slow{AtS: time.Since(c.start).Seconds(), US: us(d), duration: d, TraceID: traceID, What: what})
	}
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

// closeInterval adds the current interval to the totals and starts the
// next at now.
func (c *collector) closeInterval(now time.Time) {
	c.total.merge(&c.cur.req)
	c.totalClient.merge(&c.cur.turn)
	c.prev, c.prevFrom = c.cur, c.last
	c.cur = newInterval(len(c.credCalls), c.credInFlight)
	c.last = now
}

// point is what the charts show of interval in from..to.
func (c *collector) point(in *interval, from, to time.Time) point {
	span := to.Sub(from).Seconds()
	p := point{
		T: to.Sub(c.start).Seconds(), Span: span,
		Requests: in.req.n, RequestsPerS: float64(in.req.n) / span, OutcomesPerS: map[string]float64{},
		P50: in.req.quantileUS(0.5), P90: in.req.quantileUS(0.9), P99: in.req.quantileUS(0.99),
		TokenErrors: in.tokenErrors, TurnErrors: in.turnErrors, ErrorsPerS: float64(in.tokenErrors+in.turnErrors) / span,
		Turns: in.turn.n, TurnsPerS: float64(in.turn.n) / span,
		TurnP50: in.turn.quantileUS(0.5), TurnP90: in.turn.quantileUS(0.9), TurnP99: in.turn.quantileUS(0.99),
		TurnsAlive: c.turnsAlive,
		CredCalls:  slices.Clone(in.credCalls), CredPeak: slices.Clone(in.credPeak), CredTotalPeak: in.credTotalPeak,
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
	in.req.merge(&o.req)
	in.turn.merge(&o.turn)
	for k, n := range o.outcomes {
		in.outcomes[k] += n
	}
	in.tokenErrors += o.tokenErrors
	in.turnErrors += o.turnErrors
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
// statistics: token requests and turns still running are counted in
// flight, and nothing that ends later is plotted or counted.
func (c *collector) finish(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
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
	c.reqAtEnd, c.turnsAtEnd, c.credAtEnd = c.reqInFlight, c.turnsAlive, slices.Clone(c.credInFlight)
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
	p := progress{elapsed: now.Sub(c.start), errors: c.outcomes[tracing.OutcomeError] + c.turnErrors}
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
