package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tokenbroker/tokenbroker/tracing"
)

// result is the run's JSON report.
type result struct {
	Tool        string    `json:"tool"`
	Started     time.Time `json:"started"`
	Runtime     string    `json:"runtime_label"`
	Config      *config   `json:"config"`
	DurationS   float64   `json:"duration_s"`
	CredLatency string    `json:"cred_latency"`
	Lifetime    string    `json:"token_lifetime"`
	Interval    string    `json:"series_interval"`
	ElapsedS    float64   `json:"elapsed_s"`
	Interrupted bool      `json:"interrupted"`

	// Token requests, as the broker traced them.
	Requests     uint64            `json:"token_requests"`
	RequestsPerS float64           `json:"token_requests_per_s"`
	Latency      latencySummary    `json:"token_request_latency"`
	Outcomes     map[string]uint64 `json:"outcomes"`
	HitRatio     float64           `json:"cache_hit_ratio"`
	LowValidity  uint64            `json:"tokens_served_under_60s_left"`
	Refreshes    map[string]uint64 `json:"refreshes"` // reason/outcome
	Credentials  map[string]creds  `json:"credential_calls"`
	Leaks        uint64            `json:"telemetry_values_with_a_token"`

	// What the load loop saw.
	ClientOp     string         `json:"client_op"`
	ClientOps    uint64         `json:"client_ops"`
	ClientPerS   float64        `json:"client_ops_per_s"`
	ClientErrors uint64         `json:"client_errors"`
	ErrorSamples []string       `json:"client_error_samples,omitempty"`
	Client       latencySummary `json:"client_latency"`

	Series []point        `json:"series"`
	Extra  map[string]any `json:"runtime,omitempty"`
}

type creds struct {
	Calls    int64 `json:"calls"`
	Failures int64 `json:"failures"`
}

func buildResult(cfg *config, d driver, col *collector, cr *credentials, started time.Time, elapsed time.Duration, interrupted bool) *result {
	col.mu.Lock()
	defer col.mu.Unlock()
	r := &result{
		Tool: "tokenload", Started: started.UTC(), Runtime: d.label(), Config: cfg,
		DurationS: cfg.Duration.Seconds(), CredLatency: cfg.CredLatency.String(), Lifetime: cfg.Lifetime.String(), Interval: cfg.Interval.String(),
		ElapsedS: elapsed.Seconds(), Interrupted: interrupted,
		Requests: col.total.n, Latency: col.total.summary(),
		// Copies: spans that end late (the broker is still up) keep counting.
		Outcomes: maps.Clone(col.outcomes), LowValidity: col.lowLeft, Refreshes: maps.Clone(col.refreshes), Leaks: col.leaks,
		Credentials: map[string]creds{},
		ClientOp:    d.clientOp(), ClientOps: col.totalClient.n, ClientErrors: col.clientErrors, ErrorSamples: slices.Clone(col.clientErrorSamples),
		Client: col.totalClient.summary(),
		Series: slices.Clone(col.series), Extra: d.extra(),
	}
	if elapsed > 0 {
		r.RequestsPerS = float64(r.Requests) / elapsed.Seconds()
		r.ClientPerS = float64(r.ClientOps) / elapsed.Seconds()
	}
	var total uint64
	for _, n := range col.outcomes {
		total += n
	}
	if total > 0 {
		r.HitRatio = float64(col.outcomes[tracing.OutcomeHit]) / float64(total)
	}
	for j, c := range cr.counts {
		r.Credentials[providerName(j)] = creds{Calls: c.calls.Load(), Failures: c.failures.Load()}
	}
	return r
}

func pct(n, of uint64) string {
	if of == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(of))
}

func latencyRow(l latencySummary) string {
	d := func(v float64) string { return fmtDur(time.Duration(v * 1e3)) }
	return fmt.Sprintf("p50 %s\tp90 %s\tp99 %s\tmax %s", d(l.P50), d(l.P90), d(l.P99), d(l.Max))
}

// printSummary writes the summary table.
func printSummary(w io.Writer, r *result) {
	cfg := r.Config
	fmt.Fprintf(w, "\ntokenload summary%s\n", map[bool]string{true: " (interrupted)"}[r.Interrupted])
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	rate := "as fast as possible"
	if cfg.Rate > 0 {
		rate = fmt.Sprintf("target %.0f/s", cfg.Rate)
	}
	fmt.Fprintf(tw, "runtime\t%s\n", r.Runtime)
	fmt.Fprintf(tw, "load\t%d sessions x %d providers, %s credentials, %d requesters, %s\n", cfg.Sessions, cfg.Providers, credKind(cfg), cfg.Concurrency, rate)
	fmt.Fprintf(tw, "credentials\tlatency %s, lifetime %s, failure rate %g\n", cfg.CredLatency, lifeText(cfg.Lifetime), cfg.FailureRate)
	fmt.Fprintf(tw, "elapsed\t%.2fs of %s\n", r.ElapsedS, cfg.Duration)
	fmt.Fprintf(tw, "token requests\t%d\t%.1f/s\n", r.Requests, r.RequestsPerS)
	fmt.Fprintf(tw, "  latency (broker)\t%s\n", latencyRow(r.Latency))
	fmt.Fprintf(tw, "%s\t%d\t%.1f/s\terrors %d\n", r.ClientOp, r.ClientOps, r.ClientPerS, r.ClientErrors)
	fmt.Fprintf(tw, "  latency (client)\t%s\n", latencyRow(r.Client))
	var outcomes []string
	for _, o := range []string{tracing.OutcomeHit, tracing.OutcomeCoalesced, tracing.OutcomeRefreshed, tracing.OutcomeBare, tracing.OutcomeError} {
		outcomes = append(outcomes, fmt.Sprintf("%s %d (%s)", o, r.Outcomes[o], pct(r.Outcomes[o], r.Requests)))
	}
	fmt.Fprintf(tw, "outcomes\t%s\n", strings.Join(outcomes, "  "))
	var refreshes []string
	for _, k := range slices.Sorted(maps.Keys(r.Refreshes)) {
		refreshes = append(refreshes, fmt.Sprintf("%s %d", k, r.Refreshes[k]))
	}
	if len(refreshes) == 0 {
		refreshes = []string{"none"}
	}
	fmt.Fprintf(tw, "refreshes (reason/outcome)\t%s\n", strings.Join(refreshes, "  "))
	var calls []string
	for j := range cfg.Providers {
		c := r.Credentials[providerName(j)]
		calls = append(calls, fmt.Sprintf("%s %d (failed %d)", providerName(j), c.Calls, c.Failures))
	}
	fmt.Fprintf(tw, "credential calls\t%s\n", strings.Join(calls, "  "))
	fmt.Fprintf(tw, "tokens served with < 60 s left\t%d\n", r.LowValidity)
	fmt.Fprintf(tw, "token values in telemetry\t%d\n", r.Leaks)
	_ = tw.Flush()
	for _, e := range r.ErrorSamples {
		fmt.Fprintf(w, "  client error: %s\n", e)
	}
}

func lifeText(d time.Duration) string {
	if d == 0 {
		return "bare (single use)"
	}
	return d.String()
}

// writeReports writes PREFIX.json and PREFIX.html.
func writeReports(prefix string, r *result) error {
	if dir := filepath.Dir(prefix); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(prefix+".json", append(raw, '\n'), 0o644); err != nil {
		return err
	}
	var html bytes.Buffer
	if err := renderHTML(&html, r); err != nil {
		return err
	}
	return os.WriteFile(prefix+".html", html.Bytes(), 0o644)
}

// series is one line of a chart.
type series struct {
	name  string
	color string
	ys    []float64
}

// lineChart draws a simple SVG line chart: x in seconds, y from 0.
func lineChart(title, unit string, xs []float64, lines []series) template.HTML {
	const w, h, left, right, top, bottom = 760.0, 240.0, 70.0, 20.0, 30.0, 40.0
	pw, ph := w-left-right, h-top-bottom
	xmax, ymax := 0.0, 0.0
	for _, x := range xs {
		xmax = math.Max(xmax, x)
	}
	for _, l := range lines {
		for _, y := range l.ys {
			ymax = math.Max(ymax, y)
		}
	}
	if xmax == 0 {
		xmax = 1
	}
	ymax = niceCeil(ymax)
	px := func(x float64) float64 { return left + x/xmax*pw }
	py := func(y float64) float64 { return top + ph - y/ymax*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`, w, h, w, h)
	fmt.Fprintf(&b, `<text x="%.0f" y="18" font-size="13" font-weight="bold">%s</text>`, left, template.HTMLEscapeString(title))
	for i := 0; i <= 4; i++ {
		y := ymax * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`, left, py(y), left+pw, py(y))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`, left-6, py(y)+4, template.HTMLEscapeString(axisLabel(y, unit)))
	}
	for i := 0; i <= 5; i++ {
		x := xmax * float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%.1fs</text>`, px(x), top+ph+16, x)
	}
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#888"/>`, left, top, pw, ph)
	for i, l := range lines {
		var pts []string
		for k, y := range l.ys {
			if k < len(xs) {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(xs[k]), py(y)))
			}
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, l.color, strings.Join(pts, " "))
		lx := left + 10 + float64(i)*150
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="3"/><text x="%.0f" y="%.0f">%s</text>`,
			lx, h-8, lx+18, h-8, l.color, lx+22, h-4, template.HTMLEscapeString(l.name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // built from numbers and escaped text only
}

func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func axisLabel(v float64, unit string) string {
	if unit == "µs" {
		return fmtDur(time.Duration(v * 1e3))
	}
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM%s", v/1e6, unit)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk%s", v/1e3, unit)
	}
	return fmt.Sprintf("%.0f%s", v, unit)
}

var page = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tokenload report</title>
<style>body{font-family:sans-serif;margin:2em;max-width:820px}table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}th{color:#555;font-weight:normal}</style>
</head><body>
<h1>tokenload report</h1>
<p>{{.R.Started.Format "2006-01-02 15:04:05 MST"}}{{if .R.Interrupted}} — interrupted{{end}}</p>
<table>
<tr><th>runtime</th><td>{{.R.Runtime}}</td></tr>
<tr><th>load</th><td>{{.R.Config.Sessions}} sessions × {{.R.Config.Providers}} providers, {{.Creds}} credentials, {{.R.Config.Concurrency}} requesters{{if .R.Config.Rate}}, target {{.R.Config.Rate}}/s{{end}}</td></tr>
<tr><th>credentials</th><td>latency {{.R.CredLatency}}, lifetime {{.R.Lifetime}}, failure rate {{.R.Config.FailureRate}}</td></tr>
<tr><th>elapsed</th><td>{{printf "%.2f" .R.ElapsedS}} s</td></tr>
<tr><th>token requests</th><td>{{.R.Requests}} ({{printf "%.1f" .R.RequestsPerS}}/s), cache-hit ratio {{printf "%.3f" .R.HitRatio}}</td></tr>
<tr><th>latency (broker)</th><td>{{.Lat}}</td></tr>
<tr><th>{{.R.ClientOp}}</th><td>{{.R.ClientOps}} ({{printf "%.1f" .R.ClientPerS}}/s), errors {{.R.ClientErrors}}</td></tr>
<tr><th>latency (client)</th><td>{{.ClientLat}}</td></tr>
<tr><th>outcomes</th><td>{{range $k, $v := .R.Outcomes}}{{$k}} {{$v}} &nbsp; {{end}}</td></tr>
<tr><th>refreshes</th><td>{{range $k, $v := .R.Refreshes}}{{$k}} {{$v}} &nbsp; {{else}}none{{end}}</td></tr>
<tr><th>credential calls</th><td>{{range $k, $v := .R.Credentials}}{{$k}} {{$v.Calls}} (failed {{$v.Failures}}) &nbsp; {{end}}</td></tr>
<tr><th>tokens served with &lt; 60 s left</th><td>{{.R.LowValidity}}</td></tr>
<tr><th>token values in telemetry</th><td>{{.R.Leaks}}</td></tr>
</table>
<h2>Over time</h2>
{{.Throughput}}
{{.Latency}}
{{.ClientChart}}
<p>Latency (broker) is each token request's span: from the request's arrival to its reply. Latency (client) is the {{.R.ClientOp}}, as the load loop saw it{{if .R.Config.Rate}}, counted from the moment it was due{{end}}.</p>
</body></html>
`))

func renderHTML(w io.Writer, r *result) error {
	var xs, rate, p50, p99, cp50, cp99 []float64
	for _, p := range r.Series {
		xs = append(xs, p.T)
		rate = append(rate, p.Rate)
		p50 = append(p50, p.P50)
		p99 = append(p99, p.P99)
		cp50 = append(cp50, p.ClientP50)
		cp99 = append(cp99, p.ClientP99)
	}
	return page.Execute(w, map[string]any{
		"R":           r,
		"Creds":       credKind(r.Config),
		"Lat":         strings.ReplaceAll(latencyRow(r.Latency), "\t", ", "),
		"ClientLat":   strings.ReplaceAll(latencyRow(r.Client), "\t", ", "),
		"Throughput":  lineChart("Token requests per second", "/s", xs, []series{{"token requests/s", "#1f77b4", rate}}),
		"Latency":     lineChart("Token request latency (broker)", "µs", xs, []series{{"p50", "#2ca02c", p50}, {"p99", "#d62728", p99}}),
		"ClientChart": lineChart("Latency of each "+r.ClientOp, "µs", xs, []series{{"p50", "#2ca02c", cp50}, {"p99", "#d62728", cp99}}),
	})
}
