// Package telemetry builds tokenload's OpenTelemetry SDK providers and
// their exporters. It lives in tokenload's module so that the exporters
// (and gRPC) stay out of the module graph of services that use tokenbroker.
//
// A Target names where telemetry goes:
//
//	none             nothing is exported (spans are still created and can be
//	                 processed by Config.SpanProcessors)
//	stdout, stderr   JSON lines on the process's standard output or error
//	file:PATH        JSON lines appended to PATH
//	otlp             OTLP, over the protocol named by OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
//	                 or OTEL_EXPORTER_OTLP_PROTOCOL ("grpc" or "http/protobuf", the default)
//	otlp-grpc        OTLP over gRPC
//	otlp-http        OTLP over HTTP (protobuf)
//
// The OTLP exporters read their endpoint, headers, TLS settings and timeouts
// from the standard OTEL_EXPORTER_OTLP_* environment variables (e.g.
// OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318); OTEL_METRICS_EXPORTER=none
// exports no metrics.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Target kinds.
const (
	None     = "none"
	Stdout   = "stdout"
	Stderr   = "stderr"
	File     = "file"
	OTLP     = "otlp"
	OTLPGRPC = "otlp-grpc"
	OTLPHTTP = "otlp-http"
)

// Target is where telemetry goes: a Kind and, for File, a Path.
type Target struct {
	Kind string
	Path string
}

// ParseTarget parses a target as written in a flag: none, stdout, stderr,
// file:PATH, otlp, otlp-grpc or otlp-http. The empty string is none.
func ParseTarget(s string) (Target, error) {
	switch s {
	case "", None:
		return Target{Kind: None}, nil
	case Stdout, Stderr, OTLP, OTLPGRPC, OTLPHTTP:
		return Target{Kind: s}, nil
	}
	if path, ok := strings.CutPrefix(s, File+":"); ok {
		if path == "" {
			return Target{}, errors.New("telemetry: file: target needs a path (file:PATH)")
		}
		return Target{Kind: File, Path: path}, nil
	}
	return Target{}, fmt.Errorf("telemetry: unknown target %q (want none, stdout, stderr, file:PATH, otlp, otlp-grpc or otlp-http)", s)
}

// String is the flag form of t.
func (t Target) String() string {
	if t.Kind == File {
		return File + ":" + t.Path
	}
	if t.Kind == "" {
		return None
	}
	return t.Kind
}

// Config configures New.
type Config struct {
	// Target is where spans (and, with Metrics, metrics) go.
	Target Target
	// Metrics also exports metrics to Target, every MetricInterval.
	Metrics bool
	// MetricInterval: zero means 10 s.
	MetricInterval time.Duration
	// ServiceName is the resource's service.name; empty: the program name.
	ServiceName string
	// Sampler: nil samples every span (parent-based, so a caller's
	// decision carried in a traceparent is honoured).
	Sampler sdktrace.Sampler
	// SpanProcessors run besides the exporter (e.g. a TreePrinter, or a
	// processor that aggregates statistics from spans).
	SpanProcessors []sdktrace.SpanProcessor
	// MetricReaders are added to the MeterProvider besides the exporter
	// (e.g. a ManualReader the program collects itself).
	MetricReaders []sdkmetric.Reader
	// Writer replaces os.Stdout / os.Stderr for those targets (tests).
	Writer io.Writer
}

// Providers are the SDK providers New built. Pass them to
// actors.Options (connections inherit them), or set them as the global ones;
// Shutdown flushes and closes what they export to.
type Providers struct {
	Tracer *sdktrace.TracerProvider
	Meter  *sdkmetric.MeterProvider
	closer io.Closer
}

// Shutdown flushes pending spans and metrics, stops the providers, and
// closes the file of a file target.
func (p *Providers) Shutdown(ctx context.Context) error {
	err := errors.Join(p.Tracer.Shutdown(ctx), p.Meter.Shutdown(ctx))
	if p.closer != nil {
		err = errors.Join(err, p.closer.Close())
	}
	return err
}

// New builds a TracerProvider and a MeterProvider for cfg.
func New(ctx context.Context, cfg Config) (*Providers, error) {
	res, err := newResource(cfg.ServiceName)
	if err != nil {
		return nil, err
	}
	p := &Providers{}
	var w io.Writer
	switch cfg.Target.Kind {
	case Stdout, Stderr:
		w = cfg.Writer
		if w == nil {
			w = os.Stdout
			if cfg.Target.Kind == Stderr {
				w = os.Stderr
			}
		}
	case File:
		f, err := os.OpenFile(cfg.Target.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("telemetry: %w", err)
		}
		w, p.closer = f, f
	}
	if w != nil {
		// Span and metric exporters write from their own goroutines; one
		// lock keeps their JSON documents whole.
		w = &lockedWriter{w: w}
	}
	fail := func(err error) (*Providers, error) {
		if p.closer != nil {
			_ = p.closer.Close()
		}
		return nil, err
	}

	sampler := cfg.Sampler
	if sampler == nil {
		sampler = sdktrace.ParentBased(sdktrace.AlwaysSample())
	}
	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithSampler(sampler)}
	for _, sp := range cfg.SpanProcessors {
		topts = append(topts, sdktrace.WithSpanProcessor(sp))
	}
	spanExp, err := spanExporter(ctx, cfg.Target, w)
	if err != nil {
		return fail(err)
	}
	if spanExp != nil {
		topts = append(topts, sdktrace.WithBatcher(spanExp))
	}

	mopts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	for _, r := range cfg.MetricReaders {
		mopts = append(mopts, sdkmetric.WithReader(r))
	}
	// OTEL_METRICS_EXPORTER=none is the SDKs' standard way to send no
	// metrics, e.g. to a tracing backend such as Jaeger that takes none.
	if cfg.Metrics && os.Getenv("OTEL_METRICS_EXPORTER") != "none" {
		metricExp, err := metricExporter(ctx, cfg.Target, w)
		if err != nil {
			if spanExp != nil {
				_ = spanExp.Shutdown(ctx)
			}
			return fail(err)
		}
		if metricExp != nil {
			interval := cfg.MetricInterval
			if interval <= 0 {
				interval = 10 * time.Second
			}
			mopts = append(mopts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metricExp, sdkmetric.WithInterval(interval))))
		}
	}
	p.Tracer = sdktrace.NewTracerProvider(topts...)
	p.Meter = sdkmetric.NewMeterProvider(mopts...)
	return p, nil
}

func newResource(service string) (*resource.Resource, error) {
	if service == "" {
		service = filepath.Base(os.Args[0])
	}
	// service.name is written out rather than imported from a semconv
	// version, so the schema URL never conflicts with resource.Default's.
	return resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", service)))
}

// exporterKind is t's kind, with otlp resolved to otlp-grpc or otlp-http
// from the standard variables for signal (TRACES or METRICS).
func exporterKind(t Target, signal string) (string, error) {
	if t.Kind != OTLP {
		return t.Kind, nil
	}
	proto := os.Getenv("OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch proto {
	case "", "http/protobuf":
		return OTLPHTTP, nil
	case "grpc":
		return OTLPGRPC, nil
	}
	return "", fmt.Errorf("telemetry: OTLP protocol %q is not supported (want grpc or http/protobuf)", proto)
}

// newExporter builds signal's (TRACES or METRICS) exporter for t: none
// (nil), toWriter for the stdout, stderr and file targets, or OTLP over
// gRPC or HTTP.
func newExporter[E any](ctx context.Context, t Target, signal string, toWriter func() (E, error), grpc, http func(context.Context) (E, error)) (E, error) {
	var none E
	kind, err := exporterKind(t, signal)
	if err != nil {
		return none, err
	}
	switch kind {
	case "", None:
		return none, nil
	case Stdout, Stderr, File:
		return toWriter()
	case OTLPGRPC:
		return grpc(ctx)
	case OTLPHTTP:
		return http(ctx)
	}
	return none, fmt.Errorf("telemetry: unknown target %q", t.Kind)
}

func spanExporter(ctx context.Context, t Target, w io.Writer) (sdktrace.SpanExporter, error) {
	return newExporter(ctx, t, "TRACES",
		func() (sdktrace.SpanExporter, error) { return stdouttrace.New(stdouttrace.WithWriter(w)) },
		func(ctx context.Context) (sdktrace.SpanExporter, error) { return otlptracegrpc.New(ctx) },
		func(ctx context.Context) (sdktrace.SpanExporter, error) { return otlptracehttp.New(ctx) })
}

func metricExporter(ctx context.Context, t Target, w io.Writer) (sdkmetric.Exporter, error) {
	return newExporter(ctx, t, "METRICS",
		func() (sdkmetric.Exporter, error) { return stdoutmetric.New(stdoutmetric.WithWriter(w)) },
		func(ctx context.Context) (sdkmetric.Exporter, error) { return otlpmetricgrpc.New(ctx) },
		func(ctx context.Context) (sdkmetric.Exporter, error) { return otlpmetrichttp.New(ctx) })
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
