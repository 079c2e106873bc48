package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tokenbroker/tokenbroker/cmd/tokenload/internal/telemetry"
	"github.com/tokenbroker/tokenbroker/tracing"
)

// host describes where and with what the run was made.
type host struct {
	CommandLine string `json:"command_line"`
	Version     string `json:"tokenbroker_version"`
	GoVersion   string `json:"go_version"`
	OSArch      string `json:"os_arch"`
	CPUs        int    `json:"cpus"`
	GOMAXPROCS  int    `json:"gomaxprocs"`
}

func thisHost(args []string) host {
	h := host{
		CommandLine: "tokenload " + shellQuote(args), Version: "(unknown)", GoVersion: runtime.Version(),
		OSArch: runtime.GOOS + "/" + runtime.GOARCH, CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		h.Version = bi.Main.Version
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if rev := settings["vcs.revision"]; rev != "" {
			h.Version += " " + rev[:min(12, len(rev))]
			if settings["vcs.modified"] == "true" {
				h.Version += " (modified)"
			}
		}
	}
	return h
}

func shellQuote(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`*?;&|<>()[]{}!#~") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// creds is one provider's credential calls.
type creds struct {
	Calls    uint64 `json:"calls"`
	Failures uint64 `json:"failures"`
	InFlight int    `json:"in_flight_at_end"`
}

func (c creds) String() string {
	s := fmt.Sprintf("%d (%d failed", c.Calls, c.Failures)
	if c.InFlight > 0 {
		s += fmt.Sprintf(", %d in flight", c.InFlight)
	}
	return s + ")"
}

// errorRow is one distinct error message and how often it was seen.
type errorRow struct {
	Where   string `json:"where"` // "token request" or "turn"
	Message string `json:"message"`
	Count   uint64 `json:"count"`
}

// result is the run's JSON report: everything the summary and the HTML
// show, every series the charts draw included.
type result struct {
	Tool        string    `json:"tool"`
	Host        host      `json:"host"`
	Started     time.Time `json:"started"`
	Runtime     string    `json:"runtime_label"`
	Config      *config   `json:"config"`
	Mapping     string    `json:"session_provider_mapping"`
	DurationS   float64   `json:"duration_s"`
	CredLatency string    `json:"cred_latency"`
	Lifetime    string    `json:"token_lifetime"`
	Interval    string    `json:"series_interval"`
	ElapsedS    float64   `json:"elapsed_s"`
	Interrupted bool      `json:"interrupted"`

	// Token requests, as the broker traced them.
	Methods          map[string]uint64 `json:"token_request_methods"`
	Requests         uint64            `json:"token_requests"`
	RequestsPerS     float64           `json:"token_requests_per_s"`
	RequestsInFlight int               `json:"token_requests_in_flight_at_end"`
	Latency          latencySummary    `json:"token_request_latency"`
	Outcomes         map[string]uint64 `json:"outcomes"`
	HitRatio         float64           `json:"cache_hit_ratio"`
	LowValidity      uint64            `json:"tokens_served_under_60s_left"`
	Refreshes        map[string]uint64 `json:"refreshes"` // reason/outcome
	Credentials      map[string]creds  `json:"credential_calls"`
	CredentialCalls  uint64            `json:"credential_calls_total"`
	Leaks            uint64            `json:"telemetry_values_with_a_token"`

	// Turns, as the load loop saw them (none with -runtime direct).
	HasTurns      bool           `json:"has_turns"`
	Turns         uint64         `json:"turns"`
	TurnsPerS     float64        `json:"turns_per_s"`
	TurnErrors    uint64         `json:"turn_errors"`
	TurnsInFlight int            `json:"turns_in_flight_at_end"`
	TurnLatency   latencySummary `json:"turn_latency"`

	Errors       []errorRow `json:"errors"` // most frequent first
	SlowRequests []slow     `json:"slowest_token_requests,omitempty"`
	SlowTurns    []slow     `json:"slowest_turns,omitempty"`

	Series     []point             `json:"series"`
	Histograms map[string][]bucket `json:"latency_histograms"`
	Outage     []float64           `json:"outage_window_s,omitempty"`

	Figures      map[string]figure `json:"figures"`
	Checks       []check           `json:"checks"`
	ChecksPassed bool              `json:"checks_passed"`

	// Identity is what the identity endpoint saw (-credential identity).
	Identity *endpointStats `json:"identity_endpoint,omitempty"`

	Extra map[string]any `json:"runtime,omitempty"`
}

func buildResult(cfg *config, d driver, col *collector, cr *credentials, started time.Time, elapsed time.Duration, interrupted bool) *result {
	col.mu.Lock()
	defer col.mu.Unlock()
	r := &result{
		Tool: "tokenload", Host: thisHost(cfg.Args), Started: started.UTC(), Runtime: d.label(), Config: cfg, Mapping: d.mapping(),
		DurationS: cfg.Duration.Seconds(), CredLatency: cfg.CredLatency.String(), Lifetime: cfg.Lifetime.String(), Interval: cfg.Interval.String(),
		ElapsedS: elapsed.Seconds(), Interrupted: interrupted,
		Methods: maps.Clone(col.methods), Requests: col.total.n, RequestsInFlight: col.reqAtEnd, Latency: col.total.summary(),
		Outcomes: maps.Clone(col.outcomes), LowValidity: col.lowLeft, Refreshes: maps.Clone(col.refreshes), Leaks: col.leaks,
		Credentials: map[string]creds{},
		HasTurns:    d.turns(), Turns: col.totalClient.n, TurnErrors: col.turnErrors, TurnsInFlight: col.turnsAtEnd,
		TurnLatency: col.totalClient.summary(),
		Series:      slices.Clone(col.series), Outage: cfg.Outage.window(),
		Histograms: map[string][]bucket{"token_requests": col.total.logBuckets(), "turns": col.totalClient.logBuckets()},
		Extra:      d.extra(),
	}
	if cfg.target.Kind != telemetry.None {
		r.SlowRequests, r.SlowTurns = slices.Clone(col.slowRequests), slices.Clone(col.slowTurns)
	}
	if elapsed > 0 {
		r.RequestsPerS = float64(r.Requests) / elapsed.Seconds()
		r.TurnsPerS = float64(r.Turns) / elapsed.Seconds()
	}
	if r.Requests > 0 {
		r.HitRatio = float64(col.outcomes[tracing.OutcomeHit]) / float64(r.Requests)
	}
	for j := range cfg.Providers {
		c := creds{Calls: col.credCalls[j], Failures: col.credFailures[j]}
		if col.credAtEnd != nil {
			c.InFlight = col.credAtEnd[j]
		}
		r.Credentials[providerName(j)] = c
		r.CredentialCalls += c.Calls
	}
	for k, n := range col.errors {
		r.Errors = append(r.Errors, errorRow{Where: k.where, Message: k.msg, Count: n})
	}
	slices.SortFunc(r.Errors, func(a, b errorRow) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Where, b.Where), cmp.Compare(a.Message, b.Message))
	})
	if cr.identity != nil {
		s := cr.identity.stats()
		r.Identity = &s
	}
	r.Figures = figures(r)
	r.Checks = slices.Clone(cfg.checks)
	r.ChecksPassed = evaluate(r.Checks, r.Figures)
	return r
}

// figures are the summary's named numbers that -check can test.
func figures(r *result) map[string]figure {
	count := func(n uint64) figure { return figure{Value: float64(n)} }
	lat := func(l latencySummary, v float64) figure {
		return figure{Value: v / 1e6, IsDur: true, NoData: l.Count == 0}
	}
	var credFailures uint64
	for _, c := range r.Credentials {
		credFailures += c.Failures
	}
	tokenErrors := r.Outcomes[tracing.OutcomeError]
	return map[string]figure{
		"requests":            count(r.Requests),
		"requests_per_s":      {Value: r.RequestsPerS},
		"p50":                 lat(r.Latency, r.Latency.P50),
		"p90":                 lat(r.Latency, r.Latency.P90),
		"p99":                 lat(r.Latency, r.Latency.P99),
		"max":                 lat(r.Latency, r.Latency.Max),
		"turns":               count(r.Turns),
		"turns_per_s":         {Value: r.TurnsPerS},
		"turn_p50":            lat(r.TurnLatency, r.TurnLatency.P50),
		"turn_p90":            lat(r.TurnLatency, r.TurnLatency.P90),
		"turn_p99":            lat(r.TurnLatency, r.TurnLatency.P99),
		"turn_max":            lat(r.TurnLatency, r.TurnLatency.Max),
		"errors":              count(tokenErrors + r.TurnErrors),
		"token_errors":        count(tokenErrors),
		"turn_errors":         count(r.TurnErrors),
		"credential_calls":    count(r.CredentialCalls),
		"credential_failures": count(credFailures),
		"hit_ratio":           {Value: r.HitRatio, NoData: r.Requests == 0},
		"low_validity":        count(r.LowValidity),
		"leaks":               count(r.Leaks),
		"turns_in_flight":     {Value: float64(r.TurnsInFlight)},
	}
}

func pct(n, of uint64) string {
	if of == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(of))
}

// latencyText is a summary's quantiles, or why there are none.
func latencyText(l latencySummary) string {
	if l.Count == 0 {
		return "no data"
	}
	d := func(v float64) string { return fmtDur(time.Duration(v * 1e3)) }
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s", d(l.P50), d(l.P90), d(l.P99), d(l.Max))
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(d)/1e3), ".0") + "µs"
	case d < time.Second:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(d)/1e6), ".0") + "ms"
	}
	return strings.TrimSuffix(fmt.Sprintf("%.2f", d.Seconds()), ".00") + "s"
}

// fmtRate prints a rate in at most 6 characters.
func fmtRate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func credText(cfg *config) string {
	if cfg.Credential == credIdentity {
		return fmt.Sprintf("azidentity ManagedIdentityCredential -> embedded identity endpoint, lifetime %s", cfg.Lifetime)
	}
	return fmt.Sprintf("fake, latency %s, lifetime %s, failure rate %g", cfg.CredLatency, lifeText(cfg.Lifetime), cfg.FailureRate)
}

func lifeText(d time.Duration) string {
	if d == 0 {
		return "bare (single use)"
	}
	return d.String()
}

// summaryWidth is the most columns a summary line takes.
const summaryWidth = 100

// fit cuts s to width columns (runes), marking the cut.
func fit(s string, width int) string {
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	return string([]rune(s)[:width-1]) + "…"
}

// fitMiddle cuts s to width columns by taking out its middle, where
// error messages repeat their context, and keeps both ends.
func fitMiddle(s string, width int) string {
	r := []rune(s)
	if len(r) <= width {
		return s
	}
	head := (width - 1) / 2
	return string(r[:head]) + "…" + string(r[len(r)-(width-1-head):])
}

// summaryLines is the summary as label/value rows.
func summaryLines(r *result) [][2]string {
	cfg := r.Config
	rate := "unthrottled"
	if cfg.Rate > 0 {
		rate = fmt.Sprintf("target %g/s", cfg.Rate)
	}
	rows := [][2]string{
		{"runtime", r.Runtime},
		{"load", fmt.Sprintf("%d sessions x %d providers, %s credentials, %d requesters, %s", cfg.Sessions, cfg.Providers, credKind(cfg), cfg.Concurrency, rate)},
		{"providers", r.Mapping},
		{"credentials", credText(cfg)},
		{"broker", fmt.Sprintf("request timeout %s, back-off up to %s", cfg.ReqTimeout, cfg.BackoffMax)},
	}
	if w := r.Outage; w != nil {
		rows = append(rows, [2]string{"outage", fmt.Sprintf("%s from %gs to %gs, %s%s", cfg.Outage.Kind, w[0], w[1], map[bool]string{true: "the identity endpoint", false: "every credential call"}[cfg.Credential == credIdentity], map[bool]string{true: "; cached tokens dropped at its start"}[cfg.Outage.Invalidate])})
	}
	elapsed := fmt.Sprintf("%.2fs of %s", r.ElapsedS, cfg.Duration)
	if r.Interrupted {
		elapsed += " (interrupted)"
	}
	rows = append(rows, [2]string{"elapsed", elapsed})
	var methods []string
	for _, m := range slices.Sorted(maps.Keys(r.Methods)) {
		methods = append(methods, strings.TrimPrefix(m, "providerToken."))
	}
	req := fmt.Sprintf("%d  %s/s  hit ratio %s", r.Requests, fmtRate(r.RequestsPerS), pct(r.Outcomes[tracing.OutcomeHit], r.Requests))
	if len(methods) > 0 {
		req += "  (" + strings.Join(methods, ", ") + ")"
	}
	if r.RequestsInFlight > 0 {
		req += fmt.Sprintf("  %d in flight at the end", r.RequestsInFlight)
	}
	rows = append(rows, [2]string{"token requests", req}, [2]string{"  latency", latencyText(r.Latency)})
	var outcomes []string
	for _, o := range outcomeOrder {
		if n := r.Outcomes[o]; n > 0 {
			outcomes = append(outcomes, fmt.Sprintf("%s %d (%s)", o, n, pct(n, r.Requests)))
		}
	}
	rows = append(rows, [2]string{"  outcomes", cmp.Or(strings.Join(outcomes, "  "), "none")})
	if r.HasTurns {
		rows = append(rows,
			[2]string{"turns", fmt.Sprintf("%d  %s/s  errors %d  in flight at the end %d", r.Turns, fmtRate(r.TurnsPerS), r.TurnErrors, r.TurnsInFlight)},
			[2]string{"  latency", latencyText(r.TurnLatency)})
	}
	var calls []string
	if len(r.Credentials) <= 4 {
		for j := range cfg.Providers {
			c := r.Credentials[providerName(j)]
			calls = append(calls, providerName(j)+" "+c.String())
		}
	}
	total := strconv.FormatUint(r.CredentialCalls, 10)
	if calls != nil {
		total += ":  " + strings.Join(calls, "  ")
	}
	rows = append(rows, [2]string{"credential calls", total})
	if id := r.Identity; id != nil {
		var statuses []string
		for _, st := range slices.Sorted(maps.Keys(id.Statuses)) {
			name := strconv.Itoa(st)
			if st == 0 {
				name = "hung"
			}
			statuses = append(statuses, fmt.Sprintf("%s: %d", name, id.Statuses[st]))
		}
		rows = append(rows, [2]string{"identity endpoint", fmt.Sprintf("%d requests (HTTP %s), %d tokens issued", id.Requests, cmp.Or(strings.Join(statuses, ", "), "none"), id.Issued)})
	}
	var refreshes []string
	for _, k := range slices.Sorted(maps.Keys(r.Refreshes)) {
		refreshes = append(refreshes, fmt.Sprintf("%s %d", k, r.Refreshes[k]))
	}
	rows = append(rows,
		[2]string{"refreshes", cmp.Or(strings.Join(refreshes, "  "), "none") + "  (reason/outcome)"},
		[2]string{"< 60 s left", fmt.Sprintf("%d tokens served with less than 60 s of validity", r.LowValidity)},
		[2]string{"leaks", fmt.Sprintf("%d token values found in telemetry", r.Leaks)})
	return rows
}

// printSummary writes the summary, no line wider than summaryWidth.
func printSummary(w io.Writer, r *result) {
	fmt.Fprintf(w, "\ntokenload summary\n")
	for _, row := range summaryLines(r) {
		fmt.Fprintln(w, fit(fmt.Sprintf("%-17s %s", row[0], row[1]), summaryWidth))
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "errors (%d distinct; count, where, message):\n", len(r.Errors))
		for _, e := range r.Errors[:min(len(r.Errors), 5)] {
			head := fmt.Sprintf("  %7d  %-13s  ", e.Count, e.Where)
			fmt.Fprintln(w, head+fitMiddle(e.Message, summaryWidth-utf8.RuneCountInString(head)))
		}
	}
	for _, s := range []struct {
		what string
		list []slow
	}{{"token requests", r.SlowRequests}, {"turns", r.SlowTurns}} {
		if len(s.list) == 0 {
			continue
		}
		fmt.Fprintf(w, "slowest %s (duration, trace id, at, what):\n", s.what)
		for _, e := range s.list[:min(len(s.list), 3)] {
			fmt.Fprintln(w, fit(fmt.Sprintf("  %8s  %s  %6.2fs  %s", fmtDur(time.Duration(e.US*1e3)), e.TraceID, e.AtS, e.What), summaryWidth))
		}
	}
	if len(r.Checks) > 0 {
		verdict := "PASS"
		if !r.ChecksPassed {
			verdict = "FAIL"
		}
		fmt.Fprintf(w, "checks: %s\n", verdict)
		for _, c := range r.Checks {
			fmt.Fprintln(w, fit(fmt.Sprintf("  %s  %-30s actual %s", passText(c.Pass), c.Expr, c.Actual), summaryWidth))
		}
	}
}

func passText(ok bool) string {
	if ok {
		return "pass"
	}
	return "FAIL"
}

// progressWidth is the widest the live line gets.
const progressWidth = 80

// terminalWidth is $COLUMNS when set and narrower than progressWidth.
func terminalWidth() int {
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 10 && n < progressWidth {
		return n
	}
	return progressWidth
}

// progressLine is the live line: elapsed/total, token requests/s, turns/s,
// hit ratio, errors and credential calls. When it does not fit width, the
// fields go in this order: credential calls, hit ratio, turns/s, token
// requests/s; elapsed and errors stay.
func progressLine(cfg *config, p progress, width int) string {
	hit := "hit -"
	if p.hasHits {
		hit = fmt.Sprintf("hit %.1f%%", 100*p.hitRatio)
	}
	fields := []struct {
		text string
		drop int // 0: never dropped; else the order in which it goes
	}{
		{fmt.Sprintf("%5.1fs/%s", p.elapsed.Seconds(), cfg.Duration), 0},
		{"req " + fmtRate(p.reqRate) + "/s", 4},
		{"turns " + fmtRate(p.turnRate) + "/s", 3},
		{hit, 2},
		{fmt.Sprintf("errors %d", p.errors), 0},
		{fmt.Sprintf("cred %d", p.credCalls), 1}, // credential calls
	}
	if cfg.Runtime == "direct" {
		fields = slices.Delete(fields, 2, 3) // no turns
	}
	for drop := 1; ; drop++ {
		var kept []string
		for _, f := range fields {
			if f.drop == 0 || f.drop >= drop {
				kept = append(kept, f.text)
			}
		}
		line := strings.Join(kept, "  ")
		if utf8.RuneCountInString(line) < width || drop > 4 {
			return fit(line, width-1) // the cursor sits after the line
		}
	}
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

// charts are the report's figures over time, in page order, and the
// histograms.
func charts(r *result) (overTime []chart, errorsChart chart, histograms []chart) {
	var credLines []line
	if r.Config.Providers <= 4 {
		for j := range r.Config.Providers {
			c := palette[j%len(palette)]
			credLines = append(credLines,
				line{name: providerName(j) + " calls/s", color: c, value: always(func(p point) float64 { return p.CredPerS[j] })},
				line{name: providerName(j) + " in flight (peak)", color: c, dash: true, value: always(func(p point) float64 { return float64(p.CredPeak[j]) })})
		}
	} else {
		credLines = []line{
			{name: "calls/s, all providers", color: palette[0], value: always(func(p point) float64 { return p.CredTotalPerS })},
			{name: "in flight (peak), all providers", color: palette[0], dash: true, value: always(func(p point) float64 { return float64(p.CredTotalPeak) })},
		}
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
	overTime = []chart{
		timeChart("credential-calls", "Credential calls per second and in flight", "calls/s, calls in flight", r, false, credLines),
		timeChart("token-requests", "Token requests per second, by outcome (stacked)", "requests/s", r, false, stacked),
		timeChart("token-latency", "Token request latency (log scale)", "latency", r, true,
			quantiles(func(p point) *float64 { return p.P50 }, func(p point) *float64 { return p.P90 }, func(p point) *float64 { return p.P99 })),
	}
	if r.HasTurns {
		overTime = append(overTime,
			timeChart("turns", "Turns per second and in flight", "turns/s, turns in flight", r, false, []line{
				{name: "turns/s", color: palette[0], value: always(func(p point) float64 { return p.TurnsPerS })},
				{name: "in flight", color: palette[0], dash: true, value: always(func(p point) float64 { return float64(p.TurnsAlive) })},
			}),
			timeChart("turn-latency", "Turn latency (log scale)", "latency", r, true,
				quantiles(func(p point) *float64 { return p.TurnP50 }, func(p point) *float64 { return p.TurnP90 }, func(p point) *float64 { return p.TurnP99 })))
	}
	errLines := []line{{name: "failed token requests/s", color: palette[4], value: always(func(p point) float64 { return p.TokenErrorsPerS() })}}
	if r.HasTurns {
		errLines = append(errLines, line{name: "failed turns/s", color: palette[5], dash: true, value: always(func(p point) float64 { return p.TurnErrorsPerS() })})
	}
	errorsChart = sizedTimeChart("errors", "Errors per second", "errors/s", r, false, errLines, 750)
	histograms = []chart{histogramChart("token-latency-histogram", "Token request latency", r.Histograms["token_requests"], palette[0])}
	if r.HasTurns {
		histograms = append(histograms, histogramChart("turn-latency-histogram", "Turn latency", r.Histograms["turns"], palette[3]))
	}
	return overTime, errorsChart, histograms
}

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
<p>Token request latency is each request's span in the broker, from its arrival to its reply. Turn latency is from
<code>session.send</code> to <code>session.idle</code> as the load loop saw it{{if .R.Config.Rate}}, counted from the moment the turn was due{{end}}.
Each step of a chart is one interval of {{.R.Interval}}; gaps are intervals without samples. Turns and token requests still running
when the run ended are counted in flight, not as errors; nothing after the end is plotted.</p>
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
