package actors_test

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// Benchmarks (b), (c) and (d) of issue 5: the broker in process, no
// transport. Targets: cache-hit Acquire p50 <= 5 µs and >= 300 k/s at 64
// callers; <= 1.5 KB of heap per idle session with two providers on shared
// credentials; >= 20 k session open+close per second.

func benchBroker() *actors.Broker {
	return actors.NewBroker(actors.Options{TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: metricnoop.NewMeterProvider()})
}

var dayToken = tokens.Static(tokens.Token{Value: "bench-token-value", ExpiresOn: time.Now().Add(24 * time.Hour)})

// latencies is a log-linear histogram: 64 sub-buckets per power of two
// (about 1 % resolution), cheap enough to record every call.
type latencies struct {
	counts [64 * 64]uint64
	n      uint64
	max    time.Duration
}

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 1))
	exp := bits.Len64(v) - 1 // v in [2^exp, 2^(exp+1))
	if exp < 6 {
		return int(v) // exact below 64 ns
	}
	sub := (v >> (exp - 6)) & 63
	return exp*64 + int(sub)
}

func bucketValue(i int) time.Duration {
	exp, sub := i/64, i%64
	if exp < 6 && i < 64 {
		return time.Duration(i)
	}
	return time.Duration((uint64(64+sub) << (exp - 6)))
}

func (l *latencies) add(d time.Duration) {
	l.counts[bucketOf(d)]++
	l.n++
	l.max = max(l.max, d)
}

func (l *latencies) merge(o *latencies) {
	for i, c := range o.counts {
		l.counts[i] += c
	}
	l.n += o.n
	l.max = max(l.max, o.max)
}

func (l *latencies) quantile(q float64) time.Duration {
	rank := uint64(math.Ceil(q * float64(l.n)))
	var seen uint64
	for i, c := range l.counts {
		seen += c
		if seen >= rank && c > 0 {
			return bucketValue(i)
		}
	}
	return l.max
}

// BenchmarkAcquireHit is (b): Router.Acquire served from the cache, timing
// every call.
func BenchmarkAcquireHit(b *testing.B) {
	for _, shared := range []bool{false, true} {
		for _, callers := range []int{1, 64} {
			name := fmt.Sprintf("per-session/callers=%d", callers)
			if shared {
				name = fmt.Sprintf("shared/callers=%d", callers)
			}
			b.Run(name, func(b *testing.B) {
				broker := benchBroker()
				defer broker.Close()
				router := broker.NewRouter()
				src := dayToken
				if shared {
					cred, err := broker.NewCredential("p", "", dayToken)
					if err != nil {
						b.Fatal(err)
					}
					src = cred
				}
				// One session per caller, as a runtime's sessions would be.
				for i := range callers {
					if err := router.Open(fmt.Sprint("s", i), []actors.Provider{{Name: "p", Source: src}}); err != nil {
						b.Fatal(err)
					}
					if _, err := router.Acquire(context.Background(), tokens.Request{SessionID: fmt.Sprint("s", i), ProviderName: "p"}); err != nil {
						b.Fatal(err)
					}
				}
				var next atomic.Int64
				var mu sync.Mutex
				var all latencies
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for i := range callers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						req := tokens.Request{SessionID: fmt.Sprint("s", i), ProviderName: "p"}
						ctx := context.Background()
						var mine latencies
						for next.Add(1) <= int64(b.N) {
							t0 := time.Now()
							g, err := router.Acquire(ctx, req)
							mine.add(time.Since(t0))
							if err != nil || g.Outcome != actors.OutcomeHit {
								b.Errorf("outcome %v, err %v", g.Outcome, err)
								return
							}
						}
						mu.Lock()
						all.merge(&mine)
						mu.Unlock()
					}()
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(all.quantile(0.50).Nanoseconds()), "p50-ns")
				b.ReportMetric(float64(all.quantile(0.99).Nanoseconds()), "p99-ns")
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "acquires/s")
			})
		}
	}
}

// heapNow is the live heap after a full collection.
func heapNow() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func waitFor(b *testing.B, what string, cond func() bool) {
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// sessionProviders returns the two providers of session i: on two shared
// credentials, or each with a cache (and actor) of its own.
func sessionProviders(shared bool, creds []*actors.Credential) []actors.Provider {
	if shared {
		return []actors.Provider{{Name: "a", Source: creds[0]}, {Name: "b", Source: creds[1]}}
	}
	return []actors.Provider{{Name: "a", Source: dayToken}, {Name: "b", Source: dayToken}}
}

func newCreds(b *testing.B, broker *actors.Broker) []*actors.Credential {
	var creds []*actors.Credential
	for _, n := range []string{"a", "b"} {
		c, err := broker.NewCredential(n, "", dayToken)
		if err != nil {
			b.Fatal(err)
		}
		creds = append(creds, c)
	}
	return creds
}

// BenchmarkIdleSessionHeap is (c): the heap held per idle session with two
// providers, over 100 k sessions, on shared credentials (the target) and on
// per-session credentials (reported for comparison).
func BenchmarkIdleSessionHeap(b *testing.B) {
	const sessions = 100_000
	for _, shared := range []bool{true, false} {
		name := "shared"
		if !shared {
			name = "per-session"
		}
		b.Run(name, func(b *testing.B) {
			var perSession float64
			for range b.N {
				broker := benchBroker()
				creds := newCreds(b, broker)
				ids := make([]string, sessions)
				for i := range ids {
					ids[i] = fmt.Sprintf("session-%06d", i) // the caller's ids: not counted
				}
				router := broker.NewRouter()
				before := heapNow()
				for _, id := range ids {
					if err := router.Open(id, sessionProviders(shared, creds)); err != nil {
						b.Fatal(err)
					}
				}
				waitFor(b, "sessions to start", func() bool { return actors.OpenSessions(broker) == sessions })
				after := heapNow()
				perSession = float64(after-before) / sessions
				runtime.KeepAlive(router)
				runtime.KeepAlive(ids)
				_ = broker.Close()
			}
			b.ReportMetric(perSession, "B/session")
		})
	}
}

// BenchmarkSessionOpenClose is (d): sessions opened and closed again, until
// their actors have stopped.
func BenchmarkSessionOpenClose(b *testing.B) {
	for _, shared := range []bool{true, false} {
		for _, callers := range []int{1, runtime.GOMAXPROCS(0)} {
			name := fmt.Sprintf("shared/callers=%d", callers)
			if !shared {
				name = fmt.Sprintf("per-session/callers=%d", callers)
			}
			b.Run(name, func(b *testing.B) {
				broker := benchBroker()
				defer broker.Close()
				creds := newCreds(b, broker)
				router := broker.NewRouter()
				baseline := actors.ProcessCount(broker)
				ids := make([]string, b.N)
				for i := range ids {
					ids[i] = fmt.Sprint("s", i)
				}
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for range callers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							i := next.Add(1) - 1
							if i >= int64(b.N) {
								return
							}
							if err := router.Open(ids[i], sessionProviders(shared, creds)); err != nil {
								b.Error(err)
								return
							}
							if err := router.CloseSession(ids[i]); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				// Every session actor (and per-session provider) spawned has
				// stopped and left the registry.
				waitFor(b, "actors to stop", func() bool { return actors.ProcessCount(broker) == baseline })
				elapsed := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "sessions/s")
			})
		}
	}
}
