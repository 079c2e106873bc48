package main

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/transport"
)

// benchRig is one broker and driver, driven either as tokenload drives
// them (every span recorded through the OpenTelemetry SDK by the
// collector, every turn counted) or bare (no-op tracer, no accounting).
type benchRig struct {
	d        driver
	col      *collector
	recorded bool
}

func newBenchRig(b *testing.B, runtime string, recorded bool) *benchRig {
	b.Helper()
	ctx := context.Background()
	cfg := &config{Runtime: runtime, Dialect: "getToken", Sessions: 100, Providers: 1, Concurrency: 64,
		Duration: time.Hour, Lifetime: time.Hour, Credential: credFake}
	col := newCollector(1, runtime == "direct")
	var tp trace.TracerProvider = tracenoop.NewTracerProvider()
	if recorded {
		sdk := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(col))
		b.Cleanup(func() { _ = sdk.Shutdown(ctx) })
		tp = sdk
	}
	mp := metricnoop.NewMeterProvider()
	broker := actors.NewBroker(actors.Options{TracerProvider: tp, MeterProvider: mp})
	b.Cleanup(func() { _ = broker.Close() })
	creds, err := newCredentials(cfg, broker, col)
	if err != nil {
		b.Fatal(err)
	}
	opts := transport.ConnOptions{TracerProvider: tp, MeterProvider: mp}
	var d driver
	if runtime == "direct" {
		d = newDirect(ctx, cfg, broker, creds, opts)
	} else if d, err = newTurnDriver(ctx, cfg, broker, creds, opts); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.close() }) // before the broker's Close
	if err := d.open(ctx); err != nil {
		b.Fatal(err)
	}
	col.begin(time.Now(), time.Second, 0)
	return &benchRig{d: d, col: col, recorded: recorded}
}

// round runs ops operations on 64 requesters and returns how long they took.
func (r *benchRig) round(ops int) time.Duration {
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range 64 {
		wg.Go(func() {
			for i := 0; ; i++ {
				k := int(next.Add(1) - 1)
				if k >= ops {
					return
				}
				s := slot{worker: w, iter: i, global: k}
				if r.recorded {
					operate(ctx, r.d, r.col, nil, s, uint64(k))
				} else {
					_ = r.d.op(ctx, s)
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	return s[len(s)/2]
}

// BenchmarkSelfOverhead: what tokenload's own accounting costs, as the
// throughput of the broker and driver as tokenload runs them over the same
// run bare, per round (b.N rounds, the two variants interleaved, order
// alternating), median of the rounds; and the throughputs themselves.
//
//	go test -run '^$' -bench SelfOverhead -benchtime 20x ./cmd/tokenload
func BenchmarkSelfOverhead(b *testing.B) {
	for _, tc := range []struct {
		runtime string
		ops     int
	}{{"direct", 2000}, {"sim", 400}} {
		b.Run(tc.runtime, func(b *testing.B) {
			rigs := [2]*benchRig{newBenchRig(b, tc.runtime, false), newBenchRig(b, tc.runtime, true)}
			for _, r := range rigs {
				r.round(tc.ops) // warm: cold credential calls, connections
			}
			var ratios, bare, recorded []float64
			for i := range b.N {
				var took [2]time.Duration
				for _, v := range [][2]int{{0, 1}, {1, 0}}[i%2] {
					took[v] = rigs[v].round(tc.ops)
				}
				ratios = append(ratios, took[0].Seconds()/took[1].Seconds())
				bare = append(bare, float64(tc.ops)/took[0].Seconds())
				recorded = append(recorded, float64(tc.ops)/took[1].Seconds())
			}
			b.ReportMetric(median(ratios), "tokenload/bare")
			b.ReportMetric(median(bare), "bare-ops/s")
			b.ReportMetric(median(recorded), "tokenload-ops/s")
			b.ReportMetric(0, "ns/op") // a round is not an op
		})
	}
}
