package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
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
		{"-sessions", "0"},
		{"-providers", "-1"},
		{"-concurrency", "0"},
		{"-duration", "0s"},
		{"-duration", "soon"},
		{"-rate", "-5"},
		{"-failure-rate", "1.5"},
		{"-lifetime", "-1s"},
		{"-dialect", "rest"},
		{"-trace", "jaeger"},
		{"-out", ""},
		{"extra-argument"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr, false); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if !strings.Contains(stderr.String(), "usage: tokenload") {
			t.Errorf("%v: no usage text: %q", args, stderr.String())
		}
		if stdout.Len() != 0 {
			t.Errorf("%v: wrote to stdout", args)
		}
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &bytes.Buffer{}, &stderr, false); code != 0 || !strings.Contains(stderr.String(), "-sessions") {
		t.Errorf("-h: exit %d, %q", code, stderr.String())
	}
}

// report reads a run's JSON and checks its HTML.
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
	if n := bytes.Count(html, []byte("<svg")); n != 3 {
		t.Errorf("HTML has %d charts, want 3", n)
	}
	if bytes.Contains(html, []byte("<script")) || bytes.Contains(html, []byte("src=")) {
		t.Error("HTML loads something external")
	}
	if bytes.Contains(raw, []byte(secretMarker)) || bytes.Contains(html, []byte(secretMarker)) {
		t.Error("a token value reached the report")
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

func TestDirectRun(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "direct")
	trace := filepath.Join(t.TempDir(), "spans.jsonl")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-runtime", "direct", "-sessions", "20", "-providers", "2",
		"-concurrency", "8", "-duration", "400ms", "-out", prefix, "-trace", "file:" + trace}, &stdout, &stderr, false)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"token requests", "p50", "outcomes", "credential calls", "refreshes", "< 60 s left", prefix + ".html"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout.String())
		}
	}
	r := report(t, prefix)
	if r.Requests == 0 || sum(r.Outcomes) != r.Requests {
		t.Fatalf("requests %d, outcomes %v", r.Requests, r.Outcomes)
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
	if r.ClientErrors != 0 || r.Outcomes["error"] != 0 || r.Leaks != 0 || r.LowValidity != 0 {
		t.Errorf("errors %d/%d, leaks %d, low %d", r.ClientErrors, r.Outcomes["error"], r.Leaks, r.LowValidity)
	}
	if r.Latency.P50 <= 0 || r.Latency.P50 > r.Latency.P99 || r.Latency.P99 > r.Latency.Max || len(r.Series) == 0 {
		t.Errorf("latency %+v, %d points", r.Latency, len(r.Series))
	}
	spans, err := os.ReadFile(trace)
	if err != nil || !bytes.Contains(spans, []byte(`"providerToken.getToken"`)) {
		t.Errorf("spans not exported: %v", err)
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
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	r := report(t, prefix)
	if r.Requests == 0 || r.ClientOps == 0 {
		t.Fatalf("requests %d, turns %d", r.Requests, r.ClientOps)
	}
	// Bare tokens: never a cache hit; every credential call either gave a
	// bare token or failed (a few may still be running when the run ends).
	// After a failure the credential backs off, so there are more error
	// outcomes than failed calls.
	calls := uint64(r.Credentials["p0"].Calls + r.Credentials["p1"].Calls)
	failures := uint64(r.Credentials["p0"].Failures + r.Credentials["p1"].Failures)
	bare := r.Outcomes["bare"]
	if r.Outcomes["hit"] != 0 || bare == 0 || calls < bare || calls > bare+failures+4 {
		t.Errorf("%d credential calls (%d failed), outcomes %v", calls, failures, r.Outcomes)
	}
	if failures == 0 || r.Outcomes["error"]+4 < failures || r.ClientErrors == 0 {
		t.Errorf("failures %d, error outcomes %d, failed turns %d", failures, r.Outcomes["error"], r.ClientErrors)
	}
	if r.Extra["simulator"] == nil {
		t.Error("no simulator stats")
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
	if code != 0 {
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
}
