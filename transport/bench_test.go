package transport

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// The transport, not the broker, is the ceiling of a token request over
// JSON-RPC. So the broker is measured as a ratio to a raw jsonrpc2 async
// echo handler on the same kind of connection, in the same run, with the
// two interleaved in short rounds so that load from other processes on the
// machine hits both alike.
//
// Variants, each on its own connection:
//
//	echo      a raw jsonrpc2.AsyncHandler replying a constant {"token"}
//	broker    NewConn + Router, cache hit, no-op tracer and meter providers
//	traced    the same with SDK providers: every span sampled and batched to
//	          a discarding exporter, metrics aggregated by a ManualReader
//
// Reported: ns/op of broker (the headline), echo-ns/op, traced-ns/op and
// req/s of broker, all means over the run; ratio = echo time / broker time
// (a throughput ratio; target >= 0.90), traced-ratio = echo / traced, and
// traced/untraced = broker / traced, each the median of the per-round
// ratios.

// benchParams is the getToken request the runtime sends.
type benchParams struct {
	SessionID    string `json:"sessionId"`
	ProviderName string `json:"providerName"`
}

var params = benchParams{SessionID: "bench-session", ProviderName: "p"}

// endpoint is the runtime side of one connection.
type endpoint struct {
	rt    *jsonrpc2.Conn
	close func()
}

func (e *endpoint) call(ctx context.Context) error {
	var res struct {
		Token string `json:"token"`
	}
	return e.rt.Call(ctx, MethodGetToken, params, &res)
}

// dialer makes a connected pair: the client end (ours) and the runtime end.
type dialer func(b *testing.B) (client, runtime io.ReadWriteCloser)

func pipeDialer(*testing.B) (io.ReadWriteCloser, io.ReadWriteCloser) { return net.Pipe() }

func tcpDialer(b *testing.B) (io.ReadWriteCloser, io.ReadWriteCloser) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			b.Error(err)
		}
		accepted <- c
	}()
	runtime, err := (&net.Dialer{}).DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	client := <-accepted
	if client == nil {
		b.FailNow()
	}
	return client, runtime
}

func runtimeSide(rwc io.ReadWriteCloser) *jsonrpc2.Conn {
	return jsonrpc2.NewConn(context.Background(), jsonrpc2.NewBufferedStream(rwc, jsonrpc2.VSCodeObjectCodec{}),
		jsonrpc2.HandlerWithError(func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request) (any, error) { return nil, nil }))
}

func echoEndpoint(b *testing.B, dial dialer) *endpoint {
	client, runtime := dial(b)
	// The cheapest possible answer: no params decoded, a constant result of
	// the reply's shape. (Echoing req.Params back costs more than the
	// broker's reply: encoding/json re-validates and compacts raw JSON.)
	reply := struct {
		Token string `json:"token"`
	}{"bench-token-value"}
	echo := jsonrpc2.AsyncHandler(jsonrpc2.HandlerWithError(func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request) (any, error) {
		return reply, nil
	}))
	srv := jsonrpc2.NewConn(context.Background(), jsonrpc2.NewBufferedStream(client, codec{}), echo) // the framing NewConn uses
	rt := runtimeSide(runtime)
	return &endpoint{rt: rt, close: func() { _ = rt.Close(); <-srv.DisconnectNotify() }}
}

func brokerEndpoint(b *testing.B, dial dialer, tp trace.TracerProvider, mp metric.MeterProvider) *endpoint {
	broker := actors.NewBroker(actors.Options{TracerProvider: tp, MeterProvider: mp})
	client, runtime := dial(b)
	conn := NewConn(context.Background(), broker, client, nil, ConnOptions{
		TracerProvider: tp, MeterProvider: mp,
	})
	src := tokens.Static(tokens.Token{Value: "bench-token-value", ExpiresOn: time.Now().Add(24 * time.Hour)})
	if err := conn.Router().Open(params.SessionID, []actors.Provider{{Name: params.ProviderName, Source: src}}); err != nil {
		b.Fatal(err)
	}
	rt := runtimeSide(runtime)
	e := &endpoint{rt: rt, close: func() {
		_ = rt.Close()
		<-conn.Done()
		_ = broker.Close()
	}}
	if err := e.call(context.Background()); err != nil { // warm the cache
		b.Fatal(err)
	}
	return e
}

// discard is a span exporter that drops everything, so "traced" measures
// the cost of recording spans, not of shipping them.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// run makes n calls from callers goroutines and returns the elapsed time.
func run(callers, n int, call func(context.Context) error) (time.Duration, error) {
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	ctx := context.Background()
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := call(ctx); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return 0, *e
	}
	return time.Since(start), nil
}

// interleave runs b.N calls of each variant in rounds, rotating the order,
// and returns each variant's mean time per call and, per round, each
// variant's time per call.
func interleave(b *testing.B, callers int, calls []func(context.Context) error) (mean []float64, rounds [][]float64) {
	nRounds := min(20, b.N)
	total := make([]time.Duration, len(calls))
	done := make([]int, len(calls))
	b.ResetTimer()
	for r := range nRounds {
		n := b.N / nRounds
		if r == nRounds-1 {
			n = b.N - n*(nRounds-1)
		}
		per := make([]float64, len(calls))
		for k := range calls {
			i := (r + k) % len(calls)
			d, err := run(callers, n, calls[i])
			if err != nil {
				b.Fatal(err)
			}
			total[i] += d
			done[i] += n
			per[i] = float64(d.Nanoseconds()) / float64(n)
		}
		rounds = append(rounds, per)
	}
	b.StopTimer()
	mean = make([]float64, len(calls))
	for i := range calls {
		mean[i] = float64(total[i].Nanoseconds()) / float64(done[i])
	}
	return mean, rounds
}

// medianRatio is the median over rounds of base time / subject time: a
// burst of load from another process that lands on one variant's part of
// a round moves one ratio, not the result.
func medianRatio(rounds [][]float64, base, subject int) float64 {
	ratios := make([]float64, len(rounds))
	for i, r := range rounds {
		ratios[i] = r[base] / r[subject]
	}
	slices.Sort(ratios)
	n := len(ratios)
	if n%2 == 1 {
		return ratios[n/2]
	}
	return (ratios[n/2-1] + ratios[n/2]) / 2
}

// BenchmarkTokenRequest is benchmarks (a) and (e) of issue 5.
func BenchmarkTokenRequest(b *testing.B) {
	for _, tr := range []struct {
		name string
		dial dialer
	}{{"pipe", pipeDialer}, {"tcp", tcpDialer}} {
		for _, callers := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/callers=%d", tr.name, callers), func(b *testing.B) {
				echo := echoEndpoint(b, tr.dial)
				defer echo.close()
				plain := brokerEndpoint(b, tr.dial, tracenoop.NewTracerProvider(), metricnoop.NewMeterProvider())
				defer plain.close()
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(discard{}))
				defer tp.Shutdown(context.Background())
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
				defer mp.Shutdown(context.Background())
				traced := brokerEndpoint(b, tr.dial, tp, mp)
				defer traced.close()

				mean, rounds := interleave(b, callers, []func(context.Context) error{echo.call, plain.call, traced.call})
				e, p, t := mean[0], mean[1], mean[2]
				b.ReportMetric(p, "ns/op")
				b.ReportMetric(e, "echo-ns/op")
				b.ReportMetric(t, "traced-ns/op")
				b.ReportMetric(1e9/p, "req/s")
				b.ReportMetric(medianRatio(rounds, 0, 1), "ratio")
				b.ReportMetric(medianRatio(rounds, 0, 2), "traced-ratio")
				b.ReportMetric(medianRatio(rounds, 1, 2), "traced/untraced")
			})
		}
	}
}
