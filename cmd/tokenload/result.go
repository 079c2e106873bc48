package main

import (
	"cmp"
	"fmt"
	"maps"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

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

	// The load loop's operations: turns, or with -runtime direct the
	// token requests it sends; their schedule (-rate: the open loop) and
	// what of it the run kept.
	OperationKind string       `json:"operation"` // "turn" or "token request"
	Operations    ledgerReport `json:"operations"`
	AchievedPerS  float64      `json:"operations_started_per_s"`

	// Token requests, as the broker traced them; their latency is the load
	// loop's with -runtime direct, else that of the broker's spans.
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
		OperationKind: "turn", Operations: col.opsEnd,
		Methods: maps.Clone(col.methods), RequestsInFlight: col.reqAtEnd, Latency: col.reqsEnd.Latency,
		Outcomes: maps.Clone(col.outcomes), LowValidity: col.lowLeft, Refreshes: maps.Clone(col.refreshes), Leaks: col.leaks,
		Credentials: map[string]creds{},
		HasTurns:    d.turns(), Series: slices.Clone(col.series), Outage: cfg.Outage.window(),
		Histograms: map[string][]bucket{"token_requests": col.reqsEnd.hist.logBuckets()},
		Extra:      d.extra(),
	}
	for _, n := range col.methods {
		r.Requests += n
	}
	slowRequests, slowTurns := mergeSlowest(col.slowRequests, col.reqsEnd.unfinished), mergeSlowest(col.slowOps, col.opsEnd.unfinished)
	if d.turns() {
		r.Turns, r.TurnErrors, r.TurnsInFlight, r.TurnLatency = col.opsEnd.Finished, col.opErrors, int(col.opsEnd.Running), col.opsEnd.Latency
		r.Histograms["turns"] = col.opsEnd.hist.logBuckets()
	} else {
		r.OperationKind, r.Latency = "token request", col.opsEnd.Latency
		r.Histograms["token_requests"] = col.opsEnd.hist.logBuckets()
		slowRequests, slowTurns = slowTurns, nil
	}
	if cfg.target.Kind != telemetry.None {
		r.SlowRequests, r.SlowTurns = slowRequests, slowTurns
	}
	if elapsed > 0 {
		r.AchievedPerS = float64(r.Operations.Started) / elapsed.Seconds()
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

// mergeSlowest is the slowest of finished and unfinished, longest first.
func mergeSlowest(finished, unfinished []slow) []slow {
	out := slices.Clone(finished)
	for _, s := range unfinished {
		out = keepSlowest(out, s)
	}
	return out
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
	ops := r.Operations
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
		"achieved_rate":       {Value: r.AchievedPerS},
		"late":                {Value: float64(ops.LateOrNever()), NoData: ops.Rate == 0},
		"unfinished":          count(ops.Unfinished()),
		"max_age":             {Value: ops.OldestS, IsDur: true},
	}
}
