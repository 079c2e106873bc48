package main

import (
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Thresholds (-check) are a comma-separated list of NAME OP VALUE: a
// figure of the summary, one of < <= > >= == !=, and a number, a
// percentage (for ratios) or a duration (for latencies):
//
//	p99<50ms, errors==0, credential_calls<=2, hit_ratio>=0.9

// figure is one named number of the summary that a check can test.
type figure struct {
	Value  float64 `json:"value"` // seconds for durations
	IsDur  bool    `json:"duration,omitempty"`
	NoData bool    `json:"no_data,omitempty"` // e.g. a latency without samples
}

func (f figure) String() string {
	switch {
	case f.NoData:
		return "no data"
	case f.IsDur:
		return fmtDur(time.Duration(f.Value * float64(time.Second)))
	case f.Value == math.Trunc(f.Value) && math.Abs(f.Value) < 1e15:
		return strconv.FormatFloat(f.Value, 'f', 0, 64)
	}
	return strconv.FormatFloat(f.Value, 'g', 4, 64)
}

// figureHelp names every figure, for the usage text and errors.
var figureHelp = []struct{ name, what string }{
	{"requests", "token requests answered"},
	{"requests_per_s", "token requests per second"},
	{"p50", "token request latency, median (also p90, p99, max)"},
	{"turns", "turns completed"},
	{"turns_per_s", "turns per second"},
	{"turn_p50", "turn latency, median (also turn_p90, turn_p99, turn_max)"},
	{"errors", "failed token requests + failed turns"},
	{"token_errors", "token requests answered with an error"},
	{"turn_errors", "turns that failed"},
	{"credential_calls", "calls to the credentials"},
	{"credential_failures", "credential calls that failed"},
	{"hit_ratio", "cache hits / token requests (0..1)"},
	{"low_validity", "tokens served with < 60 s left"},
	{"leaks", "token values found in telemetry"},
	{"turns_in_flight", "turns still running at the end"},
	{"achieved_rate", "operations (turns; token requests with -runtime direct) started per second"},
	{"late", "open loop (-rate): operations started over 10ms after their slot, or never started"},
	{"unfinished", "operations running at the end, or (open loop) due and never started"},
	{"max_age", "age of the oldest unfinished operation at the end (catches a stall in either loop)"},
}

// check is one parsed threshold and, after evaluate, its verdict.
type check struct {
	Expr   string  `json:"expr"`
	Name   string  `json:"figure"`
	Op     string  `json:"op"`
	Want   float64 `json:"want"`
	Actual string  `json:"actual,omitempty"`
	Pass   bool    `json:"pass"`
}

var checkRE = regexp.MustCompile(`^([a-z][a-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*(\S+)$`)

// parseChecks parses the -check flag; names are checked against known.
func parseChecks(s string, known map[string]figure) ([]check, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []check
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		m := checkRE.FindStringSubmatch(part)
		if m == nil {
			return nil, fmt.Errorf("check %q: want NAME OP VALUE, e.g. p99<50ms (OP: < <= > >= == !=)", part)
		}
		f, ok := known[m[1]]
		if !ok {
			return nil, fmt.Errorf("check %q: unknown figure %q (known: %s)", part, m[1], strings.Join(slices.Sorted(maps.Keys(known)), ", "))
		}
		want, err := parseValue(m[3], f.IsDur)
		if err != nil {
			return nil, fmt.Errorf("check %q: %v", part, err)
		}
		out = append(out, check{Expr: part, Name: m[1], Op: m[2], Want: want})
	}
	return out, nil
}

func parseValue(s string, isDur bool) (float64, error) {
	if isDur {
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration (e.g. 50ms)", s)
		}
		return d.Seconds(), nil
	}
	scale := 1.0
	if p, ok := strings.CutSuffix(s, "%"); ok {
		s, scale = p, 0.01
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return v * scale, nil
}

// evaluate decides every check against the run's figures; a figure
// without data fails its check. It reports whether all passed.
func evaluate(checks []check, figs map[string]figure) bool {
	all := true
	for i := range checks {
		c := &checks[i]
		f := figs[c.Name]
		c.Actual = f.String()
		c.Pass = !f.NoData && compare(f.Value, c.Op, c.Want)
		all = all && c.Pass
	}
	return all
}

func compare(a float64, op string, b float64) bool {
	switch op {
	case "<":
		return a < b
	case "<=":
		return a <= b
	case ">":
		return a > b
	case ">=":
		return a >= b
	case "==":
		return a == b
	}
	return a != b
}
