// Package capture records everything tokenbroker reports — logs at every
// level, spans and metrics — so that tests can scan it for secrets and read
// it back. It is test support: nothing in it is meant for production.
package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tokenbroker/tokenbroker/internal/leakscan"
)

// Capture bundles a Debug-level logger, a span recorder and a manual metric
// reader. Give Logger, TracerProvider and MeterProvider to the broker and
// the transport.
type Capture struct {
	Logger         *slog.Logger
	Spans          *tracetest.SpanRecorder
	TracerProvider *sdktrace.TracerProvider
	Reader         *sdkmetric.ManualReader
	MeterProvider  *sdkmetric.MeterProvider

	mu      sync.Mutex
	logs    bytes.Buffer // every record, rendered by slog's text and JSON handlers
	records int
	extra   []string // other text to scan, e.g. errors the runtime received
}

// New returns a Capture whose logger keeps everything from Debug up.
func New() *Capture {
	c := &Capture{Spans: tracetest.NewSpanRecorder(), Reader: sdkmetric.NewManualReader()}
	opts := &slog.HandlerOptions{Level: slog.LevelDebug}
	w := lockedWriter{c}
	// Both renderings: the text handler prints arbitrary values with %+v,
	// which shows unexported fields the JSON handler would drop.
	c.Logger = slog.New(fanout{slog.NewTextHandler(w, opts), slog.NewJSONHandler(w, opts), c})
	c.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(c.Spans))
	c.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(c.Reader))
	return c
}

// Close shuts the providers down.
func (c *Capture) Close() error {
	ctx := context.Background()
	return errors.Join(c.TracerProvider.Shutdown(ctx), c.MeterProvider.Shutdown(ctx))
}

// Add records more text to scan, such as an error message the runtime got.
func (c *Capture) Add(label, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.extra = append(c.extra, label+": "+text)
}

// Records is the number of log records seen.
func (c *Capture) Records() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.records
}

// Logs returns every log record so far, each rendered as text and as JSON.
func (c *Capture) Logs() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.logs.String()
}

// SpanText renders every span started so far, ended or not: name, status,
// attributes, events and links.
func (c *Capture) SpanText() string {
	var b strings.Builder
	var spans []sdktrace.ReadOnlySpan // Started holds the ended ones too
	for _, s := range c.Spans.Started() {
		spans = append(spans, s)
	}
	for _, s := range tracetest.SpanStubsFromReadOnlySpans(spans) {
		fmt.Fprintf(&b, "span %q status=%v %q attrs=%v events=%+v links=%+v\n",
			s.Name, s.Status.Code, s.Status.Description, s.Attributes, s.Events, s.Links)
	}
	return b.String()
}

// Metrics collects the metrics now.
func (c *Capture) Metrics(ctx context.Context) (metricdata.ResourceMetrics, error) {
	var rm metricdata.ResourceMetrics
	err := c.Reader.Collect(ctx, &rm)
	return rm, err
}

// MetricText renders a collection of every metric with all its data points.
func (c *Capture) MetricText(ctx context.Context) (string, error) {
	rm, err := c.Metrics(ctx)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			fmt.Fprintf(&b, "metric %q %q %+v\n", m.Name, m.Description, m.Data)
		}
	}
	return b.String(), nil
}

// Int64Sum returns the sum of the data points of an int64 sum metric (a
// counter or up-down counter) whose attributes contain all of attrs, given
// as key=value strings; false when there is no such metric.
func (c *Capture) Int64Sum(ctx context.Context, name string, attrs ...string) (int64, bool, error) {
	rm, err := c.Metrics(ctx)
	if err != nil {
		return 0, false, err
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				return 0, false, fmt.Errorf("capture: metric %q is a %T", name, m.Data)
			}
			var total int64
			for _, dp := range sum.DataPoints {
				if hasAll(dp.Attributes.Encoded(attribute.DefaultEncoder()), attrs) {
					total += dp.Value
				}
			}
			return total, true, nil
		}
	}
	return 0, false, nil
}

func hasAll(encoded string, attrs []string) bool {
	parts := strings.Split(encoded, ",")
	for _, want := range attrs {
		if !slices.Contains(parts, want) {
			return false
		}
	}
	return true
}

// Finding says where a secret was seen. It names the secret by the label it
// was given, never by its value.
type Finding struct {
	Secret string // the label
	Where  string // logs, spans, metrics or an Add label
}

func (f Finding) String() string { return f.Secret + " in " + f.Where }

// Find scans logs, spans, metrics and added text for each secret (label ->
// value), verbatim and JSON-escaped.
func (c *Capture) Find(ctx context.Context, secrets map[string]string) ([]Finding, error) {
	metrics, err := c.MetricText(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	places := map[string]string{"logs": c.logs.String(), "metrics": metrics}
	for _, e := range c.extra {
		label, _, _ := strings.Cut(e, ": ")
		places[label] += e + "\n"
	}
	c.mu.Unlock()
	places["spans"] = c.SpanText()
	return Scan(places, secrets), nil
}

// Scan looks for every secret in every place, verbatim and JSON-escaped
// (leakscan.Text's rule).
func Scan(places map[string]string, secrets map[string]string) []Finding {
	labels := slices.Sorted(maps.Keys(secrets))
	values := make([]string, len(labels))
	for i, l := range labels {
		values[i] = secrets[l]
	}
	var out []Finding
	for where, text := range places {
		for _, i := range leakscan.Text([]byte(text), values) {
			out = append(out, Finding{Secret: labels[i], Where: where})
		}
	}
	return out
}

type lockedWriter struct{ c *Capture }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.c.logs.Write(p)
}

// fanout sends each record to both handlers and counts it.
type fanout struct {
	text, json slog.Handler
	c          *Capture
}

func (f fanout) Enabled(context.Context, slog.Level) bool { return true }

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	f.c.mu.Lock()
	f.c.records++
	f.c.mu.Unlock()
	if err := f.text.Handle(ctx, r.Clone()); err != nil {
		return err
	}
	return f.json.Handle(ctx, r)
}

func (f fanout) WithAttrs(as []slog.Attr) slog.Handler {
	return fanout{f.text.WithAttrs(as), f.json.WithAttrs(as), f.c}
}

func (f fanout) WithGroup(name string) slog.Handler {
	return fanout{f.text.WithGroup(name), f.json.WithGroup(name), f.c}
}
