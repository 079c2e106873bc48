package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// protoactor's dead-letter throttle waits about a second, then ends.
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
	)
}

func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-bogus"},
		{"-runtime", "nope"},
		{"-runtime", "tcp"},
		{"-runtime", "tcp", "-addr", "127.0.0.1:1", "-dialect", "acquire"}, // the runtime chooses
		{"-runtime", "copilot", "-dialect", "acquire"},                     // the CLI speaks getToken only
		{"-runtime", "copilot", "-concurrency", "1000"},                    // more than one CLI serves
		{"-runtime", "copilot", "-duration", "1s"},
		{"-sessions", "0"},
		{"-providers", "-1"},
		{"-concurrency", "0"},
		{"-duration", "0s"},
		{"-duration", "soon"},
		{"-rate", "-5"},
		{"-failure-rate", "1.5"},
		{"-lifetime", "-1s"},
		{"-backoff-max", "0s"},
		{"-dialect", "rest"},
		{"-trace", "jaeger"},
		{"-out", ""},
		{"-outage", "5s"},
		{"-outage", "0s@1s"},
		{"-outage", "1s@20s"}, // after the end of a 10 s run
		{"-outage-kind", "flaky"},
		{"-credential", "vault"},
		{"-credential", "identity", "-lifetime", "0"}, // the endpoint's tokens expire
		{"-credential", "identity", "-failure-rate", "0.5"},
		{"-check", "p99"},
		{"-check", "p99<fast"},
		{"-check", "latency<5ms"},
		{"-check", "errors=0"},
		{"extra-argument"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr, false); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
		if !strings.Contains(stderr.String(), "usage: tokenload") {
			t.Errorf("%v: no usage text: %q", args, stderr.String())
		}
		if stdout.Len() != 0 {
			t.Errorf("%v: wrote to stdout", args)
		}
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &bytes.Buffer{}, &stderr, false); code != 0 || !strings.Contains(stderr.String(), "hit_ratio") {
		t.Errorf("-h: exit %d, %q", code, stderr.String())
	}
}

// TestCopilotDefaults: without -sessions and -concurrency, -runtime copilot
// picks what one CLI on this machine carries, and says so.
func TestCopilotDefaults(t *testing.T) {
	cfg, err := parseFlags([]string{"-runtime", "copilot"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Concurrency > copilotMaxPerCPU*runtime.NumCPU() || cfg.Concurrency < 1 || cfg.Sessions != cfg.Concurrency || !strings.Contains(cfg.defaulted, "-concurrency") {
		t.Errorf("concurrency %d, sessions %d, %q", cfg.Concurrency, cfg.Sessions, cfg.defaulted)
	}
	cfg, err = parseFlags([]string{"-runtime", "copilot", "-sessions", "3", "-concurrency", "2"}, &bytes.Buffer{})
	if err != nil || cfg.Sessions != 3 || cfg.Concurrency != 2 || cfg.defaulted != "" {
		t.Errorf("explicit flags changed: %v %+v", err, cfg)
	}
}

// TestChecks: the threshold grammar, and what a check decides.
func TestChecks(t *testing.T) {
	figs := map[string]figure{
		"p99":              {Value: 0.040, IsDur: true},
		"turn_p99":         {IsDur: true, NoData: true},
		"errors":           {Value: 0},
		"credential_calls": {Value: 2},
		"hit_ratio":        {Value: 0.95},
	}
	for expr, want := range map[string]bool{
		"p99<50ms":            true,
		"p99 < 40ms":          false,
		"p99<=40ms":           true,
		"p99>1µs":             true,
		"errors==0":           true,
		"errors!=0":           false,
		"credential_calls<=2": true,
		"credential_calls<2":  false,
		"credential_calls>=3": false,
		"hit_ratio>=0.9":      true,
		"hit_ratio>=96%":      false,
		"turn_p99<1h":         false, // no data never passes
	} {
		cs, err := parseChecks(expr, figs)
		if err != nil || len(cs) != 1 {
			t.Errorf("%s: %v", expr, err)
			continue
		}
		if got := evaluate(cs, figs); got != want || cs[0].Pass != want {
			t.Errorf("%s: %v, want %v (actual %s)", expr, got, want, cs[0].Actual)
		}
	}
	cs, err := parseChecks(" p99<50ms , errors==0,hit_ratio>=0.99", figs)
	if err != nil || len(cs) != 3 {
		t.Fatalf("%v %v", cs, err)
	}
	if evaluate(cs, figs) || !cs[0].Pass || !cs[1].Pass || cs[2].Pass || cs[2].Actual != "0.95" {
		t.Errorf("list: %+v", cs)
	}
	for _, bad := range []string{"p99", "p99<<1ms", "p99<1", "errors<1ms", "nope<1", "errors==x", "hit_ratio>=NaN", "p99<1ms,"} {
		if _, err := parseChecks(bad, figs); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	// Every figure the usage text names exists.
	all := figures(&result{})
	for _, f := range figureHelp {
		if _, ok := all[f.name]; !ok {
			t.Errorf("figureHelp names %q, which is no figure", f.name)
		}
	}
}

// wantCharts are the ids of the charts a report of r has: those over time
// and the histograms.
func wantCharts(r *result) (overTime, histograms []string) {
	overTime = []string{"credential-calls", "credential-in-flight", "token-requests", "token-latency", "in-flight", "oldest", "errors"}
	histograms = []string{"token-latency-histogram"}
	if r.HasTurns {
		overTime = append(overTime, "turns", "turn-latency")
		histograms = append(histograms, "turn-latency-histogram")
	}
	if r.Config.Rate > 0 {
		overTime = append(overTime, "schedule")
	}
	return overTime, histograms
}

// report reads a run's JSON and checks its HTML: the charts it should
// have, each drawn or saying "no data", and nothing loaded from outside.
func report(t *testing.T, prefix string) *result {
	t.Helper()
	raw, err := os.ReadFile(prefix + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var r result
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	html, err := os.ReadFile(prefix + ".html")
	if err != nil {
		t.Fatal(err)
	}
	overTime, histograms := wantCharts(&r)
	want := append(overTime, histograms...)
	figs := regexp.MustCompile(`<figure class="chart" id="([a-z-]+)">`).FindAllSubmatch(html, -1)
	if len(figs) != len(want) {
		t.Errorf("HTML has %d charts, want %d", len(figs), len(want))
	}
	for _, id := range want {
		if !bytes.Contains(html, []byte(`id="`+id+`"`)) {
			t.Errorf("no chart %q", id)
		}
	}
	if n, nodata := bytes.Count(html, []byte("<svg")), bytes.Count(html, []byte(`class="nodata"`)); n+nodata != len(want) {
		t.Errorf("%d SVGs + %d no-data, want %d", n, nodata, len(want))
	}
	if bytes.Contains(html, []byte("<script")) || bytes.Contains(html, []byte("src=")) || bytes.Contains(html, []byte("href=")) {
		t.Error("HTML loads something external")
	}
	if bytes.Contains(raw, []byte(secretMarker)) || bytes.Contains(html, []byte(secretMarker)) {
		t.Error("a token value reached the report")
	}
	// No point past the end of the run.
	for _, p := range r.Series {
		if p.T > r.ElapsedS+1e-9 || p.Span <= 0 {
			t.Errorf("point at %.3fs (span %.3f) in a run of %.3fs", p.T, p.Span, r.ElapsedS)
		}
	}
	return &r
}

func sum(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// summaryFits checks the summary's width.
func summaryFits(t *testing.T, out string) {
	t.Helper()
	for line := range strings.Lines(out) {
		if n := utf8.RuneCountInString(strings.TrimRight(line, "\n")); n > summaryWidth {
			t.Errorf("summary line of %d columns: %q", n, line)
		}
	}
}

func TestDirectRun(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "direct")
	trace := filepath.Join(t.TempDir(), "spans.jsonl")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-runtime", "direct", "-sessions", "20", "-providers", "2",
		"-concurrency", "8", "-duration", "400ms", "-out", prefix, "-trace", "file:" + trace,
		"-check", "errors==0,credential_calls==40,p50<10s"}, &stdout, &stderr, false)
	if code != exitOK {
		t.Fatalf("exit %d: %s\n%s", code, stderr.String(), stdout.String())
	}
	for _, want := range []string{"token requests", "p50", "outcomes", "credential calls", "refreshes", "< 60 s left",
		"request k asks session k mod N", "slowest token requests", "checks: PASS", prefix + ".html"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout.String())
		}
	}
	summaryFits(t, stdout.String())
	r := report(t, prefix)
	if r.Requests == 0 || sum(r.Outcomes) != r.Requests || r.Methods["providerToken.getToken"] != r.Requests {
		t.Fatalf("requests %d, outcomes %v, methods %v", r.Requests, r.Outcomes, r.Methods)
	}
	// 20 sessions x 2 per-session credentials: each called once, cold.
	if r.Outcomes["refreshed"]+r.Outcomes["coalesced"] < 40 || r.Refreshes["cold/ok"] != 40 {
		t.Errorf("outcomes %v, refreshes %v", r.Outcomes, r.Refreshes)
	}
	for _, p := range []string{"p0", "p1"} {
		if r.Credentials[p].Calls != 20 {
			t.Errorf("credential calls %v", r.Credentials)
		}
	}
	if r.Outcomes["error"] != 0 || r.Leaks != 0 || r.LowValidity != 0 || r.HasTurns || len(r.Errors) != 0 {
		t.Errorf("errors %d, leaks %d, low %d, turns %v, %v", r.Outcomes["error"], r.Leaks, r.LowValidity, r.HasTurns, r.Errors)
	}
	if r.Latency.P50 <= 0 || r.Latency.P50 > r.Latency.P99 || r.Latency.P99 > r.Latency.Max || len(r.Series) == 0 {
		t.Errorf("latency %+v, %d points", r.Latency, len(r.Series))
	}
	// Every series point's outcomes add up to the total.
	var fromSeries float64
	for _, p := range r.Series {
		fromSeries += p.RequestsPerS * p.Span
	}
	if uint64(fromSeries+0.5) != r.Requests {
		t.Errorf("series hold %.0f requests, total %d", fromSeries, r.Requests)
	}
	if len(r.SlowRequests) == 0 || len(r.SlowRequests[0].TraceID) != 32 || len(r.Histograms["token_requests"]) == 0 {
		t.Errorf("slowest %v, histogram %v", r.SlowRequests, r.Histograms["token_requests"])
	}
	spans, err := os.ReadFile(trace)
	if err != nil || !bytes.Contains(spans, []byte(`"providerToken.getToken"`)) || !bytes.Contains(spans, []byte(r.SlowRequests[0].TraceID)) {
		t.Errorf("spans not exported, or the slowest's trace id is not among them: %v", err)
	}
	if bytes.Contains(spans, []byte(secretMarker)) {
		t.Error("a token value was exported")
	}
}

// TestSimRun drives the embedded simulator with shared credentials that
// issue bare tokens and sometimes fail.
func TestSimRun(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "sim")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-sessions", "10", "-providers", "2", "-shared", "-lifetime", "0",
		"-failure-rate", "0.2", "-concurrency", "4", "-duration", "1s", "-out", prefix}, &stdout, &stderr, false)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	summaryFits(t, stdout.String())
	if !strings.Contains(stdout.String(), "session i's model uses p(i mod 2), 5 sessions each") {
		t.Errorf("summary does not say how sessions map to providers:\n%s", stdout.String())
	}
	r := report(t, prefix)
	if r.Requests == 0 || r.Turns == 0 || !r.HasTurns {
		t.Fatalf("requests %d, turns %d", r.Requests, r.Turns)
	}
	// Bare tokens: never a cache hit; every credential call either gave a
	// bare token or failed (a few may still be running when the run ends).
	// After a failure the credential backs off, so there are more error
	// outcomes than failed calls.
	calls := r.Credentials["p0"].Calls + r.Credentials["p1"].Calls
	failures := r.Credentials["p0"].Failures + r.Credentials["p1"].Failures
	bare := r.Outcomes["bare"]
	if r.Outcomes["hit"] != 0 || bare == 0 || calls < bare || calls > bare+failures+4 {
		t.Errorf("%d credential calls (%d failed), outcomes %v", calls, failures, r.Outcomes)
	}
	if failures == 0 || r.Outcomes["error"]+4 < failures || r.TurnErrors == 0 {
		t.Errorf("failures %d, error outcomes %d, failed turns %d", failures, r.Outcomes["error"], r.TurnErrors)
	}
	// Every error is explained: the table's counts add up to the errors.
	var explained uint64
	for _, e := range r.Errors {
		if e.Message == "" {
			t.Errorf("error without a message: %+v", e)
		}
		explained += e.Count
	}
	if explained != r.Outcomes["error"]+r.TurnErrors || !strings.Contains(stdout.String(), "injected credential failure") {
		t.Errorf("errors explained %d, token %d + turn %d:\n%s", explained, r.Outcomes["error"], r.TurnErrors, stdout.String())
	}
	if r.Extra["simulator"] == nil {
		t.Error("no simulator stats")
	}
}

// TestInFlight: a run that ends while every turn waits for a slow
// credential counts those turns (and their token requests) unfinished, at
// their age: not as errors, not dropped, and not as "no data".
func TestInFlight(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "inflight")
	var stdout, stderr bytes.Buffer
	// A second, so that a busy machine starting the turns a few hundred
	// milliseconds late still has them old enough for the checks.
	code := run(context.Background(), []string{"-sessions", "3", "-concurrency", "3", "-cred-latency", "20s",
		"-duration", "1s", "-out", prefix, "-check", "turns_in_flight==3,unfinished==3,turn_p50>=500ms,p50>=500ms,max_age<700ms"}, &stdout, &stderr, false)
	if code != exitChecks {
		t.Fatalf("exit %d, want %d (max_age is the run's length): %s\n%s", code, exitChecks, stderr.String(), stdout.String())
	}
	r := report(t, prefix)
	if r.TurnsInFlight != 3 || r.RequestsInFlight != 3 || r.Turns != 0 || r.TurnErrors != 0 || len(r.Errors) != 0 {
		t.Errorf("in flight: %d turns, %d requests; done %d, errors %d %v", r.TurnsInFlight, r.RequestsInFlight, r.Turns, r.TurnErrors, r.Errors)
	}
	for i, want := range []bool{true, true, true, true, false} {
		if r.Checks[i].Pass != want {
			t.Errorf("check %s: pass %v, want %v (actual %s)", r.Checks[i].Expr, r.Checks[i].Pass, want, r.Checks[i].Actual)
		}
	}
	if r.TurnLatency.Count != 3 || r.TurnLatency.Unfinished != 3 || r.Latency.Unfinished != 3 {
		t.Errorf("turn latency %+v, token request latency %+v: want the 3 unfinished in them", r.TurnLatency, r.Latency)
	}
	for _, want := range []string{"in flight at the end 3", "(3 unfinished, at their age)", "closed loop", "3 at the end: 3 running"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout.String())
		}
	}
	html, _ := os.ReadFile(prefix + ".html")
	// Over time, the charts draw finished turns only: none here.
	for _, id := range []string{"turn-latency", "token-latency"} {
		if !regexp.MustCompile(`id="` + id + `"><figcaption>[^<]*<b>[^<]*</b></figcaption><div class="nodata">no data</div>`).Match(html) {
			t.Errorf("chart %s does not say no data", id)
		}
	}
	// No turn ends: the count in flight only rises (the first interval may
	// end before every requester has started), and the oldest ages.
	for i, p := range r.Series {
		if p.TurnP50 != nil || p.InFlight > 3 || i > 0 && p.InFlight < r.Series[i-1].InFlight {
			t.Errorf("point %+v: want up to 3 turns in flight, none ending, and no latency", p)
		}
		if i > 0 && r.Series[i-1].InFlight > 0 && p.OldestS <= r.Series[i-1].OldestS {
			t.Errorf("point %d: oldest %.3fs, not older than %.3fs before", i, p.OldestS, r.Series[i-1].OldestS)
		}
	}
	if n := len(r.Series); n == 0 || r.Series[n-1].InFlight != 3 {
		t.Errorf("series %+v: want 3 turns in flight at the end", r.Series)
	}
}

// TestOutage: during the window every credential call fails, the fake
// one or azidentity against the identity endpoint; the cached tokens are
// dropped at its start, so credential calls and errors rise inside it,
// and fall once it ends (with back-off capped at 100 ms).
func TestOutage(t *testing.T) {
	for _, tc := range []struct {
		credential string
		args       []string
	}{
		{credFake, nil},
		// 4-minute tokens: inside azidentity's 5-minute refresh margin, so
		// its cache sends every credential call to the endpoint.
		{credIdentity, []string{"-lifetime", "4m"}},
	} {
		t.Run(tc.credential, func(t *testing.T) {
			testenv.ClearAzure(t)
			prefix := filepath.Join(t.TempDir(), "outage")
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{"-runtime", "direct", "-sessions", "4", "-shared", "-concurrency", "4",
				"-duration", "2s", "-interval", "100ms", "-outage", "500ms@600ms", "-backoff-max", "100ms", "-credential", tc.credential,
				"-out", prefix, "-check", "errors==0"}, tc.args...), &stdout, &stderr, false)
			if code != exitChecks {
				t.Fatalf("exit %d, want %d: %s\n%s", code, exitChecks, stderr.String(), stdout.String())
			}
			r := report(t, prefix)
			if len(r.Outage) != 2 || r.Outage[0] != 0.6 || r.Outage[1] != 1.1 {
				t.Fatalf("outage window %v", r.Outage)
			}
			// Intervals wholly before, inside and after the window (after:
			// from 400 ms past its end, time for a call that failed just
			// before the end to return on a busy machine, then the capped
			// back-off of 100 ms, then the recovery call).
			var before, inside, after struct{ calls, errors, requests float64 }
			cold := -1 // the interval of the cold start's credential call: the first, unless the machine is busy
			for i, p := range r.Series {
				from := p.T - p.Span
				if cold < 0 && p.CredTotalPerS > 0 {
					cold = i
				}
				var b *struct{ calls, errors, requests float64 }
				switch {
				case i <= cold && p.T <= 0.6+1e-6:
					continue
				case p.T <= 0.6+1e-6:
					b = &before
				case from >= 0.6-1e-6 && p.T <= 1.1+1e-6:
					b = &inside
				case from >= 1.3-1e-6:
					b = &after
				default:
					continue
				}
				b.calls += p.CredTotalPerS * p.Span
				b.errors += float64(p.TokenErrors)
				b.requests += float64(p.Requests)
			}
			t.Logf("before %+v, inside %+v, after %+v", before, inside, after)
			if before.calls != 0 || before.errors != 0 || before.requests == 0 {
				t.Errorf("before the window: %+v, want requests served from the cache", before)
			}
			if inside.calls == 0 || inside.errors == 0 {
				t.Errorf("inside the window: %+v, want failing credential calls and errors", inside)
			}
			if after.errors != 0 || after.requests == 0 {
				t.Errorf("after the window: %+v, want requests without errors", after)
			}
			if c := r.Credentials["p0"]; c.Failures == 0 || c.Calls != c.Failures+2 {
				t.Errorf("credential calls %+v: want the cold one, the failures and one recovery", c)
			}
			if !strings.Contains(stdout.String(), "tokenload outage") && !strings.Contains(stdout.String(), "injected outage") ||
				!strings.Contains(stdout.String(), "FAIL  errors==0") {
				t.Errorf("summary does not explain the errors or the failed check:\n%s", stdout.String())
			}
			if tc.credential == credIdentity {
				// Every failed call reached the endpoint and got its 400.
				if id := r.Identity; id == nil || id.Statuses[400] != int(r.Credentials["p0"].Failures) || id.Issued != 2 {
					t.Errorf("identity endpoint %+v, credential calls %+v", r.Identity, r.Credentials)
				}
				if os.Getenv("IDENTITY_ENDPOINT") != "" {
					t.Error("the run left IDENTITY_ENDPOINT set")
				}
			}
			html, _ := os.ReadFile(prefix + ".html")
			if !bytes.Contains(html, []byte("outage (error)")) {
				t.Error("the charts do not shade the outage")
			}
		})
	}
}

// TestInterrupt: cancelling (what Ctrl-C does) stops the run early and
// still writes the report.
func TestInterrupt(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "int")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := run(ctx, []string{"-runtime", "direct", "-sessions", "5", "-duration", "10m", "-rate", "200", "-out", prefix}, &stdout, &stderr, false)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if time.Since(start) > time.Minute {
		t.Fatal("did not stop on cancel")
	}
	if !strings.Contains(stdout.String(), "interrupted") {
		t.Errorf("summary does not say it was interrupted:\n%s", stdout.String())
	}
	r := report(t, prefix)
	if !r.Interrupted || r.ElapsedS >= 600 || r.Requests == 0 {
		t.Errorf("interrupted %v, elapsed %.1f, requests %d", r.Interrupted, r.ElapsedS, r.Requests)
	}
}

// TestProgressLine: every field at 80 columns; narrower, the fields go in
// their order and the line still fits.
func TestProgressLine(t *testing.T) {
	cfg := &config{Runtime: "sim", Duration: 10 * time.Minute}
	p := progress{elapsed: 123 * time.Second, reqRate: 123456, turnRate: 12345, hitRatio: 0.999, hasHits: true, errors: 123456, credCalls: 12345}
	full := progressLine(cfg, p, 80)
	for _, want := range []string{"123.0s/10m0s", "req 123k/s", "turns 12k/s", "hit 99.9%", "errors 123456", "cred 12345"} {
		if !strings.Contains(full, want) {
			t.Errorf("%q lacks %q", full, want)
		}
	}
	for width := 80; width >= 20; width-- {
		line := progressLine(cfg, p, width)
		if n := utf8.RuneCountInString(line); n >= width {
			t.Errorf("width %d: %d columns: %q", width, n, line)
		}
	}
	if l := progressLine(cfg, p, 60); strings.Contains(l, "cred") || !strings.Contains(l, "errors") {
		t.Errorf("at 60 columns: %q", l)
	}
}

func TestHist(t *testing.T) {
	var h hist
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	for q, want := range map[float64]time.Duration{0.5: 500 * time.Microsecond, 0.99: 990 * time.Microsecond} {
		got := h.quantile(q)
		if got < want || float64(got) > float64(want)*1.04 {
			t.Errorf("q%.2f = %s, want %s (+4%%)", q, got, want)
		}
	}
	if h.quantile(1) != time.Millisecond || h.max != time.Millisecond {
		t.Errorf("max %s", h.quantile(1))
	}
	var small hist
	small.add(7)
	if small.quantile(0.5) != 7 {
		t.Errorf("exact small bucket: %s", small.quantile(0.5))
	}
	// Log buckets: contiguous, 4 per decade, holding every sample.
	bs := h.logBuckets()
	var n uint64
	for i, b := range bs {
		n += b.Count
		if i > 0 && (b.LoUS != bs[i-1].HiUS && (b.LoUS-bs[i-1].HiUS)/b.LoUS > 1e-9) {
			t.Errorf("bucket %d starts at %g, previous ends at %g", i, b.LoUS, bs[i-1].HiUS)
		}
		if r := b.HiUS / b.LoUS; r < 1.77 || r > 1.79 {
			t.Errorf("bucket %+v: ratio %g, want 10^(1/4)", b, r)
		}
	}
	if n != h.n || bs[0].LoUS > 1 || bs[len(bs)-1].HiUS < 1000 {
		t.Errorf("buckets %+v hold %d of %d", bs, n, h.n)
	}
}

// TestStallOpenLoop: at a target rate, a credential that hangs stalls
// every requester; the turns due meanwhile never start. The latencies
// count the stalled and the never-started at their age, so p99 fails, and
// the summary says what the schedule asked for and what it got. Without
// the outage the same run passes.
func TestStallOpenLoop(t *testing.T) {
	// 50/s on 16 requesters: a load a busy machine carries under -race.
	args := []string{"-sessions", "20", "-concurrency", "16", "-rate", "50", "-duration", "3s", "-check", "p99<1s,turn_p99<1s"}
	prefix := filepath.Join(t.TempDir(), "stall")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append(args, "-outage", "2s@800ms", "-outage-kind", "hang", "-out", prefix), &stdout, &stderr, false)
	if code != exitChecks {
		t.Fatalf("exit %d, want %d: %s\n%s", code, exitChecks, stderr.String(), stdout.String())
	}
	summaryFits(t, strings.Split(stdout.String(), "\nreport: ")[0]) // the path is the test's
	r := report(t, prefix)
	o := r.Operations
	t.Logf("operations: due %d, started %d, late %d, never started %d, running %d, oldest %.2fs", o.Due, o.Started, o.Late, o.NeverStarted, o.Running, o.OldestS)
	// Every requester is stuck from about 0.8 s on: 16 running at the end,
	// the slots due after the stuck ones never started (about 2 s at 50/s).
	if o.Rate != 50 || o.Running != 16 || o.NeverStarted < 60 || o.Due != o.Started+o.NeverStarted || o.OldestS < 1.5 {
		t.Errorf("operations %+v: want 16 running and dozens never started", o)
	}
	if r.AchievedPerS > 30 || r.Latency.P99 < 1.5e6 || r.TurnLatency.P99 < 1.5e6 || r.Latency.Unfinished == 0 || r.Latency.Unfinished != uint64(r.RequestsInFlight) {
		t.Errorf("achieved %.1f/s, token request latency %+v, turn latency %+v", r.AchievedPerS, r.Latency, r.TurnLatency)
	}
	for _, want := range []string{"open loop: target 50/s, achieved", fmt.Sprintf("%d never started", o.NeverStarted),
		fmt.Sprintf("%d at the end: 16 running", o.Unfinished()), "FAIL  p99<1s", "FAIL  turn_p99<1s"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout.String())
		}
	}
	if f := r.Figures["late"]; f.Value != float64(o.LateOrNever()) || f.NoData {
		t.Errorf("figure late %+v, want %d", f, o.LateOrNever())
	}

	stdout.Reset()
	if code := run(context.Background(), append(args, "-out", prefix), &stdout, &stderr, false); code != exitOK {
		t.Errorf("without the outage: exit %d:\n%s", code, stdout.String())
	}
}

// TestStallClosedLoop: without a rate, the same hang leaves the requesters
// stuck and starts nothing else; max_age catches it.
func TestStallClosedLoop(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "stall")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-sessions", "20", "-concurrency", "8", "-duration", "3s", "-outage", "2s@800ms",
		"-outage-kind", "hang", "-out", prefix, "-check", "max_age<1s,late==0"}, &stdout, &stderr, false)
	if code != exitChecks {
		t.Fatalf("exit %d, want %d: %s\n%s", code, exitChecks, stderr.String(), stdout.String())
	}
	r := report(t, prefix)
	if o := r.Operations; o.Rate != 0 || o.Running != 8 || o.NeverStarted != 0 || o.OldestS < 1.5 {
		t.Errorf("operations %+v: want 8 stuck, the oldest since about 0.8 s", o)
	}
	// late is the open loop's: no data here, so its check fails too.
	if r.Checks[0].Pass || r.Checks[1].Pass || r.Checks[1].Actual != "no data" {
		t.Errorf("checks %+v", r.Checks)
	}
	if !strings.Contains(stdout.String(), "closed loop (no -rate), 8 requesters") || !strings.Contains(stdout.String(), "FAIL  max_age<1s") {
		t.Errorf("summary:\n%s", stdout.String())
	}
	// The oldest turn's age rises through the stall.
	if n := len(r.Series); n < 2 || r.Series[n-1].OldestS < 1.5 {
		t.Errorf("oldest over time: %+v", r.Series)
	}
}
