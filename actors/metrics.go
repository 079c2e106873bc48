package actors

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tokenbroker/tokenbroker/tracing"
)

// instruments are the broker's metrics of credential calls, sessions and
// providers. Token request metrics, which carry the dialect, are recorded
// by internal/requestobs, for the transport and for Credential.BearerToken.
type instruments struct {
	refreshes       metric.Int64Counter
	refreshDuration metric.Float64Histogram
	leasesExpired   metric.Int64Counter
	gauges          metric.Registration
}

func newInstruments(m metric.Meter, b *Broker) *instruments {
	in := &instruments{}
	// Instrument constructors only fail on invalid names; ours are constant
	// and valid, and a failed one is a no-op instrument anyway.
	in.refreshes, _ = m.Int64Counter(tracing.MetricRefreshes,
		metric.WithDescription("Credential calls made to refresh a cached token, by reason and outcome."))
	in.refreshDuration, _ = m.Float64Histogram(tracing.MetricRefreshDuration,
		metric.WithDescription("Duration of credential calls."), metric.WithUnit("s"))
	in.leasesExpired, _ = m.Int64Counter(tracing.MetricCallLeasesExpired,
		metric.WithDescription("Credential calls still running when their slot of the broker's call limit was handed on (Options.MaxConcurrentCalls): slow or hung identity endpoints."))
	sessions, _ := m.Int64ObservableUpDownCounter(tracing.MetricActiveSessions,
		metric.WithDescription("Sessions whose token routing is open."))
	providers, _ := m.Int64ObservableUpDownCounter(tracing.MetricActiveProviders,
		metric.WithDescription("Provider actors running: shared credentials, and per-session providers once asked for a token."))
	waiting, _ := m.Int64ObservableUpDownCounter(tracing.MetricCallsWaiting,
		metric.WithDescription("Credential calls waiting for a slot of the broker's limit on concurrent calls (Options.MaxConcurrentCalls)."))
	in.gauges, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(sessions, b.sessionsOpen.Load())
		o.ObserveInt64(providers, b.providersLive.Load())
		o.ObserveInt64(waiting, b.calls.queued())
		return nil
	}, sessions, providers, waiting)
	return in
}

func (in *instruments) refreshed(reason reason, outcome string, seconds float64) {
	set := metric.WithAttributeSet(attribute.NewSet(tracing.RefreshReason.String(reason.String()), tracing.Outcome.String(outcome)))
	in.refreshes.Add(context.Background(), 1, set)
	in.refreshDuration.Record(context.Background(), seconds, set)
}

func (in *instruments) leaseExpired() {
	in.leasesExpired.Add(context.Background(), 1)
}

func (in *instruments) close() {
	if in.gauges != nil {
		_ = in.gauges.Unregister()
	}
}
