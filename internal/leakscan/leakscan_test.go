package leakscan_test

import (
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tokenbroker/tokenbroker/internal/leakscan"
)

const secret = `s3cr3t<&>"value`

// noSecret checks that findings, which tests print, do not repeat the
// secret they report.
func noSecret(t *testing.T, findings []string) {
	t.Helper()
	for _, f := range findings {
		if strings.Contains(f, secret) || strings.Contains(f, "s3cr3t") {
			t.Errorf("a finding shows the secret: %s", strings.ReplaceAll(f, secret, "<SECRET>"))
		}
	}
}

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
		got := leakscan.Spans([]sdktrace.ReadOnlySpan{stub.Snapshot()}, []string{"other", secret})
		if len(got) != 1 || !strings.Contains(got[0], "secret #1") {
			t.Errorf("%s: findings %q, want one naming secret #1", name, got)
		}
		noSecret(t, got)
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
	got := leakscan.Metrics(rm, []string{secret})
	if len(got) != 1 || !strings.Contains(got[0], "secret #0") {
		t.Errorf("findings %q, want one naming secret #0", got)
	}
	noSecret(t, got)
	named := &metricdata.ResourceMetrics{ScopeMetrics: []metricdata.ScopeMetrics{{Metrics: []metricdata.Metrics{{Name: secret}}}}}
	got = leakscan.Metrics(named, []string{secret})
	if len(got) != 1 {
		t.Errorf("metric named by the secret: findings %q", got)
	}
	noSecret(t, got)
	if got := leakscan.Metrics(rm, []string{"absent"}); len(got) != 0 {
		t.Errorf("false positive %v", got)
	}
	if got := leakscan.Text([]byte("x"+secret), []string{"zz", secret}); len(got) != 1 || got[0] != 1 {
		t.Errorf("Text: %v", got)
	}
}
