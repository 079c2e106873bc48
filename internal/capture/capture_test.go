package capture

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Each channel must actually be scanned: a secret put there is found.
func TestFindSeesEveryChannel(t *testing.T) {
	ctx := context.Background()
	c := New()
	defer c.Close()
	secrets := map[string]string{
		"log-attr":   "s3cr3t-log-attr",
		"log-struct": "s3cr3t-unexported",
		"span":       "s3cr3t-span",
		"event":      "s3cr3t-event",
		"metric":     "s3cr3t-metric",
		"quoted":     `s3cr3t"quoted`,
		"added":      "s3cr3t-added",
		"absent":     "never-written",
	}
	type hidden struct{ v string }
	c.Logger.With("k", "v").WithGroup("g").Debug("msg", "a", secrets["log-attr"])
	c.Logger.Info("msg", "m", &struct{ h hidden }{hidden{secrets["log-struct"]}})
	c.Logger.Warn("msg", "q", secrets["quoted"])
	_, span := c.TracerProvider.Tracer("t").Start(ctx, "s")
	span.SetAttributes(attribute.String("x", secrets["span"]))
	span.RecordError(errors.New(secrets["event"]))
	span.End()
	counter, _ := c.MeterProvider.Meter("m").Int64Counter("c")
	counter.Add(ctx, 2, metricAttrs("x", secrets["metric"]))
	c.Add("rpc", secrets["added"])

	found, err := c.Find(ctx, secrets)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range found {
		seen[f.Secret] = true
	}
	for label := range secrets {
		if seen[label] != (label != "absent") {
			t.Errorf("%s: found=%v; findings %v", label, seen[label], found)
		}
	}
	if c.Records() != 3 {
		t.Errorf("records = %d, want 3", c.Records())
	}
	if n, ok, err := c.Int64Sum(ctx, "c", "x="+secrets["metric"]); err != nil || !ok || n != 2 {
		t.Errorf("Int64Sum = %d %v %v", n, ok, err)
	}
}

func metricAttrs(k, v string) metric.AddOption { return metric.WithAttributes(attribute.String(k, v)) }
