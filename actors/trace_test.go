package actors_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/leakscan"
	"github.com/tokenbroker/tokenbroker/internal/metrictest"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
)

// recorded is a broker whose spans and metrics are recorded in memory.
type recorded struct {
	rec    *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	broker *actors.Broker

	mu      sync.Mutex
	secrets []string
}

// newRecorded must be called inside a synctest bubble.
func newRecorded(t *testing.T) *recorded {
	r := &recorded{rec: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	r.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.rec))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.reader))
	r.broker = actors.NewBroker(actors.Options{TracerProvider: r.tp, MeterProvider: mp, Rand: func() float64 { return 0 }})
	t.Cleanup(func() {
		if err := r.broker.Close(); err != nil {
			t.Error(err)
		}
		_ = r.tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
		// A message to a stopped actor starts protoactor's dead-letter
		// throttle, a goroutine that waits one second; let it end inside
		// the bubble (fake time: this costs nothing).
		time.Sleep(2 * time.Second)
	})
	return r
}

// source gives tokens valid for life; fail says which calls (1-based) fail.
func (r *recorded) source(name string, life time.Duration, fail ...int) (tokens.Source, *int) {
	calls := new(int)
	return tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		*calls++
		for _, n := range fail {
			if n == *calls {
				return tokens.Token{}, fmt.Errorf("%s: call %d refused", name, n)
			}
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		v := fmt.Sprintf("%s-secret-%d-dG9rZW4", name, *calls)
		r.secrets = append(r.secrets, v)
		return tokens.Token{Value: v, ExpiresOn: time.Now().Add(life)}, nil
	}), calls
}

func (r *recorded) refreshes() []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range r.rec.Ended() {
		if s.Name() == tracing.SpanRefresh {
			out = append(out, s)
		}
	}
	return out
}

func (r *recorded) check(t *testing.T) *metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	secrets := append([]string(nil), r.secrets...)
	r.mu.Unlock()
	if len(secrets) == 0 {
		t.Fatal("no secrets handed out")
	}
	for _, f := range leakscan.Spans(r.rec.Ended(), secrets) {
		t.Error(f)
	}
	for _, f := range leakscan.Metrics(&rm, secrets) {
		t.Error(f)
	}
	return &rm
}

func attrOf(s sdktrace.ReadOnlySpan, k attribute.Key) any {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value.AsInterface()
		}
	}
	return nil
}

func refreshCounts(rm *metricdata.ResourceMetrics) map[string]int64 {
	return metrictest.Sums(rm, tracing.MetricRefreshes, tracing.RefreshReason, tracing.Outcome)
}

func gaugeOf(t *testing.T, rm *metricdata.ResourceMetrics, name string) int64 {
	t.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m.Data.(metricdata.Sum[int64]).DataPoints[0].Value
			}
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestRefreshReasonsAndParentage covers the reasons a request cannot be
// served from the cache (cold, expired, invalidated, retry): each refresh
// is a child of the caller's span and counted by reason and outcome.
func TestRefreshReasonsAndParentage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecorded(t)
		router := r.broker.NewRouter()
		src, calls := r.source("p", 10*time.Minute, 3) // the third call fails
		if err := router.Open("s", []actors.Provider{{Name: "p", Source: src}}); err != nil {
			t.Fatal(err)
		}
		tracer := r.tp.Tracer("test")
		acquire := func(label string) (actors.Grant, error, trace.SpanContext) {
			ctx, span := tracer.Start(context.Background(), label)
			defer span.End()
			g, err := router.Acquire(ctx, tokens.Request{SessionID: "s", ProviderName: "p"})
			return g, err, span.SpanContext()
		}

		var callers []trace.SpanContext
		step := func(label string, want actors.Outcome, wantErr bool) {
			t.Helper()
			g, err, sc := acquire(label)
			if (err != nil) != wantErr || (!wantErr && g.Outcome != want) {
				t.Fatalf("%s: outcome %v, err %v", label, g.Outcome, err)
			}
			callers = append(callers, sc)
		}
		step("cold", actors.OutcomeRefreshed, false)
		// Unused, the provider does not refresh at its refresh point; past
		// the floor the next request waits for a refresh.
		time.Sleep(9*time.Minute + 30*time.Second)
		step("expired", actors.OutcomeRefreshed, false)
		if err := router.Invalidate("s", "p"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		step("invalidated", actors.OutcomeError, true) // call 3 fails
		time.Sleep(r.broker.Policy().BackoffFloor)     // the back-off, with a zero draw
		step("retry", actors.OutcomeRefreshed, false)
		synctest.Wait()
		if *calls != 4 {
			t.Fatalf("%d credential calls, want 4", *calls)
		}

		refreshes := r.refreshes()
		wantReasons := []string{"cold", "expired", "invalidated", "retry"}
		if len(refreshes) != len(wantReasons) {
			t.Fatalf("%d refresh spans, want %d", len(refreshes), len(wantReasons))
		}
		for i, s := range refreshes {
			if got := attrOf(s, tracing.RefreshReason); got != wantReasons[i] {
				t.Errorf("refresh %d: reason %v, want %s", i, got, wantReasons[i])
			}
			if s.Parent().SpanID() != callers[i].SpanID() || s.SpanContext().TraceID() != callers[i].TraceID() {
				t.Errorf("refresh %d (%s) is not the caller's child", i, wantReasons[i])
			}
			if len(s.Links()) != 0 {
				t.Errorf("foreground refresh %d has links", i)
			}
			failed := wantReasons[i] == "invalidated"
			if (s.Status().Code == codes.Error) != failed {
				t.Errorf("refresh %d status %v", i, s.Status())
			}
			if failed && s.Status().Description == "" {
				t.Error("failed refresh has no status message")
			}
		}
		rm := r.check(t)
		got := refreshCounts(rm)
		for k, v := range map[string]int64{"cold/ok": 1, "expired/ok": 1, "invalidated/error": 1, "retry/ok": 1} {
			if got[k] != v {
				t.Errorf("refreshes[%s] = %d, want %d (all: %v)", k, got[k], v, got)
			}
		}
	})
}

// TestBackgroundRetryIsRoot: a proactive refresh that fails keeps the
// valid token served and retries in the background; both are roots, the
// first linked to the request that found it due, the timer-driven retry
// linked to nothing.
func TestBackgroundRetryIsRoot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecorded(t)
		router := r.broker.NewRouter()
		src, calls := r.source("p", 10*time.Minute, 2)
		if err := router.Open("s", []actors.Provider{{Name: "p", Source: src}}); err != nil {
			t.Fatal(err)
		}
		req := tokens.Request{SessionID: "s", ProviderName: "p"}
		first, err := router.Acquire(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(6 * time.Minute)
		ctx, span := r.tp.Tracer("test").Start(context.Background(), "trigger")
		g, err := router.Acquire(ctx, req)
		span.End()
		if err != nil || g.Outcome != actors.OutcomeHit || g.Token != first.Token {
			t.Fatalf("past the refresh point: %v %v", g.Outcome, err)
		}
		synctest.Wait() // the proactive refresh fails
		time.Sleep(r.broker.Policy().BackoffFloor)
		synctest.Wait() // the retry timer (the floor, with a zero draw) fired, the retry succeeded
		if *calls != 3 {
			t.Fatalf("%d credential calls, want 3", *calls)
		}
		g, err = router.Acquire(context.Background(), req)
		if err != nil || g.Token == first.Token {
			t.Fatalf("retry's token not served: %v", err)
		}
		refreshes := r.refreshes()
		if len(refreshes) != 3 {
			t.Fatalf("%d refresh spans", len(refreshes))
		}
		proactive, retry := refreshes[1], refreshes[2]
		if attrOf(proactive, tracing.RefreshReason) != "proactive" || attrOf(proactive, tracing.RefreshOutcome) != tracing.RefreshError {
			t.Errorf("proactive: %v", proactive.Attributes())
		}
		if proactive.Parent().IsValid() || len(proactive.Links()) != 1 || !proactive.Links()[0].SpanContext.Equal(span.SpanContext()) {
			t.Errorf("proactive refresh: parent %v links %v", proactive.Parent(), proactive.Links())
		}
		if attrOf(retry, tracing.RefreshReason) != "retry" || attrOf(retry, tracing.RefreshOutcome) != tracing.RefreshOK {
			t.Errorf("retry: %v", retry.Attributes())
		}
		if retry.Parent().IsValid() || len(retry.Links()) != 0 {
			t.Errorf("timer retry: parent %v links %v", retry.Parent(), retry.Links())
		}
		got := refreshCounts(r.check(t))
		for k, v := range map[string]int64{"cold/ok": 1, "proactive/error": 1, "retry/ok": 1} {
			if got[k] != v {
				t.Errorf("refreshes[%s] = %d, want %d (all: %v)", k, got[k], v, got)
			}
		}
	})
}

// TestSharedCredentialTelemetry: sessions sharing a credential cause one
// refresh, marked shared; the gauges count one provider for all of them.
func TestSharedCredentialTelemetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecorded(t)
		src, calls := r.source("mi", time.Hour)
		cred, err := r.broker.NewCredential("mi", "scope", src)
		if err != nil {
			t.Fatal(err)
		}
		router := r.broker.NewRouter()
		for i := range 3 {
			if err := router.Open(fmt.Sprint("s", i), []actors.Provider{{Name: "a", Source: cred}, {Name: "b", Source: cred}}); err != nil {
				t.Fatal(err)
			}
		}
		var tok tokens.Token
		for i := range 3 {
			for _, p := range []string{"a", "b"} {
				g, err := router.Acquire(context.Background(), tokens.Request{SessionID: fmt.Sprint("s", i), ProviderName: p})
				if err != nil {
					t.Fatal(err)
				}
				if tok.Value != "" && g.Token != tok {
					t.Fatal("sessions sharing a credential got different tokens")
				}
				tok = g.Token
			}
		}
		if _, err := cred.Token(context.Background(), tokens.Request{}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if *calls != 1 {
			t.Fatalf("%d credential calls, want 1", *calls)
		}
		refreshes := r.refreshes()
		if len(refreshes) != 1 || attrOf(refreshes[0], tracing.Shared) != true || attrOf(refreshes[0], tracing.ProviderName) != "mi" {
			t.Fatalf("shared refresh spans: %d", len(refreshes))
		}
		rm := r.check(t)
		if s, p := gaugeOf(t, rm, tracing.MetricActiveSessions), gaugeOf(t, rm, tracing.MetricActiveProviders); s != 3 || p != 1 {
			t.Errorf("gauges: %d sessions, %d providers; want 3, 1", s, p)
		}
		router.Close()
		cred.Close()
		synctest.Wait()
		rm = r.check(t)
		if s, p := gaugeOf(t, rm, tracing.MetricActiveSessions), gaugeOf(t, rm, tracing.MetricActiveProviders); s != 0 || p != 0 {
			t.Errorf("after close: %d sessions, %d providers", s, p)
		}
		if !errors.Is(func() error { _, err := cred.Token(context.Background(), tokens.Request{}); return err }(), actors.ErrClosed) {
			t.Error("closed credential still serves")
		}
	})
}
