package actors_test

// Cold-start storms: a multi-tenant host that restarts asks for the first
// token of every credential at once.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/testenv"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource/azuretest"
	"github.com/tokenbroker/tokenbroker/tracing"
)

// 1,000 credentials cold at once, each call taking 50 ms: never more than
// the limit (64) run together, the waiting calls show in the metric, and
// every session gets its token after 16 rounds of 50 ms.
func TestColdStartStormBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer mp.Shutdown(context.Background())
		b := newBroker(t, actors.Options{MeterProvider: mp})
		defer closeBroker(t, b)
		var running, peak atomic.Int64
		src := &fakeSource{fn: func(_ context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
			now := running.Add(1)
			for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
			}
			time.Sleep(50 * time.Millisecond)
			running.Add(-1)
			return tokens.Token{Value: value("t", int(n)), ExpiresOn: time.Now().Add(time.Hour)}, nil
		}}
		r := b.NewRouter()
		const creds = 1000
		for i := range creds {
			c := credential(t, b, fmt.Sprint("tenant-", i), "", src)
			open(t, r, fmt.Sprint("s", i), actors.Provider{Name: "p", Source: c})
		}
		var wg sync.WaitGroup
		took := make([]time.Duration, creds)
		for i := range creds {
			wg.Go(func() {
				start := time.Now()
				if _, err := acquire(r, fmt.Sprint("s", i), "p"); err != nil {
					t.Error(err)
				}
				took[i] = time.Since(start)
			})
		}
		time.Sleep(time.Millisecond)
		if w := gaugeValue(t, reader, tracing.MetricCallsWaiting); w != creds-actors.DefaultMaxConcurrentCalls {
			t.Errorf("%s = %d during the storm, want %d", tracing.MetricCallsWaiting, w, creds-actors.DefaultMaxConcurrentCalls)
		}
		wg.Wait()
		if p := peak.Load(); p != actors.DefaultMaxConcurrentCalls {
			t.Fatalf("%d credential calls ran at once, want the limit %d", p, actors.DefaultMaxConcurrentCalls)
		}
		rounds := (creds + actors.DefaultMaxConcurrentCalls - 1) / actors.DefaultMaxConcurrentCalls
		if last := slices.Max(took); last != time.Duration(rounds)*50*time.Millisecond {
			t.Fatalf("last session served after %s, want %d rounds of 50 ms", last, rounds)
		}
		if w := gaugeValue(t, reader, tracing.MetricCallsWaiting); w != 0 {
			t.Errorf("%s = %d after the storm", tracing.MetricCallsWaiting, w)
		}
	})
}

func gaugeValue(t *testing.T, reader *sdkmetric.ManualReader, name string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name && len(s.DataPoints) == 1 {
				return s.DataPoints[0].Value
			}
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// BenchmarkColdStart: 1,000 credentials, each a real azidentity
// ManagedIdentityCredential with its own client id, cold at once against a
// fake App Service identity endpoint answering in 50 ms; one session per
// credential asks for its first token. Reported: the peak of identity
// requests in flight, the calls that outlived their 250 ms lease (on a
// busy machine a 50 ms call can), and the p99 time to first token, with
// the default limit and with none (a limit above the number of
// credentials).
func BenchmarkColdStart(b *testing.B) {
	for _, limit := range []int{actors.DefaultMaxConcurrentCalls, 1 << 20} {
		name := fmt.Sprint("limit=", limit)
		if limit > 1000 {
			name = "limit=none"
		}
		b.Run(name, func(b *testing.B) {
			var peak, expired, p99 float64
			for b.Loop() {
				pk, ex, p := coldStart(b, limit, 1000)
				peak, expired, p99 = max(peak, float64(pk)), max(expired, float64(ex)), max(p99, p)
			}
			b.ReportMetric(peak, "max-inflight")
			b.ReportMetric(expired, "leases-expired")
			b.ReportMetric(p99, "p99-ttft-ms")
		})
	}
}

// coldStart runs one storm and returns the identity endpoint's peak of
// requests in flight, the calls that outlived their lease, and the p99
// time to first token in milliseconds.
func coldStart(b *testing.B, limit, creds int) (int, int64, float64) {
	fake := azuretest.NewManagedIdentity(azuretest.Options{Latency: 50 * time.Millisecond})
	defer fake.Close()
	testenv.ClearAzure(b)
	for k, v := range fake.Env() {
		b.Setenv(k, v)
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	broker := actors.NewBroker(actors.Options{MaxConcurrentCalls: limit, MeterProvider: mp})
	defer broker.Close()
	r := broker.NewRouter()
	run := make([]byte, 4)
	_, _ = rand.Read(run)
	scope := "api://tokenbroker-coldstart-" + hex.EncodeToString(run) + "/.default"
	for i := range creds {
		// azidentity caches process-wide by identity and resource: a
		// client id of its own per credential keeps every one cold.
		mi, err := azidentity.NewManagedIdentityCredential(fake.ManagedIdentityCredentialOptions())
		if err != nil {
			b.Fatal(err)
		}
		c, err := broker.NewCredential(fmt.Sprint("tenant-", i), scope, azuresource.New(mi))
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Open(fmt.Sprint("s", i), []actors.Provider{{Name: "p", Source: c}}); err != nil {
			b.Fatal(err)
		}
	}
	took := make([]time.Duration, creds)
	var wg sync.WaitGroup
	for i := range creds {
		wg.Go(func() {
			start := time.Now()
			if _, err := r.Acquire(context.Background(), tokens.Request{SessionID: fmt.Sprint("s", i), ProviderName: "p"}); err != nil {
				b.Error(err)
			}
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	if fake.Issued() != creds {
		b.Fatalf("%d tokens issued for %d cold credentials", fake.Issued(), creds)
	}
	// A call holds its slot for its lease at most: beyond the limit, only
	// calls that outlived their lease can be running.
	expired := counterValue(b, reader, tracing.MetricCallLeasesExpired)
	if int64(fake.MaxInFlight()) > int64(limit)+expired {
		b.Fatalf("%d identity requests in flight, limit %d, %d leases expired", fake.MaxInFlight(), limit, expired)
	}
	slices.Sort(took)
	return fake.MaxInFlight(), expired, float64(took[len(took)*99/100].Microseconds()) / 1000
}

// A Source that ignores its context holds its slot of the limit only for
// the lease, and counts against its own credential's cap only until its
// deadline: stuck calls use up neither.
func TestStuckCallFreesItsSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{MaxConcurrentCalls: 1, RequestTimeout: time.Minute})
		defer closeBroker(t, b)
		release := make(chan struct{})
		defer close(release) // before the broker closes
		var stuckCalls atomic.Int64
		stuck := tokens.BareFunc(func(context.Context, tokens.Request) (string, error) {
			if stuckCalls.Add(1) == 2 {
				<-release // the second call ignores its context altogether
			}
			return "bare", nil
		})
		r := b.NewRouter()
		open(t, r, "stuck", actors.Provider{Name: "p", Source: stuck})
		open(t, r, "ok", actors.Provider{Name: "p", Source: lived("t", time.Hour)})
		mustAcquire(t, r, "stuck", "p") // a bare token: one call per request from now on
		go func() { _, _ = acquire(r, "stuck", "p") }()
		synctest.Wait() // the stuck call holds the one slot
		start := time.Now()
		mustAcquire(t, r, "ok", "p")
		if waited := time.Since(start); waited != 250*time.Millisecond {
			t.Fatalf("another credential waited %s for the slot, want the stuck call's lease, 250ms", waited)
		}
		// The stuck credential's own next call waits for its cap (one call
		// with a limit of 1) until the stuck call's deadline.
		start = time.Now()
		mustAcquire(t, r, "stuck", "p")
		if waited, want := time.Since(start)+250*time.Millisecond, b.Policy().RefreshTimeout; waited != want {
			t.Fatalf("the stuck credential's next call ran after %s, want the stuck call's deadline %s", waited, want)
		}
	})
}

// 300 tenants whose identity endpoints hang, each asked once, then one
// healthy tenant asked cold, default options: the hung calls give their
// slots back after the lease, so the healthy tenant is served within a
// couple of seconds instead of waiting for a hung call's deadline; each
// hung tenant gets its own timeout. The lease expiries are counted.
func TestHungTenantsDoNotStarveHealthyOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer mp.Shutdown(context.Background())
		b := newBroker(t, actors.Options{MeterProvider: mp})
		defer closeBroker(t, b)
		hang := &fakeSource{fn: func(ctx context.Context, _ int64, _ tokens.Request) (tokens.Token, error) {
			<-ctx.Done()
			return tokens.Token{}, ctx.Err()
		}}
		r := b.NewRouter()
		const hung = 300
		var wg sync.WaitGroup
		errs := make([]error, hung)
		for i := range hung {
			id := fmt.Sprint("hung-", i)
			open(t, r, id, actors.Provider{Name: "p", Source: credential(t, b, id, "", hang)})
			wg.Go(func() { _, errs[i] = acquire(r, id, "p") })
		}
		synctest.Wait()
		if w := gaugeValue(t, reader, tracing.MetricCallsWaiting); w != hung-actors.DefaultMaxConcurrentCalls {
			t.Fatalf("%s = %d, want %d hung calls waiting for a slot", tracing.MetricCallsWaiting, w, hung-actors.DefaultMaxConcurrentCalls)
		}
		open(t, r, "healthy", actors.Provider{Name: "p", Source: credential(t, b, "healthy", "", lived("ok", time.Hour))})
		start := time.Now()
		g := mustAcquire(t, r, "healthy", "p")
		waited := time.Since(start)
		t.Logf("healthy tenant served after %s behind %d hung ones", waited, hung)
		if waited > 2*time.Second || g.Outcome != actors.OutcomeRefreshed {
			t.Fatalf("healthy tenant served after %s (%v), want within 2 s", waited, g.Outcome)
		}
		wg.Wait()
		for i, err := range errs {
			if !errors.Is(err, actors.ErrTimeout) || !strings.Contains(err.Error(), "credential did not answer within 30s") {
				t.Fatalf("hung tenant %d: %v, want its own timeout", i, err)
			}
		}
		if n := counterValue(t, reader, tracing.MetricCallLeasesExpired); n != hung {
			t.Fatalf("%s = %d, want %d", tracing.MetricCallLeasesExpired, n, hung)
		}
	})
}

// A request whose credential call is still waiting for a slot when the
// request's deadline passes says so, rather than blaming its credential,
// which was never asked.
func TestSlotWaitTimeoutSaysSo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{MaxConcurrentCalls: 1, RequestTimeout: time.Second})
		defer closeBroker(t, b)
		hang := &fakeSource{fn: func(ctx context.Context, _ int64, _ tokens.Request) (tokens.Token, error) {
			<-ctx.Done()
			return tokens.Token{}, ctx.Err()
		}}
		r := b.NewRouter()
		var wg sync.WaitGroup
		for i := range 8 { // 8 leases of 250 ms ahead of the last one
			id := fmt.Sprint("hung-", i)
			open(t, r, id, actors.Provider{Name: "p", Source: credential(t, b, id, "", hang)})
			wg.Go(func() { _, _ = acquire(r, id, "p") })
		}
		synctest.Wait()
		healthy := lived("ok", time.Hour)
		open(t, r, "late", actors.Provider{Name: "p", Source: healthy})
		_, err := acquire(r, "late", "p")
		want := `session "late": provider "p": waited 1s for a credential call slot: 1 call running`
		if !errors.Is(err, actors.ErrNoCallSlot) || errors.Is(err, actors.ErrTimeout) || err.Error() != want {
			t.Fatalf("err = %v, want %q", err, want)
		}
		if n := healthy.calls.Load(); n != 0 {
			t.Fatalf("the waiting credential was called %d times", n)
		}
		// Its call stays queued; once admitted, the next request gets its token.
		time.Sleep(2 * time.Second)
		if _, err := acquire(r, "late", "p"); err != nil {
			t.Fatalf("after the queue drained: %v", err)
		}
		wg.Wait()
	})
}

func counterValue(t testing.TB, reader *sdkmetric.ManualReader, name string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, dp := range s.DataPoints {
					n += dp.Value
				}
			}
		}
	}
	return n
}
