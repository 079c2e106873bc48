// Package leakscan finds secrets in recorded telemetry. Tests use it to
// prove that no token value reaches a span (name, attributes, events,
// links, status) or a metric (names, data point attributes, exemplars); the
// load tool uses it to check the spans of a whole run.
//
// Everything recorded is serialised to JSON, the way the stdout exporters
// write it, and searched for each secret both raw and JSON-escaped, so a
// field added to the SDK's data later is scanned too.
package leakscan

import (
	"bytes"
	"encoding/json"
	"fmt"

	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// Spans returns one finding per span that contains one of secrets. A
// finding names the span by its ids and the secret by its position in the
// list: never by a name or value, which may be the secret itself.
func Spans(spans []sdktrace.ReadOnlySpan, secrets []string) []string {
	var found []string
	for _, s := range spans {
		id := fmt.Sprintf("span %s of trace %s", s.SpanContext().SpanID(), s.SpanContext().TraceID())
		raw, err := encode(tracetest.SpanStubFromReadOnlySpan(s))
		if err != nil {
			found = append(found, fmt.Sprintf("%s: cannot encode: %v", id, err))
			continue
		}
		for _, i := range search(raw, secrets) {
			found = append(found, fmt.Sprintf("%s contains secret #%d", id, i))
		}
	}
	return found
}

// Metrics returns one finding per metric that contains one of secrets,
// named by position.
func Metrics(rm *metricdata.ResourceMetrics, secrets []string) []string {
	var found []string
	if raw, err := encode(rm.Resource); err == nil {
		for _, i := range search(raw, secrets) {
			found = append(found, fmt.Sprintf("metric resource contains secret #%d", i))
		}
	}
	for si, sm := range rm.ScopeMetrics {
		for mi, m := range sm.Metrics {
			id := fmt.Sprintf("metric %d of scope %d", mi, si) // its name may be the secret
			raw, err := encode(m)
			if err != nil {
				found = append(found, fmt.Sprintf("%s: cannot encode: %v", id, err))
				continue
			}
			for _, i := range search(raw, secrets) {
				found = append(found, fmt.Sprintf("%s contains secret #%d", id, i))
			}
		}
	}
	return found
}

// Text returns the indexes of the secrets found in text, e.g. a log or an
// exported file.
func Text(text []byte, secrets []string) []int { return search(text, secrets) }

func encode(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	err := enc.Encode(v)
	return buf.Bytes(), err
}

func search(raw []byte, secrets []string) []int {
	var hits []int
	for i, s := range secrets {
		if s == "" {
			continue
		}
		if bytes.Contains(raw, []byte(s)) {
			hits = append(hits, i)
			continue
		}
		// As a JSON string, with and without HTML escaping.
		plain, _ := encode(s)
		html, _ := json.Marshal(s)
		for _, q := range [][]byte{bytes.TrimSpace(plain), html} {
			if esc := q[1 : len(q)-1]; bytes.Contains(raw, esc) {
				hits = append(hits, i)
				break
			}
		}
	}
	return hits
}
