package main

import (
	"context"
	"math"
	"math/bits"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

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

// point is one interval of the time series.
type point struct {
	T         float64 `json:"t_s"` // end of the interval, seconds since the start
	Requests  uint64  `json:"requests"`
	Rate      float64 `json:"requests_per_s"`
	Errors    uint64  `json:"errors"`
	P50       float64 `json:"p50_us"`
	P99       float64 `json:"p99_us"`
	Max       float64 `json:"max_us"`
	ClientN   uint64  `json:"client_ops"`
	ClientP50 float64 `json:"client_p50_us"`
	ClientP99 float64 `json:"client_p99_us"`
}

// collector turns the broker's spans into the run's statistics: it is an
// sdktrace.SpanProcessor, so every token request and refresh the broker
// traces is counted, whatever runtime drives it. Client-side operations
// (round trips, turns) are recorded by the load loop.
type collector struct {
	mu    sync.Mutex
	start time.Time
	last  time.Time // end of the previous interval

	cur, total             hist // broker-side token request latency
	curClient, totalClient hist // client-side operation latency
	curErrors              uint64
	clientErrors           uint64
	clientErrorSamples     []string

	outcomes  map[string]uint64
	refreshes map[string]uint64 // "reason/outcome"
	lowLeft   uint64            // tokens served with < 60 s left
	leaks     uint64            // telemetry values carrying a token
	series    []point
	running   bool
}

func newCollector() *collector {
	return &collector{outcomes: map[string]uint64{}, refreshes: map[string]uint64{}}
}

// begin starts the clock: spans that end before it (the warm-up of session
// creation) are counted in the totals but the rate starts here.
func (c *collector) begin(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.start, c.last, c.running = now, now, true
}

func (c *collector) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (c *collector) Shutdown(context.Context) error                  { return nil }
func (c *collector) ForceFlush(context.Context) error                { return nil }

func (c *collector) OnEnd(s sdktrace.ReadOnlySpan) {
	name := s.Name()
	request := name == transport.MethodAcquire || name == transport.MethodGetToken
	if !request && name != tracing.SpanRefresh {
		return
	}
	var outcome, reason, refreshOutcome string
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
		}
		if kv.Value.Type() == attribute.STRING && strings.Contains(kv.Value.AsString(), secretMarker) {
			leak = true
		}
	}
	d := s.EndTime().Sub(s.StartTime())
	c.mu.Lock()
	defer c.mu.Unlock()
	if leak {
		c.leaks++
	}
	if !request {
		c.refreshes[reason+"/"+refreshOutcome]++
		return
	}
	c.cur.add(d)
	c.outcomes[outcome]++
	if outcome == tracing.OutcomeError {
		c.curErrors++
	}
	if hasRemaining && remaining < 60 {
		c.lowLeft++
	}
}

// client records one client-side operation.
func (c *collector) client(d time.Duration, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.curClient.add(d)
	if err != nil {
		c.clientErrors++
		if len(c.clientErrorSamples) < 5 {
			c.clientErrorSamples = append(c.clientErrorSamples, err.Error())
		}
	}
}

// tick closes the current interval.
func (c *collector) tick(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return
	}
	span := now.Sub(c.last).Seconds()
	if span <= 0 {
		return
	}
	p := point{
		T: now.Sub(c.start).Seconds(), Requests: c.cur.n, Rate: float64(c.cur.n) / span, Errors: c.curErrors,
		P50: us(c.cur.quantile(0.5)), P99: us(c.cur.quantile(0.99)), Max: us(c.cur.max),
		ClientN: c.curClient.n, ClientP50: us(c.curClient.quantile(0.5)), ClientP99: us(c.curClient.quantile(0.99)),
	}
	// The last interval is cut short by the end of the run; with nothing
	// in it, it would draw every line down to zero.
	if p.Requests+p.ClientN+p.Errors > 0 || len(c.series) == 0 || span >= c.series[len(c.series)-1].T-c.prevT() {
		c.series = append(c.series, p)
	}
	c.total.merge(&c.cur)
	c.totalClient.merge(&c.curClient)
	c.cur, c.curClient, c.curErrors = hist{}, hist{}, 0
	c.last = now
}

// prevT is where the last recorded interval started.
func (c *collector) prevT() float64 {
	if n := len(c.series); n > 1 {
		return c.series[n-2].T
	}
	return 0
}

// progress is what the live line shows.
type progress struct {
	elapsed  time.Duration
	requests uint64
	rate     float64
	p50, p99 time.Duration
	errors   uint64
}

func (c *collector) progress(now time.Time) progress {
	c.mu.Lock()
	defer c.mu.Unlock()
	all := c.total
	all.merge(&c.cur)
	p := progress{elapsed: now.Sub(c.start), requests: all.n, p50: all.quantile(0.5), p99: all.quantile(0.99),
		errors: c.outcomes[tracing.OutcomeError] + c.clientErrors}
	if n := len(c.series); n > 0 {
		p.rate = c.series[n-1].Rate
	}
	return p
}
