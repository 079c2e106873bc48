package transport_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sourcegraph/jsonrpc2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/capture"
	"github.com/tokenbroker/tokenbroker/internal/leakscan"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/transport"
)

// These tests run a real transport (NewConn over net.Pipe, Content-Length
// framing, the async handler) with a small jsonrpc2 client playing the
// runtime, inside a synctest bubble so token lifetimes pass without sleeping.

// traced is a broker behind a real connection, recording every span and
// metric, plus the client end playing the runtime.
type traced struct {
	t       *testing.T
	rec     *tracetest.SpanRecorder
	reader  *sdkmetric.ManualReader
	broker  *actors.Broker
	conn    *transport.Conn
	runtime *jsonrpc2.Conn
	secrets *secretLog
}

// secretLog keeps every token value a source handed out, for the scan.
type secretLog struct {
	mu   sync.Mutex
	vals []string
	n    int
}

func (l *secretLog) next(prefix string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	v := fmt.Sprintf("%s-secret-%04d-c2VjcmV0", prefix, l.n)
	l.vals = append(l.vals, v)
	return v
}

func (l *secretLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.vals...)
}

// newTraced must be called inside a synctest bubble.
func newTraced(t *testing.T) *traced {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	broker := actors.NewBroker(actors.Options{
		TracerProvider: tp,
		MeterProvider:  mp,
		Rand:           func() float64 { return 0 }, // no jitter: refresh points are exact
	})
	client, runtime := net.Pipe()
	ctx := context.Background()
	conn := transport.NewConn(ctx, broker, client, nil, transport.ConnOptions{
		TracerProvider: tp, MeterProvider: mp,
	})
	rt := jsonrpc2.NewConn(ctx, jsonrpc2.NewBufferedStream(runtime, jsonrpc2.VSCodeObjectCodec{}), jsonrpc2.HandlerWithError(
		func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request) (any, error) { return nil, nil }))
	tr := &traced{t: t, rec: rec, reader: reader, broker: broker, conn: conn, runtime: rt, secrets: &secretLog{}}
	t.Cleanup(func() {
		_ = rt.Close()
		<-conn.Done()
		if err := broker.Close(); err != nil {
			t.Error(err)
		}
		_ = tp.Shutdown(ctx)
		_ = mp.Shutdown(ctx)
		// Let protoactor's dead-letter throttle (a 1 s ticker started by a
		// message to a stopped actor) end inside the bubble, on fake time.
		time.Sleep(2 * time.Second)
	})
	return tr
}

// lived returns a source of tokens valid for life, counting its calls.
func (tr *traced) lived(prefix string, life time.Duration, calls *int) tokens.Source {
	return tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		*calls++ // single flight: never concurrent
		return tokens.Token{Value: tr.secrets.next(prefix), ExpiresOn: time.Now().Add(life)}, nil
	})
}

type call struct {
	method, session, provider string
	scope                     *string
	meta                      map[string]any // params._meta
}

type answer struct {
	Token     string `json:"token"`
	ExpiresOn *int64 `json:"expiresOnTimestamp"`
	code      int64  // JSON-RPC error code, 0 when answered
}

func (tr *traced) call(c call) answer {
	tr.t.Helper()
	params := map[string]any{"sessionId": c.session, "providerName": c.provider}
	if c.scope != nil {
		params["scope"] = *c.scope
	}
	if c.meta != nil {
		params["_meta"] = c.meta
	}
	var a answer
	err := tr.runtime.Call(context.Background(), c.method, params, &a)
	var rpcErr *jsonrpc2.Error
	switch {
	case errors.As(err, &rpcErr):
		a.code = rpcErr.Code
	case err != nil:
		tr.t.Fatalf("%s: %v", c.method, err)
	}
	return a
}

func (tr *traced) ended() []sdktrace.ReadOnlySpan { return tr.rec.Ended() }

// requestSpans are the token request spans in the order the runtime sent
// them (its request ids count up; in the bubble, start times are all equal,
// and a span may end after the next request's).
func (tr *traced) requestSpans() []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tr.ended() {
		if s.Name() == transport.MethodAcquire || s.Name() == transport.MethodGetToken {
			out = append(out, s)
		}
	}
	id := func(s sdktrace.ReadOnlySpan) int {
		v, _ := attr(s, tracing.RPCRequestID)
		n, _ := strconv.Atoi(v.AsString())
		return n
	}
	slices.SortFunc(out, func(a, b sdktrace.ReadOnlySpan) int { return id(a) - id(b) })
	return out
}

func (tr *traced) refreshSpans() []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tr.ended() {
		if s.Name() == tracing.SpanRefresh {
			out = append(out, s)
		}
	}
	return out
}

// childrenOf are the recorded spans whose parent is s.
func (tr *traced) childrenOf(s sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, c := range tr.ended() {
		if c.Parent().SpanID() == s.SpanContext().SpanID() && c.Parent().TraceID() == s.SpanContext().TraceID() {
			out = append(out, c)
		}
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, k attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttr(t *testing.T, s sdktrace.ReadOnlySpan, k attribute.Key, want any) {
	t.Helper()
	v, ok := attr(s, k)
	if !ok {
		t.Errorf("span %s: no attribute %s", s.Name(), k)
		return
	}
	if got := v.AsInterface(); got != want {
		t.Errorf("span %s: %s = %v, want %v", s.Name(), k, got, want)
	}
}

// scan fails the test if any recorded span or metric holds a token value.
// It first proves it would notice one.
func (tr *traced) scan(rm *metricdata.ResourceMetrics) {
	t := tr.t
	t.Helper()
	secrets := tr.secrets.all()
	if len(secrets) == 0 {
		t.Fatal("no token was handed out: the scan would prove nothing")
	}
	if started, ended := len(tr.rec.Started()), len(tr.ended()); started != ended {
		t.Errorf("%d spans started, %d ended", started, ended)
	}
	// The canary: a span carrying a secret in an event must be caught.
	canary := tracetest.SpanStub{Name: "canary", Events: []sdktrace.Event{{Name: "x", Attributes: []attribute.KeyValue{attribute.String("v", secrets[0])}}}}
	if len(leakscan.Spans([]sdktrace.ReadOnlySpan{canary.Snapshot()}, secrets)) == 0 {
		t.Fatal("leakscan missed a secret planted in an event")
	}
	for _, f := range leakscan.Spans(tr.ended(), secrets) {
		t.Error(f)
	}
	for _, f := range leakscan.Metrics(rm, secrets) {
		t.Error(f)
	}
}

func (tr *traced) collect() *metricdata.ResourceMetrics {
	var rm metricdata.ResourceMetrics
	if err := tr.reader.Collect(context.Background(), &rm); err != nil {
		tr.t.Fatal(err)
	}
	return &rm
}

// findMetric finds a metric by name.
func findMetric(rm *metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// counts sums an int64 counter's points by the values of keys.
func counts(t *testing.T, rm *metricdata.ResourceMetrics, name string, keys ...attribute.Key) map[string]int64 {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		t.Fatalf("metric %s not recorded", name)
	}
	out := map[string]int64{}
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			out[label(p.Attributes, keys)] += p.Value
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			out[label(p.Attributes, keys)] += int64(p.Count)
		}
	default:
		t.Fatalf("metric %s: unexpected data %T", name, m.Data)
	}
	return out
}

func label(set attribute.Set, keys []attribute.Key) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		v, _ := set.Value(k)
		parts[i] = v.String()
	}
	return strings.Join(parts, "/")
}

func gauge(t *testing.T, rm *metricdata.ResourceMetrics, name string) int64 {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		t.Fatalf("metric %s not recorded", name)
	}
	d, ok := m.Data.(metricdata.Sum[int64])
	if !ok || len(d.DataPoints) != 1 {
		t.Fatalf("metric %s: %#v", name, m.Data)
	}
	return d.DataPoints[0].Value
}

// TestTraceOutcomes drives every outcome over the wire, in both dialects,
// and checks each request's span, the refresh spans under them, the
// metrics, and that no token value was recorded anywhere.
func TestTraceOutcomes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := newTraced(t)
		var cachedCalls, bareCalls, gatedCalls int
		cached := tr.lived("cached", time.Hour, &cachedCalls)
		bare := tokens.BareFunc(func(context.Context, tokens.Request) (string, error) {
			bareCalls++
			return tr.secrets.next("bare"), nil
		})
		// The broken credential's error quotes a bearer credential: the
		// broker must cut it out before it reaches the runtime or a span.
		leaked := tr.secrets.next("broken")
		broken := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
			return tokens.Token{}, errors.New("identity endpoint said 503 for Bearer " + leaked)
		})
		entered, release := make(chan struct{}), make(chan struct{})
		gated := tokens.Func(func(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
			gatedCalls++
			close(entered)
			<-release
			return tokens.Token{Value: tr.secrets.next("gated"), ExpiresOn: time.Now().Add(time.Hour)}, nil
		})
		scope := "api://scope/.default"
		if err := tr.conn.Router().Open("s1", []actors.Provider{
			{Name: "cached", Scope: scope, Source: cached},
			{Name: "bare", Source: bare},
			{Name: "broken", Source: broken},
		}); err != nil {
			t.Fatal(err)
		}
		if err := tr.conn.Router().Open("s2", []actors.Provider{{Name: "gated", Source: gated}}); err != nil {
			t.Fatal(err)
		}

		// refreshed, then hit, one per dialect.
		first := tr.call(call{method: transport.MethodGetToken, session: "s1", provider: "cached"})
		second := tr.call(call{method: transport.MethodAcquire, session: "s1", provider: "cached", scope: &scope})
		if first.code != 0 || second.code != 0 || first.Token == "" || first.Token != second.Token {
			t.Fatalf("cached: got %s (code %d) then %s (code %d)", tokens.Fingerprint(first.Token), first.code, tokens.Fingerprint(second.Token), second.code)
		}
		if first.ExpiresOn != nil || second.ExpiresOn == nil {
			t.Errorf("getToken must carry no expiry, acquire must: %v %v", first.ExpiresOn, second.ExpiresOn)
		}

		// coalesced: two requests wait on one gated credential call.
		answers := make(chan answer, 2)
		go func() { answers <- tr.call(call{method: transport.MethodGetToken, session: "s2", provider: "gated"}) }()
		<-entered
		go func() { answers <- tr.call(call{method: transport.MethodGetToken, session: "s2", provider: "gated"}) }()
		synctest.Wait() // the second request is queued behind the running refresh
		close(release)
		a, b := <-answers, <-answers
		if a.code != 0 || b.code != 0 || a.Token != b.Token || gatedCalls != 1 {
			t.Fatalf("coalesced: codes %d %d, same token %v, %d credential calls", a.code, b.code, a.Token == b.Token, gatedCalls)
		}

		// bare: the first call finds out the source is bare (a cold
		// refresh); the next ones are single-use calls per request.
		for i := 1; i <= 2; i++ {
			bareAns := tr.call(call{method: transport.MethodAcquire, session: "s1", provider: "bare"})
			if bareAns.code != 0 || bareAns.ExpiresOn != nil || bareCalls != i {
				t.Fatalf("bare: code %d, expiry %v, calls %d", bareAns.code, bareAns.ExpiresOn, bareCalls)
			}
		}
		if got := tr.call(call{method: transport.MethodGetToken, session: "s1", provider: "broken"}); got.code != transport.CodeCredential {
			t.Fatalf("broken: code %d, want %d", got.code, transport.CodeCredential)
		}
		if got := tr.call(call{method: transport.MethodGetToken, session: "nope", provider: "cached"}); got.code != transport.CodeUnknownSession {
			t.Fatalf("unknown session: code %d", got.code)
		}
		synctest.Wait()

		reqs := tr.requestSpans()
		if len(reqs) != 8 {
			t.Fatalf("%d request spans, want 8", len(reqs))
		}
		byOutcome := map[string][]sdktrace.ReadOnlySpan{}
		for _, s := range reqs {
			if s.SpanKind() != trace.SpanKindServer {
				t.Errorf("%s: kind %v, want server", s.Name(), s.SpanKind())
			}
			wantAttr(t, s, tracing.RPCSystem, "jsonrpc")
			wantAttr(t, s, tracing.RPCMethod, s.Name())
			wantAttr(t, s, tracing.RPCJSONRPCVersion, "2.0")
			if v, ok := attr(s, tracing.RPCRequestID); !ok || v.AsString() == "" {
				t.Errorf("%s: no request id", s.Name())
			}
			if s.Parent().IsValid() {
				t.Errorf("%s: has a parent without a traceparent", s.Name())
			}
			o, _ := attr(s, tracing.Outcome)
			byOutcome[o.AsString()] = append(byOutcome[o.AsString()], s)
		}
		for outcome, n := range map[string]int{"refreshed": 2, "hit": 1, "coalesced": 1, "bare": 2, "error": 2} {
			if len(byOutcome[outcome]) != n {
				t.Errorf("%d %s spans, want %d", len(byOutcome[outcome]), outcome, n)
			}
		}

		// hit: served from the snapshot, no refresh under it, an hour left.
		hit := byOutcome["hit"][0]
		wantAttr(t, hit, tracing.SessionID, "s1")
		wantAttr(t, hit, tracing.ProviderName, "cached")
		wantAttr(t, hit, tracing.RemainingSeconds, 3600.0) // no time passed in the bubble
		if c := tr.childrenOf(hit); len(c) != 0 {
			t.Errorf("hit has %d children", len(c))
		}

		// refreshed: the cold refresh is its child, in the same trace.
		for _, s := range byOutcome["refreshed"] {
			kids := tr.childrenOf(s)
			if len(kids) != 1 || kids[0].Name() != tracing.SpanRefresh {
				t.Fatalf("refreshed request %v has children %d", s.Attributes(), len(kids))
			}
			r := kids[0]
			wantAttr(t, r, tracing.RefreshReason, "cold")
			wantAttr(t, r, tracing.RefreshOutcome, tracing.RefreshOK)
			wantAttr(t, r, tracing.TokenLifetime, 3600.0)
			wantAttr(t, r, tracing.Shared, false)
			if r.SpanKind() != trace.SpanKindInternal || r.Status().Code == codes.Error {
				t.Errorf("refresh span kind %v status %v", r.SpanKind(), r.Status())
			}
		}

		// coalesced: joined the gated refresh, which is the other request's child.
		co := byOutcome["coalesced"][0]
		wantAttr(t, co, tracing.ProviderName, "gated")
		wantAttr(t, co, tracing.RemainingSeconds, 3600.0)
		if c := tr.childrenOf(co); len(c) != 0 {
			t.Errorf("coalesced request has %d children: it started no refresh", len(c))
		}

		// bare: single-use, no remaining validity; its credential call is its child.
		for i, br := range byOutcome["bare"] {
			if _, ok := attr(br, tracing.RemainingSeconds); ok {
				t.Error("bare token span carries a remaining validity")
			}
			if kids := tr.childrenOf(br); len(kids) != 1 {
				t.Errorf("bare request has %d children", len(kids))
			} else {
				wantAttr(t, kids[0], tracing.RefreshReason, []string{"cold", "bare"}[i])
			}
		}

		// errors: status and code set, no remaining validity.
		var sawCredential, sawUnknown bool
		for _, s := range byOutcome["error"] {
			if s.Status().Code != codes.Error || s.Status().Description == "" {
				t.Errorf("error span status %v", s.Status())
			}
			if _, ok := attr(s, tracing.RemainingSeconds); ok {
				t.Error("error span carries a remaining validity")
			}
			code, _ := attr(s, tracing.RPCErrorCode)
			switch code.AsInt64() {
			case transport.CodeCredential:
				sawCredential = true
				kids := tr.childrenOf(s)
				if len(kids) != 1 {
					t.Fatalf("failed request has %d children", len(kids))
				}
				wantAttr(t, kids[0], tracing.RefreshOutcome, tracing.RefreshError)
				if st := kids[0].Status(); st.Code != codes.Error || !strings.Contains(st.Description, "[redacted]") {
					t.Errorf("failed refresh status %q", st.Description)
				}
			case transport.CodeUnknownSession:
				sawUnknown = true
				wantAttr(t, s, tracing.SessionID, "nope")
				if len(tr.childrenOf(s)) != 0 {
					t.Error("unknown session started a refresh")
				}
			}
		}
		if !sawCredential || !sawUnknown {
			t.Errorf("error spans: credential %v, unknown session %v", sawCredential, sawUnknown)
		}
		if n := len(tr.refreshSpans()); n != 5 { // cached, gated, bare twice, broken
			t.Errorf("%d refresh spans, want 5", n)
		}

		rm := tr.collect()
		acq, get := transport.MethodAcquire, transport.MethodGetToken
		wantCounts(t, "requests", counts(t, rm, tracing.MetricRequests, tracing.Dialect, tracing.Outcome), map[string]int64{
			get + "/refreshed": 2, acq + "/hit": 1, get + "/coalesced": 1, acq + "/bare": 2, get + "/error": 2,
		})
		wantCounts(t, "request durations", counts(t, rm, tracing.MetricRequestDuration, tracing.Dialect, tracing.Outcome), map[string]int64{
			get + "/refreshed": 2, acq + "/hit": 1, get + "/coalesced": 1, acq + "/bare": 2, get + "/error": 2,
		})
		wantCounts(t, "refreshes", counts(t, rm, tracing.MetricRefreshes, tracing.RefreshReason, tracing.Outcome), map[string]int64{
			"cold/ok": 3, "bare/ok": 1, "cold/error": 1,
		})
		wantCounts(t, "refresh durations", counts(t, rm, tracing.MetricRefreshDuration, tracing.RefreshReason, tracing.Outcome), map[string]int64{
			"cold/ok": 3, "bare/ok": 1, "cold/error": 1,
		})
		// Time to expiry is recorded for every served token with one.
		wantCounts(t, "remaining", counts(t, rm, tracing.MetricTokenRemaining, tracing.Dialect), map[string]int64{get: 3, acq: 1})
		if m, _ := findMetric(rm, tracing.MetricTokenRemaining); m.Unit != "s" {
			t.Errorf("remaining unit %q", m.Unit)
		} else {
			for _, p := range m.Data.(metricdata.Histogram[float64]).DataPoints {
				if lo, _ := p.Min.Value(); lo != 3600 {
					t.Errorf("remaining min %v, want 3600", lo)
				}
			}
		}
		if n := gauge(t, rm, tracing.MetricActiveSessions); n != 2 {
			t.Errorf("active sessions %d, want 2", n)
		}
		if n := gauge(t, rm, tracing.MetricActiveProviders); n != 4 {
			t.Errorf("active providers %d, want 4", n)
		}
		tr.scan(rm)

		// The gauges follow sessions closing.
		if err := tr.conn.Router().CloseSession("s2"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		rm = tr.collect()
		if s, p := gauge(t, rm, tracing.MetricActiveSessions), gauge(t, rm, tracing.MetricActiveProviders); s != 1 || p != 3 {
			t.Errorf("after close: %d sessions, %d providers; want 1, 3", s, p)
		}
	})
}

func wantCounts(t *testing.T, what string, got, want map[string]int64) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s[%s] = %d, want %d", what, k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok && v != 0 {
			t.Errorf("%s[%s] = %d, not expected", what, k, v)
		}
	}
}

// TestTraceBackgroundRefreshIsLinkedRoot: a request served from the cache
// after the refresh point starts a background refresh, which gets a trace of
// its own with a link back to that request.
func TestTraceBackgroundRefreshIsLinkedRoot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := newTraced(t)
		var calls int
		// 10 min tokens refresh 5 min before expiry (no jitter here).
		if err := tr.conn.Router().Open("s", []actors.Provider{{Name: "p", Source: tr.lived("p", 10*time.Minute, &calls)}}); err != nil {
			t.Fatal(err)
		}
		first := tr.call(call{method: transport.MethodAcquire, session: "s", provider: "p"})
		time.Sleep(6 * time.Minute)
		due := tr.call(call{method: transport.MethodAcquire, session: "s", provider: "p"})
		synctest.Wait()
		if first.Token != due.Token || calls != 2 {
			t.Fatalf("stale-while-revalidate: same token %v, %d credential calls (want 2)", first.Token == due.Token, calls)
		}
		after := tr.call(call{method: transport.MethodAcquire, session: "s", provider: "p"})
		if after.Token == first.Token || after.code != 0 {
			t.Fatalf("the background refresh's token was not served next (code %d)", after.code)
		}
		synctest.Wait() // spans end just after their reply is written

		reqs := tr.requestSpans()
		if len(reqs) != 3 {
			t.Fatalf("%d request spans", len(reqs))
		}
		trigger := reqs[1]
		wantAttr(t, trigger, tracing.Outcome, "hit")
		wantAttr(t, trigger, tracing.RemainingSeconds, 240.0)
		wantAttr(t, reqs[2], tracing.Outcome, "hit")
		if len(tr.childrenOf(trigger)) != 0 {
			t.Error("the background refresh is the trigger's child; want a root with a link")
		}
		refreshes := tr.refreshSpans()
		if len(refreshes) != 2 {
			t.Fatalf("%d refresh spans", len(refreshes))
		}
		bg := refreshes[1]
		wantAttr(t, bg, tracing.RefreshReason, "proactive")
		wantAttr(t, bg, tracing.RefreshOutcome, tracing.RefreshOK)
		if bg.Parent().IsValid() {
			t.Errorf("background refresh has parent %v", bg.Parent())
		}
		if bg.SpanContext().TraceID() == trigger.SpanContext().TraceID() {
			t.Error("background refresh shares the trigger's trace")
		}
		links := bg.Links()
		if len(links) != 1 || !links[0].SpanContext.Equal(trigger.SpanContext()) {
			t.Fatalf("background refresh links %v, want the trigger %v", links, trigger.SpanContext())
		}

		rm := tr.collect()
		wantCounts(t, "refreshes", counts(t, rm, tracing.MetricRefreshes, tracing.RefreshReason, tracing.Outcome), map[string]int64{
			"cold/ok": 1, "proactive/ok": 1,
		})
		tr.scan(rm)
	})
}

// TestTraceparentContinued: a W3C trace context in params._meta (or in the
// JSON-RPC request's own meta) makes the request span, and a foreground
// refresh under it, part of the caller's trace.
func TestTraceparentContinued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := newTraced(t)
		var calls int
		if err := tr.conn.Router().Open("s", []actors.Provider{{Name: "p", Source: tr.lived("p", time.Hour, &calls)}}); err != nil {
			t.Fatal(err)
		}
		const (
			traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
			spanID  = "00f067aa0ba902b7"
		)
		tp := "00-" + traceID + "-" + spanID + "-01"
		got := tr.call(call{method: transport.MethodGetToken, session: "s", provider: "p", meta: map[string]any{"traceparent": tp, "tracestate": "vendor=x"}})
		if got.code != 0 {
			t.Fatalf("code %d", got.code)
		}
		// jsonrpc2's request-level meta works too.
		var viaMeta answer
		otherSpan := "1111111111111111"
		if err := tr.runtime.Call(context.Background(), transport.MethodGetToken,
			map[string]string{"sessionId": "s", "providerName": "p"}, &viaMeta,
			jsonrpc2.Meta(map[string]string{"traceparent": "00-" + traceID + "-" + otherSpan + "-01"})); err != nil {
			t.Fatal(err)
		}
		// A malformed traceparent starts a new trace instead of failing.
		if bad := tr.call(call{method: transport.MethodGetToken, session: "s", provider: "p", meta: map[string]any{"traceparent": "garbage"}}); bad.code != 0 {
			t.Fatalf("malformed traceparent: code %d", bad.code)
		}
		synctest.Wait()

		reqs := tr.requestSpans()
		if len(reqs) != 3 {
			t.Fatalf("%d request spans", len(reqs))
		}
		for i, parentSpan := range []string{spanID, otherSpan} {
			s := reqs[i]
			if s.SpanContext().TraceID().String() != traceID {
				t.Errorf("request %d: trace %s, want %s", i, s.SpanContext().TraceID(), traceID)
			}
			if p := s.Parent(); !p.IsRemote() || p.SpanID().String() != parentSpan {
				t.Errorf("request %d: parent %v, want remote %s", i, p, parentSpan)
			}
		}
		if ts := reqs[0].SpanContext().TraceState().Get("vendor"); ts != "x" {
			t.Errorf("tracestate not continued: %q", ts)
		}
		if reqs[2].Parent().IsValid() || reqs[2].SpanContext().TraceID().String() == traceID {
			t.Errorf("malformed traceparent was continued: %v", reqs[2].Parent())
		}
		kids := tr.childrenOf(reqs[0])
		if len(kids) != 1 || kids[0].Name() != tracing.SpanRefresh || kids[0].SpanContext().TraceID().String() != traceID {
			t.Fatalf("cold refresh not in the caller's trace: %d children", len(kids))
		}
		tr.scan(tr.collect())
	})
}

// TestTraceRemainingIsSeconds: the remaining validity on spans and the
// time-to-expiry metric follow the clock, in seconds.
func TestTraceRemainingIsSeconds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := newTraced(t)
		var calls int
		if err := tr.conn.Router().Open("s", []actors.Provider{{Name: "p", Source: tr.lived("p", 3*time.Hour, &calls)}}); err != nil {
			t.Fatal(err)
		}
		tr.call(call{method: transport.MethodAcquire, session: "s", provider: "p"})
		time.Sleep(90 * time.Minute) // half life: the refresh point, exactly
		tr.call(call{method: transport.MethodAcquire, session: "s", provider: "p"})
		synctest.Wait()
		reqs := tr.requestSpans()
		v, _ := attr(reqs[1], tracing.RemainingSeconds)
		if math.Abs(v.AsFloat64()-5400) > 1e-9 {
			t.Errorf("remaining %v s, want 5400", v.AsFloat64())
		}
		rm := tr.collect()
		m, _ := findMetric(rm, tracing.MetricTokenRemaining)
		h := m.Data.(metricdata.Histogram[float64])
		if len(h.DataPoints) != 1 || h.DataPoints[0].Count != 2 || h.DataPoints[0].Sum != 3*3600+5400 {
			raw, _ := json.Marshal(h)
			t.Errorf("remaining histogram %s", raw)
		}
		tr.scan(rm)
	})
}

// requests is what c recorded of token requests: the names of request
// spans and the tokenbroker.requests counter by outcome.
func requests(t *testing.T, c *capture.Capture) (spans []string, byOutcome map[string]int64) {
	t.Helper()
	for _, s := range c.Spans.Ended() {
		if s.Name() != tracing.SpanRefresh { // the broker's own
			spans = append(spans, s.Name())
		}
	}
	rm, err := c.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := findMetric(&rm, tracing.MetricRequests); !ok {
		return spans, nil
	}
	return spans, counts(t, &rm, tracing.MetricRequests, tracing.Outcome)
}

// Observability is configured once: a connection given no Logger,
// TracerProvider or MeterProvider of its own reports to the broker's (a
// MeterProvider given only to the broker used to lose the request metrics).
// Providers in ConnOptions take precedence.
func TestConnInheritsBrokerObservability(t *testing.T) {
	for _, own := range []bool{false, true} {
		t.Run(map[bool]string{false: "inherited", true: "own"}[own], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				brokers, conns := capture.New(), capture.New()
				defer brokers.Close()
				defer conns.Close()
				b := actors.NewBroker(actors.Options{Logger: brokers.Logger, TracerProvider: brokers.TracerProvider, MeterProvider: brokers.MeterProvider})
				defer b.Close()
				var opts transport.ConnOptions
				want, other := brokers, conns
				if own {
					opts.TracerProvider, opts.MeterProvider = conns.TracerProvider, conns.MeterProvider
					want, other = conns, brokers
				}
				client, runtime := net.Pipe()
				conn := transport.NewConn(context.Background(), b, client, nil, opts)
				defer conn.Close()
				rt := jsonrpc2.NewConn(context.Background(), jsonrpc2.NewBufferedStream(runtime, jsonrpc2.VSCodeObjectCodec{}), jsonrpc2.HandlerWithError(
					func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request) (any, error) { return nil, nil }))
				defer rt.Close()
				if err := conn.Router().Open("s", []actors.Provider{{Name: "p", Source: tokens.Static(tokens.Token{Value: "tok-inherit", ExpiresOn: time.Now().Add(time.Hour)})}}); err != nil {
					t.Fatal(err)
				}
				var res json.RawMessage
				if err := rt.Call(context.Background(), transport.MethodGetToken, map[string]string{"sessionId": "s", "providerName": "p"}, &res); err != nil {
					t.Fatal(err)
				}
				if err := rt.Call(context.Background(), transport.MethodGetToken, map[string]string{"sessionId": "nobody", "providerName": "p"}, &res); err == nil {
					t.Fatal("request for an unknown session answered")
				}
				synctest.Wait() // the span ends and the metrics are recorded after the reply

				spans, byOutcome := requests(t, want)
				if !slices.Equal(spans, []string{transport.MethodGetToken, transport.MethodGetToken}) {
					t.Errorf("request spans %v, want two %s", spans, transport.MethodGetToken)
				}
				wantCounts(t, "requests by outcome", byOutcome, map[string]int64{tracing.OutcomeRefreshed: 1, tracing.OutcomeError: 1})
				if spans, byOutcome := requests(t, other); len(spans) != 0 || len(byOutcome) != 0 {
					t.Errorf("the other providers recorded spans %v, requests %v", spans, byOutcome)
				}
				if logs := brokers.Logs(); !strings.Contains(logs, "token request refused") {
					t.Errorf("the broker's logger did not get the connection's log lines: %q", logs)
				}
			})
		})
	}
}
