package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

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

// charts are the report's figures over time, in page order, and the
// histograms.
func charts(r *result) (overTime []chart, errorsChart chart, histograms []chart) {
	// Rates and counts in flight have charts of their own: a count of a
	// few calls in flight would lie flat on the axis of a rate in the
	// thousands. In-flight lines have colours of their own too.
	var credLines, credFlight []line
	if r.Config.Providers <= 4 {
		for j := range r.Config.Providers {
			credLines = append(credLines, line{name: providerName(j) + " calls/s", color: palette[j], value: always(func(p point) float64 { return p.CredPerS[j] })})
			credFlight = append(credFlight, line{name: providerName(j) + " in flight (peak)", color: inFlightPalette[j], value: always(func(p point) float64 { return float64(p.CredPeak[j]) })})
		}
	} else {
		credLines = []line{{name: "calls/s, all providers", color: palette[0], value: always(func(p point) float64 { return p.CredTotalPerS })}}
		credFlight = []line{{name: "in flight (peak), all providers", color: inFlightPalette[0], value: always(func(p point) float64 { return float64(p.CredTotalPeak) })}}
	}
	// Stacked: each outcome's line is the sum of it and those below it,
	// drawn top layer first so the lower ones cover the rest.
	var stacked []line
	for k := len(outcomeOrder) - 1; k >= 0; k-- {
		if r.Outcomes[outcomeOrder[k]] == 0 {
			continue
		}
		below := outcomeOrder[:k+1]
		stacked = append(stacked, line{name: outcomeOrder[k], color: outcomeColor[outcomeOrder[k]], fill: true, value: always(func(p point) float64 {
			s := 0.0
			for _, o := range below {
				s += p.OutcomesPerS[o]
			}
			return s
		})})
	}
	quantiles := func(f50, f90, f99 func(point) *float64) []line {
		return []line{
			{name: "p50", color: palette[2], value: optional(f50)},
			{name: "p90", color: palette[1], value: optional(f90)},
			{name: "p99", color: palette[4], value: optional(f99)},
		}
	}
	ops := r.OperationKind + "s" // turns, token requests
	overTime = []chart{
		timeChart("credential-calls", "Credential calls per second", "calls/s", r, false, credLines),
		smallTimeChart("credential-in-flight", "Credential calls in flight: the most at once in each interval", "calls in flight", r, credFlight),
		timeChart("token-requests", "Token requests per second, by outcome (stacked)", "requests/s", r, false, stacked),
	}
	if rate := r.Operations.Rate; rate > 0 {
		overTime = append(overTime, timeChart("schedule", fmt.Sprintf("%s started per second against the target of %g/s (open loop)", capital(ops), rate), ops+" started/s", r, false, []line{
			{name: fmt.Sprintf("target %g/s", rate), color: palette[5], dash: true, value: always(func(point) float64 { return rate })},
			{name: "started/s", color: palette[0], value: always(func(p point) float64 { return p.StartedPerS })},
			{name: "started late/s", color: palette[4], value: always(func(p point) float64 { return p.LatePerS })},
		}))
	}
	overTime = append(overTime, timeChart("token-latency", "Token request latency (log scale)", "latency", r, true,
		quantiles(func(p point) *float64 { return p.P50 }, func(p point) *float64 { return p.P90 }, func(p point) *float64 { return p.P99 })))
	if r.HasTurns {
		overTime = append(overTime, timeChart("turns", "Turns per second", "turns/s", r, false, []line{
			{name: "turns/s", color: palette[0], value: always(func(p point) float64 { return p.TurnsPerS })},
		}))
	}
	overTime = append(overTime,
		smallTimeChart("in-flight", capital(ops)+" in flight at the end of each interval", ops+" in flight", r, []line{
			{name: "in flight", color: inFlightPalette[0], value: always(func(p point) float64 { return float64(p.InFlight) })},
		}),
		smallTimeChart("oldest", "Age of the oldest unfinished "+r.OperationKind+" (a stall shows as a rising line)", "seconds", r, []line{
			{name: "oldest unfinished", color: inFlightPalette[1], value: always(func(p point) float64 { return p.OldestS })},
		}))
	if r.HasTurns {
		overTime = append(overTime, timeChart("turn-latency", "Turn latency (log scale)", "latency", r, true,
			quantiles(func(p point) *float64 { return p.TurnP50 }, func(p point) *float64 { return p.TurnP90 }, func(p point) *float64 { return p.TurnP99 })))
	}
	errLines := []line{{name: "failed token requests/s", color: palette[4], value: always(func(p point) float64 { return p.TokenErrorsPerS() })}}
	if r.HasTurns {
		errLines = append(errLines, line{name: "failed turns/s", color: palette[5], dash: true, value: always(func(p point) float64 { return p.TurnErrorsPerS() })})
	}
	errorsChart = sizedTimeChart("errors", "Errors per second", "errors/s", r, false, errLines, 750, 300)
	histograms = []chart{histogramChart("token-latency-histogram", "Token request latency (unfinished at their age)", r.Histograms["token_requests"], palette[0])}
	if r.HasTurns {
		histograms = append(histograms, histogramChart("turn-latency-histogram", "Turn latency (unfinished at their age)", r.Histograms["turns"], palette[3]))
	}
	return overTime, errorsChart, histograms
}

func capital(s string) string { return strings.ToUpper(s[:1]) + s[1:] }

// TokenErrorsPerS and TurnErrorsPerS split ErrorsPerS by kind.
func (p point) TokenErrorsPerS() float64 { return float64(p.TokenErrors) / p.Span }
func (p point) TurnErrorsPerS() float64  { return float64(p.TurnErrors) / p.Span }

var page = template.Must(template.New("report").Funcs(template.FuncMap{"dur": func(us float64) string { return fmtDur(time.Duration(us * 1e3)) }}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tokenload report</title>
<style>
body{font-family:sans-serif;margin:1.5em 2em;color:#222}
h1{margin:0 0 .3em}h2{margin:1.4em 0 .4em;font-size:1.15em}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee;vertical-align:top}th{color:#555;font-weight:normal}
code{font-size:.95em}
.banner{padding:.6em 1em;margin:1em 0;border-radius:4px;font-weight:bold}
.pass{background:#e3f4e3;color:#1a5e1a}.fail{background:#fbe3e3;color:#8a1111}.none{background:#eee;color:#555}
.chart{margin:0 0 1.5em}.chart svg{display:block;width:100%;height:auto}
.nodata{padding:2em;text-align:center;color:#888;border:1px dashed #ccc}
.row{display:flex;gap:1.5em;align-items:flex-start}.row>.chart{flex:3;min-width:0}.row>.side{flex:2;min-width:0;font-size:.9em}
.side td{word-break:break-word}.side td:nth-child(-n+2){white-space:nowrap;word-break:normal}
.hists{display:flex;gap:1.5em}.hists>.chart{flex:1;min-width:0}
</style>
</head><body>
<h1>tokenload report</h1>
<table>
<tr><th>command</th><td><code>{{.R.Host.CommandLine}}</code></td></tr>
<tr><th>tokenbroker</th><td>{{.R.Host.Version}}, {{.R.Host.GoVersion}}, {{.R.Host.OSArch}}, {{.R.Host.CPUs}} CPUs, GOMAXPROCS {{.R.Host.GOMAXPROCS}}</td></tr>
<tr><th>started</th><td>{{.R.Started.Format "2006-01-02 15:04:05 MST"}}, ran {{printf "%.2f" .R.ElapsedS}} s of {{.R.Config.Duration}}{{if .R.Interrupted}} (interrupted){{end}}</td></tr>
</table>
{{if .R.Checks}}<div class="banner {{if .R.ChecksPassed}}pass{{else}}fail{{end}}" id="checks">thresholds {{if .R.ChecksPassed}}passed{{else}}FAILED{{end}}:
{{range .R.Checks}}<br>{{if .Pass}}✔{{else}}✘{{end}} <code>{{.Expr}}</code> — actual {{.Actual}}{{end}}</div>
{{else}}<div class="banner none" id="checks">no thresholds (-check)</div>{{end}}
<h2>Summary</h2>
<table>
{{range .Rows}}<tr><th>{{index . 0}}</th><td>{{index . 1}}</td></tr>
{{end}}</table>
<h2>Over time</h2>
{{if .R.Outage}}<p>The shaded band is the outage ({{.R.Config.Outage.Kind}}).</p>{{end}}
{{range .OverTime}}{{template "chart" .}}{{end}}
<div class="row">{{template "chart" .Errors}}
<div class="side"><h3>Top errors</h3>{{if .R.Errors}}<table id="error-table"><tr><th>count</th><th>where</th><th>message</th></tr>
{{range .TopErrors}}<tr><td>{{.Count}}</td><td>{{.Where}}</td><td>{{.Message}}</td></tr>
{{end}}</table>{{else}}<p id="error-table">no errors</p>{{end}}</div></div>
<h2>Latency distribution</h2>
<div class="hists">{{range .Histograms}}{{template "chart" .}}{{end}}</div>
{{if or .R.SlowRequests .R.SlowTurns}}<h2>Slowest, with trace ids</h2>
<div class="hists">{{range .Slow}}<div><h3>{{.What}}</h3><table><tr><th>duration</th><th>trace id</th><th>at</th><th>what</th></tr>
{{range .List}}<tr><td>{{dur .US}}</td><td><code>{{.TraceID}}</code></td><td>{{printf "%.2f" .AtS}} s</td><td>{{.What}}</td></tr>
{{end}}</table></div>{{end}}</div>{{end}}
<p>{{if .R.HasTurns}}Token request latency is each request's span in the broker, from its arrival to its reply. Turn latency is from
<code>session.send</code> to <code>session.idle</code> as the load loop saw it{{else}}Token request latency is as the load loop saw each request{{end}},
{{if .R.Config.Rate}}counted from its slot in the schedule (the open loop, {{.R.Config.Rate}}/s), whether or not a requester was free then{{else}}counted
from its start (the closed loop: a stalled requester starts nothing, which the age of the oldest unfinished operation shows){{end}}.
Each step of a chart is one interval of {{.R.Interval}}; gaps are intervals without samples. The charts over time plot finished
operations; those unfinished when the run ended ({{if .R.Config.Rate}}running, or due and never started{{else}}running{{end}}) are not
errors: they count in the summary's percentiles and in the histograms at their age then. Nothing after the end is plotted.</p>
</body></html>
{{define "chart"}}<figure class="chart" id="{{.ID}}"><figcaption><b>{{.Title}}</b></figcaption>{{if .SVG}}{{.SVG}}{{else}}<div class="nodata">no data</div>{{end}}</figure>{{end}}
`))

func renderHTML(w io.Writer, r *result) error {
	overTime, errorsChart, histograms := charts(r)
	return page.Execute(w, map[string]any{
		"R":          r,
		"Rows":       summaryLines(r),
		"OverTime":   overTime,
		"Errors":     errorsChart,
		"TopErrors":  r.Errors[:min(len(r.Errors), 10)],
		"Histograms": histograms,
		"Slow": []struct {
			What string
			List []slow
		}{{"Token requests", r.SlowRequests}, {"Turns", r.SlowTurns}},
	})
}
