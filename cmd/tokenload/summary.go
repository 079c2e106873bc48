package main

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tokenbroker/tokenbroker/tracing"
)

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
	s := fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s", d(l.P50), d(l.P90), d(l.P99), d(l.Max))
	if l.Unfinished > 0 {
		s += fmt.Sprintf("  (%d unfinished, at their age)", l.Unfinished)
	}
	return s
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
	rows = append(rows, scheduleLines(r)...)
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

// scheduleLines say how the load loop kept its schedule: in the open loop
// the target and achieved rates and the operations started late or not at
// all; in either, what was unfinished at the end and the oldest of it.
func scheduleLines(r *result) [][2]string {
	o, ops := r.Operations, r.OperationKind+"s"
	var rows [][2]string
	if o.Rate > 0 {
		rows = append(rows,
			[2]string{"schedule", fmt.Sprintf("open loop: target %g/s, achieved %s/s; %d %s of %d due started", o.Rate, fmtRate(r.AchievedPerS), o.Started, ops, o.Due)},
			[2]string{"  late", fmt.Sprintf("%d: %d started over %s after their slot, %d never started", o.LateOrNever(), o.Late, fmtDur(lateAfter), o.NeverStarted)})
	} else {
		rows = append(rows, [2]string{"schedule", fmt.Sprintf("closed loop (no -rate), %d requesters: achieved %s/s", r.Config.Concurrency, fmtRate(r.AchievedPerS))})
	}
	unfinished := fmt.Sprintf("%d at the end: %d running", o.Unfinished(), o.Running)
	if o.Rate > 0 {
		unfinished += fmt.Sprintf(", %d never started", o.NeverStarted)
	}
	if o.Unfinished() > 0 {
		unfinished += fmt.Sprintf("; the oldest %s old", fmtDur(time.Duration(o.OldestS*float64(time.Second))))
	}
	return append(rows, [2]string{"  unfinished", unfinished})
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
