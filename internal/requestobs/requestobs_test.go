package requestobs_test

import (
	"context"
	"maps"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tokenbroker/tokenbroker/internal/metrictest"
	"github.com/tokenbroker/tokenbroker/internal/requestobs"
	"github.com/tokenbroker/tokenbroker/tracing"
)

func newRecorded(t *testing.T) (*requestobs.Recorder, *tracetest.SpanRecorder, *sdkmetric.ManualReader) {
	t.Helper()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	return requestobs.New(tp, mp), spans, reader
}

// requestCounts returns tokenbroker.requests by "dialect/outcome".
func requestCounts(t *testing.T, reader *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return metrictest.Sums(&rm, tracing.MetricRequests, tracing.Dialect, tracing.Outcome)
}

func attrs(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}

// Every dialect's requests are spans and metrics of the same shape; only the
// span's name and kind and the dialect attribute tell the doors apart.
func TestDialectsRecordAlike(t *testing.T) {
	rec, spans, reader := newRecorded(t)
	ctx := context.Background()
	expires := time.Now().Add(time.Hour)
	for _, d := range []requestobs.Dialect{requestobs.Acquire, requestobs.GetToken, requestobs.Callback} {
		_, q := rec.Start(ctx, d, "s1", "p1", attribute.String("caller.extra", "x"))
		q.Served(ctx, tracing.OutcomeHit, expires)
		_, q = rec.Start(ctx, d, "s1", "p1")
		q.Served(ctx, tracing.OutcomeBare, time.Time{})
		_, q = rec.Start(ctx, d, "s2", "p2")
		q.Failed(ctx, "credential failed")
	}

	want := map[string]int64{}
	for _, d := range []string{tracing.DialectAcquire, tracing.DialectGetToken, tracing.DialectCallback} {
		for _, o := range []string{tracing.OutcomeHit, tracing.OutcomeBare, tracing.OutcomeError} {
			want[d+"/"+o] = 1
		}
	}
	if got := requestCounts(t, reader); !maps.Equal(got, want) {
		t.Errorf("request counts = %v, want %v", got, want)
	}

	ended := spans.Ended()
	if len(ended) != 9 {
		t.Fatalf("%d spans, want 9", len(ended))
	}
	names := []string{tracing.DialectAcquire, tracing.DialectGetToken, tracing.SpanCallback}
	kinds := []trace.SpanKind{trace.SpanKindServer, trace.SpanKindServer, trace.SpanKindInternal}
	for i, s := range ended {
		d := i / 3
		if s.Name() != names[d] || s.SpanKind() != kinds[d] {
			t.Errorf("span %d: %s %v, want %s %v", i, s.Name(), s.SpanKind(), names[d], kinds[d])
		}
		a := attrs(s.Attributes())
		switch i % 3 {
		case 0:
			if a[tracing.Outcome].AsString() != tracing.OutcomeHit || a["caller.extra"].AsString() != "x" || a[tracing.SessionID].AsString() != "s1" || a[tracing.ProviderName].AsString() != "p1" {
				t.Errorf("hit span %d attributes %v", i, a)
			}
			if left := a[tracing.RemainingSeconds].AsFloat64(); left < 3000 || left > 3600 {
				t.Errorf("hit span %d remaining %v s, want about 3600", i, left)
			}
		case 1:
			if _, ok := a[tracing.RemainingSeconds]; ok {
				t.Errorf("bare span %d reports remaining validity: %v", i, a)
			}
		case 2:
			if s.Status().Code != codes.Error || s.Status().Description != "credential failed" || a[tracing.Outcome].AsString() != tracing.OutcomeError {
				t.Errorf("failed span %d: status %v, attributes %v", i, s.Status(), a)
			}
		}
	}
}

// An outcome outside tracing's values is still counted under its own name.
func TestUnknownOutcomeCounted(t *testing.T) {
	rec, _, reader := newRecorded(t)
	ctx := context.Background()
	_, q := rec.Start(ctx, requestobs.GetToken, "s", "p")
	q.Served(ctx, "novel", time.Time{})
	if got := requestCounts(t, reader); got[tracing.DialectGetToken+"/novel"] != 1 {
		t.Errorf("request counts = %v", got)
	}
}

// With no SDK installed (no-op providers, the library's default), the
// metrics of a request allocate nothing: their attribute sets and option
// slices are built once. What remains is the tracing API's own: the span's
// start options (2), its context (1), the attributes given at start (1) and
// at the end (1).
const allocsPerRequest = 5

func TestNoopRecordingAllocations(t *testing.T) {
	rec := requestobs.New(tracenoop.NewTracerProvider(), metricnoop.NewMeterProvider())
	ctx := context.Background()
	expires := time.Now().Add(time.Hour)
	allocs := testing.AllocsPerRun(1000, func() {
		_, q := rec.Start(ctx, requestobs.GetToken, "s", "p")
		q.Served(ctx, tracing.OutcomeHit, expires)
		_, q = rec.Start(ctx, requestobs.Callback, "s", "p")
		q.Failed(ctx, "failed")
	})
	if allocs > 2*allocsPerRequest {
		t.Errorf("%v allocations per two requests, want at most %d", allocs, 2*allocsPerRequest)
	}
}
