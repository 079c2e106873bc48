package leakscan_test

import (
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tokenbroker/tokenbroker/tracing/leakscan"
)

const secret = `s3cr3t<&>"value`

func TestSpans(t *testing.T) {
	kv := []attribute.KeyValue{attribute.String("k", "prefix "+secret)}
	for name, stub := range map[string]tracetest.SpanStub{
		"name":      {Name: secret},
		"attribute": {Name: "a", Attributes: kv},
		"slice":     {Name: "a", Attributes: []attribute.KeyValue{attribute.StringSlice("k", []string{"x", secret})}},
		"event":     {Name: "a", Events: []sdktrace.Event{{Name: "e", Attributes: kv}}},
		"link":      {Name: "a", Links: []sdktrace.Link{{Attributes: kv}}},
		"status":    {Name: "a", Status: sdktrace.Status{Code: codes.Error, Description: "failed: " + secret}},
	} {
		if got := leakscan.Spans([]sdktrace.ReadOnlySpan{stub.Snapshot()}, []string{"other", secret}); len(got) != 1 {
			t.Errorf("%s: findings %v", name, got)
		}
	}
	clean := tracetest.SpanStub{Name: "a", Attributes: []attribute.KeyValue{attribute.String("k", "s3cr3t")}}
	if got := leakscan.Spans([]sdktrace.ReadOnlySpan{clean.Snapshot()}, []string{secret}); len(got) != 0 {
		t.Errorf("false positive: %v", got)
	}
}

func TestMetrics(t *testing.T) {
	rm := &metricdata.ResourceMetrics{ScopeMetrics: []metricdata.ScopeMetrics{{Metrics: []metricdata.Metrics{{
		Name: "m",
		Data: metricdata.Histogram[float64]{DataPoints: []metricdata.HistogramDataPoint[float64]{{
			Attributes: attribute.NewSet(attribute.String("k", secret)),
		}}},
	}}}}}
	if got := leakscan.Metrics(rm, []string{secret}); len(got) != 1 {
		t.Errorf("findings %v", got)
	}
	if got := leakscan.Metrics(rm, []string{"absent"}); len(got) != 0 {
		t.Errorf("false positive %v", got)
	}
	if got := leakscan.Text([]byte("x"+secret), []string{"zz", secret}); len(got) != 1 || got[0] != 1 {
		t.Errorf("Text: %v", got)
	}
}
