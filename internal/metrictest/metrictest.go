// Package metrictest reads counters out of what an OpenTelemetry SDK
// reader collected, for tests that check tokenbroker's metrics.
package metrictest

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Sums adds up the int64 counter called name by the values of two of its
// attributes, keyed "<a>/<b>" (e.g. "providerToken.getToken/hit" for
// tokenbroker.requests by dialect and outcome).
func Sums(rm *metricdata.ResourceMetrics, name string, a, b attribute.Key) map[string]int64 {
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if m.Name != name || !ok {
				continue
			}
			for _, p := range sum.DataPoints {
				va, _ := p.Attributes.Value(a)
				vb, _ := p.Attributes.Value(b)
				out[va.String()+"/"+vb.String()] += p.Value
			}
		}
	}
	return out
}
