package telemetry_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/cmd/tokenload/internal/telemetry"
	"github.com/tokenbroker/tokenbroker/internal/leakscan"
	"github.com/tokenbroker/tokenbroker/internal/syncbuf"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// protoactor's dead-letter throttle sleeps about a second after a
		// message to a stopped actor, then ends.
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
		// net/http's idle keep-alive connections of the OTLP HTTP
		// exporter's client close on their own.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

func TestParseTarget(t *testing.T) {
	for in, want := range map[string]telemetry.Target{
		"":          {Kind: telemetry.None},
		"none":      {Kind: telemetry.None},
		"stdout":    {Kind: telemetry.Stdout},
		"stderr":    {Kind: telemetry.Stderr},
		"otlp":      {Kind: telemetry.OTLP},
		"otlp-grpc": {Kind: telemetry.OTLPGRPC},
		"otlp-http": {Kind: telemetry.OTLPHTTP},
		"file:a/b":  {Kind: telemetry.File, Path: "a/b"},
	} {
		got, err := telemetry.ParseTarget(in)
		if err != nil || got != want {
			t.Errorf("ParseTarget(%q) = %v, %v; want %v", in, got, err, want)
		}
		if in != "" {
			if back, _ := telemetry.ParseTarget(got.String()); back != got {
				t.Errorf("%v does not round-trip", got)
			}
		}
	}
	for _, bad := range []string{"file:", "jaeger", "FILE:x", "otlp:grpc"} {
		if _, err := telemetry.ParseTarget(bad); err == nil {
			t.Errorf("ParseTarget(%q) accepted", bad)
		}
	}
}

// exercise runs one cold and one cached token request through a broker
// using p, and returns the token value served.
func exercise(t *testing.T, p *telemetry.Providers) string {
	t.Helper()
	b := actors.NewBroker(actors.Options{TracerProvider: p.Tracer, MeterProvider: p.Meter})
	defer func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	}()
	r := b.NewRouter()
	secret := fmt.Sprintf("export-secret-%d", time.Now().UnixNano())
	src := tokens.Static(tokens.Token{Value: secret, ExpiresOn: time.Now().Add(time.Hour)})
	if err := r.Open("s", []actors.Provider{{Name: "p", Source: src}}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		g, err := r.Acquire(context.Background(), tokens.Request{SessionID: "s", ProviderName: "p"})
		if err != nil || g.Token.Value != secret {
			t.Fatalf("acquire: %v", err)
		}
	}
	// The gauges are observed only while the broker runs: export now.
	if err := p.Meter.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return secret
}

// jsonLines decodes every line of out and returns the span names and
// metric names found.
func jsonLines(t *testing.T, out []byte) (spans, metrics []string) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var doc struct {
			Name         string
			ScopeMetrics []struct{ Metrics []struct{ Name string } }
		}
		if err := json.Unmarshal(sc.Bytes(), &doc); err != nil {
			t.Fatalf("not a JSON line: %v", err)
		}
		if doc.Name != "" {
			spans = append(spans, doc.Name)
		}
		for _, sm := range doc.ScopeMetrics {
			for _, m := range sm.Metrics {
				metrics = append(metrics, m.Name)
			}
		}
	}
	return spans, metrics
}

func TestStdoutAndFileTargets(t *testing.T) {
	var buf syncbuf.Buffer
	file := filepath.Join(t.TempDir(), "telemetry.jsonl")
	for _, target := range []string{"stdout", "file:" + file} {
		t.Run(target, func(t *testing.T) {
			tg, err := telemetry.ParseTarget(target)
			if err != nil {
				t.Fatal(err)
			}
			p, err := telemetry.New(context.Background(), telemetry.Config{Target: tg, Metrics: true, Writer: &buf, ServiceName: "export-test"})
			if err != nil {
				t.Fatal(err)
			}
			secret := exercise(t, p)
			if err := p.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			out := buf.Bytes()
			if tg.Kind == telemetry.File {
				if out, err = os.ReadFile(file); err != nil {
					t.Fatal(err)
				}
				if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
					t.Errorf("file mode %v", fi.Mode())
				}
			}
			spans, metrics := jsonLines(t, out)
			if !slices.Contains(spans, tracing.SpanRefresh) {
				t.Errorf("no refresh span exported; spans %v", spans)
			}
			for _, want := range []string{tracing.MetricRefreshes, tracing.MetricActiveSessions} {
				if !slices.Contains(metrics, want) {
					t.Errorf("metric %s not exported; got %v", want, metrics)
				}
			}
			if !bytes.Contains(out, []byte(`"export-test"`)) {
				t.Error("service name missing from the resource")
			}
			if hits := leakscan.Text(out, []string{secret}); len(hits) != 0 {
				t.Error("token value exported")
			}
		})
	}
}

// collector is an OTLP stub on 127.0.0.1 speaking HTTP or gRPC.
type collector struct {
	mu      sync.Mutex
	spans   []string
	metrics []string
}

// add records the span or metric names of an export request.
func (c *collector) add(req proto.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch req := req.(type) {
	case *coltracepb.ExportTraceServiceRequest:
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					c.spans = append(c.spans, s.GetName())
				}
			}
		}
	case *colmetricpb.ExportMetricsServiceRequest:
		for _, rm := range req.GetResourceMetrics() {
			for _, sm := range rm.GetScopeMetrics() {
				for _, m := range sm.GetMetrics() {
					c.metrics = append(c.metrics, m.GetName())
				}
			}
		}
	}
}

func (c *collector) check(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !slices.Contains(c.spans, tracing.SpanRefresh) {
		t.Errorf("collector got spans %v", c.spans)
	}
	if !slices.Contains(c.metrics, tracing.MetricRefreshes) {
		t.Errorf("collector got metrics %v", c.metrics)
	}
}

func (c *collector) serveHTTP(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil || r.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		var req proto.Message
		switch r.URL.Path {
		case "/v1/traces":
			req = &coltracepb.ExportTraceServiceRequest{}
		case "/v1/metrics":
			req = &colmetricpb.ExportMetricsServiceRequest{}
		default:
			http.NotFound(w, r)
			return
		}
		if proto.Unmarshal(body, req) != nil {
			http.Error(w, "bad protobuf", http.StatusBadRequest)
			return
		}
		c.add(req)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

type grpcTraces struct {
	coltracepb.UnimplementedTraceServiceServer
	c *collector
}

func (g grpcTraces) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	g.c.add(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

type grpcMetrics struct {
	colmetricpb.UnimplementedMetricsServiceServer
	c *collector
}

func (g grpcMetrics) Export(_ context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	g.c.add(req)
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

func (c *collector) serveGRPC(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, grpcTraces{c: c})
	colmetricpb.RegisterMetricsServiceServer(srv, grpcMetrics{c: c})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return "http://" + ln.Addr().String()
}

// TestOTLPTargets sends to collector stubs on 127.0.0.1, the endpoint and
// protocol coming from the standard environment variables.
func TestOTLPTargets(t *testing.T) {
	for _, tc := range []struct {
		name, target, protocol string
		grpc                   bool
	}{
		{"http", "otlp-http", "", false},
		{"grpc", "otlp-grpc", "", true},
		{"otlp-default-is-http", "otlp", "", false},
		{"otlp-env-grpc", "otlp", "grpc", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &collector{}
			endpoint := c.serveHTTP
			if tc.grpc {
				endpoint = c.serveGRPC
			}
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(t))
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tc.protocol)
			t.Setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "")
			t.Setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "")
			tg, err := telemetry.ParseTarget(tc.target)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p, err := telemetry.New(ctx, telemetry.Config{Target: tg, Metrics: true})
			if err != nil {
				t.Fatal(err)
			}
			exercise(t, p)
			if err := p.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			c.check(t)
		})
	}
}

// TestNoMetrics: OTEL_METRICS_EXPORTER=none leaves the metrics out (a
// tracing backend such as Jaeger takes none) and the spans in.
func TestNoMetrics(t *testing.T) {
	c := &collector{}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", c.serveGRPC(t))
	t.Setenv("OTEL_METRICS_EXPORTER", "none")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := telemetry.New(ctx, telemetry.Config{Target: telemetry.Target{Kind: telemetry.OTLPGRPC}, Metrics: true})
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, p)
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !slices.Contains(c.spans, tracing.SpanRefresh) || len(c.metrics) != 0 {
		t.Errorf("spans %v, metrics %v: want spans and no metrics", c.spans, c.metrics)
	}
}

func TestOTLPUnsupportedProtocol(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "")
	if _, err := telemetry.New(context.Background(), telemetry.Config{Target: telemetry.Target{Kind: telemetry.OTLP}}); err == nil || !strings.Contains(err.Error(), "http/json") {
		t.Fatalf("err = %v", err)
	}
}
