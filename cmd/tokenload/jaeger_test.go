package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/syncbuf"
	"github.com/tokenbroker/tokenbroker/internal/testenv"
)

// jaegerVersion is the Jaeger the tools module in jaeger/ builds.
func jaegerVersion(t *testing.T) string {
	t.Helper()
	mod, err := os.ReadFile(filepath.Join("jaeger", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/jaegertracing/jaeger (v\S+)`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("jaeger/go.mod does not require github.com/jaegertracing/jaeger")
	}
	return string(m[1])
}

// findJaeger returns the jaeger program `make jaeger` builds
// ($TOKENBROKER_JAEGER, else .cache/jaeger-VERSION/jaeger at the root of
// the repository), or skips the test; with TOKENBROKER_REQUIRE_JAEGER=1
// (.ci/run) a missing one fails it.
func findJaeger(t *testing.T) string {
	t.Helper()
	path := os.Getenv("TOKENBROKER_JAEGER")
	if path == "" {
		path = filepath.Join("..", "..", ".cache", "jaeger-"+jaegerVersion(t), "jaeger")
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
		abs, err := filepath.Abs(path)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	msg := fmt.Sprintf("no Jaeger at %s: `make jaeger` builds it (cmd/tokenload/jaeger's tools module)", path)
	if os.Getenv("TOKENBROKER_REQUIRE_JAEGER") == "1" {
		t.Fatal(msg + ", and TOKENBROKER_REQUIRE_JAEGER=1")
	}
	t.Skip(msg)
	return ""
}

// jaegerHTTP asks the query API, without keeping connections to a server
// the test stops.
var jaegerHTTP = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// jaeger is a Jaeger started by a test on free loopback ports.
type jaeger struct {
	query string // http://127.0.0.1:PORT, the query service's HTTP API
	otlp  string // http://127.0.0.1:PORT, its OTLP gRPC receiver
	log   *syncbuf.Buffer
}

// freePorts returns n loopback addresses free a moment ago.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ln.Addr().String())
		defer ln.Close()
	}
	return out
}

// startJaeger runs bin with jaeger/jaeger.yaml (in-memory storage, OTLP
// gRPC and HTTP, the query API) on free 127.0.0.1 ports until the test
// ends, and waits until it answers. A port taken in between makes it
// exit: then it is tried again on others.
func startJaeger(t *testing.T, bin string) *jaeger {
	t.Helper()
	config, err := filepath.Abs(filepath.Join("jaeger", "jaeger.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var lastLog string
	for range 3 {
		ports := freePorts(t, 4)
		j := &jaeger{query: "http://" + ports[0], otlp: "http://" + ports[2], log: &syncbuf.Buffer{}}
		cmd := exec.Command(bin, "--config", config)
		cmd.Env = append(os.Environ(), "JAEGER_QUERY_HTTP="+ports[0], "JAEGER_QUERY_GRPC="+ports[1],
			"JAEGER_OTLP_GRPC="+ports[2], "JAEGER_OTLP_HTTP="+ports[3])
		cmd.Stdout, cmd.Stderr = j.log, j.log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-exited:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		deadline := time.Now().Add(90 * time.Second) // a cold start on a busy machine
	poll:
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				break poll
			case <-time.After(200 * time.Millisecond):
			}
			if resp, err := jaegerHTTP.Get(j.query + "/api/services"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					t.Cleanup(stop)
					return j
				}
			}
		}
		stop()
		lastLog = j.log.String()
	}
	t.Fatalf("jaeger did not start:\n%s", lastLog)
	return nil
}

// get asks the query API for path and returns the body, retrying until
// the answer satisfies ok (the spans reach storage a moment after they
// are exported).
func (j *jaeger) get(t *testing.T, path string, ok func([]byte) bool) []byte {
	t.Helper()
	var body []byte
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := jaegerHTTP.Get(j.query + path)
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK && ok(body) {
				return body
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v\n%s\njaeger's log:\n%s", path, err, body, j.log.String())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// The query API's /api/v3 answers: OTLP's JSON form.
type (
	otlpValue struct {
		StringValue *string  `json:"stringValue"`
		BoolValue   *bool    `json:"boolValue"`
		DoubleValue *float64 `json:"doubleValue"`
		IntValue    *string  `json:"intValue"`
	}
	otlpAttr struct {
		Key   string    `json:"key"`
		Value otlpValue `json:"value"`
	}
	otlpLink struct {
		TraceID    string     `json:"traceId"`
		SpanID     string     `json:"spanId"`
		Attributes []otlpAttr `json:"attributes"`
	}
	otlpSpan struct {
		TraceID      string     `json:"traceId"`
		SpanID       string     `json:"spanId"`
		ParentSpanID string     `json:"parentSpanId"`
		Name         string     `json:"name"`
		Attributes   []otlpAttr `json:"attributes"`
		Links        []otlpLink `json:"links"`
	}
	otlpTraces struct {
		Result struct {
			ResourceSpans []struct {
				ScopeSpans []struct {
					Spans []otlpSpan `json:"spans"`
				} `json:"scopeSpans"`
			} `json:"resourceSpans"`
		} `json:"result"`
	}
)

func spansOf(t *testing.T, body []byte) []otlpSpan {
	t.Helper()
	var tr otlpTraces
	if err := json.Unmarshal(body, &tr); err != nil {
		t.Fatalf("not an OTLP JSON answer: %v\n%s", err, body)
	}
	var out []otlpSpan
	for _, rs := range tr.Result.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			out = append(out, ss.Spans...)
		}
	}
	return out
}

// attr is the value of key among attrs, as text ("" when absent).
func attr(attrs []otlpAttr, key string) string {
	for _, a := range attrs {
		if a.Key != key {
			continue
		}
		switch v := a.Value; {
		case v.StringValue != nil:
			return *v.StringValue
		case v.BoolValue != nil:
			return fmt.Sprint(*v.BoolValue)
		case v.DoubleValue != nil:
			return fmt.Sprint(*v.DoubleValue)
		case v.IntValue != nil:
			return *v.IntValue
		}
	}
	return ""
}

func hasSpans(body []byte) bool { return bytes.Contains(body, []byte(`"spanId"`)) }

// The attributes the README says each span carries; the test checks that
// Jaeger has them, and that the README names them.
var (
	turnAttributes    = []string{"tokenbroker.session.id"}
	requestAttributes = []string{"rpc.system", "rpc.method", "rpc.jsonrpc.request_id", "tokenbroker.session.id",
		"tokenbroker.provider.name", "tokenbroker.outcome", "tokenbroker.token.remaining_s"}
	refreshAttributes = []string{"tokenbroker.provider.name", "tokenbroker.refresh.reason", "tokenbroker.credential.shared",
		"tokenbroker.refresh.outcome", "tokenbroker.token.lifetime_s"}
)

// TestTracesInJaeger runs tokenload against the simulator with its spans
// exported over OTLP gRPC to a Jaeger of its own, and asks Jaeger's query
// API for them: the slowest turn's trace (by the id tokenload printed)
// links to the token requests of its turn; a turn's cold token request
// has the refresh it caused as its child, and links back to the turn;
// each span has the attributes the README names, and no token value is
// anywhere.
func TestTracesInJaeger(t *testing.T) {
	bin := findJaeger(t)
	testenv.ClearAzure(t)
	j := startJaeger(t, bin)
	for _, v := range []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS"} {
		t.Setenv(v, "")
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", j.otlp)
	t.Setenv("OTEL_METRICS_EXPORTER", "none") // Jaeger takes traces only

	from := time.Now().Add(-time.Minute)
	prefix := filepath.Join(t.TempDir(), "jaeger")
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-sessions", "4", "-concurrency", "4", "-duration", "1500ms",
		"-trace", "otlp-grpc", "-out", prefix}, &stdout, &stderr, false); code != exitOK {
		t.Fatalf("exit %d: %s\n%s", code, stderr.String(), stdout.String())
	}
	if stderr.Len() > 0 && strings.Contains(stderr.String(), "exporting telemetry") {
		t.Errorf("export failed: %s", stderr.String())
	}
	r := report(t, prefix)
	// The slowest finished turn (one the end cut short may have sent no
	// token request yet), as the README says to look it up.
	var slowest string
	for _, s := range r.SlowTurns {
		if !strings.Contains(s.What, "unfinished") {
			slowest = s.TraceID
			break
		}
	}
	if slowest == "" || !strings.Contains(stdout.String(), slowest) {
		t.Fatalf("tokenload printed no slowest turn:\n%s", stdout.String())
	}
	spans := spansOf(t, j.get(t, "/api/v3/traces/"+slowest, hasSpans))
	if len(spans) != 1 || spans[0].Name != spanTurn || spans[0].TraceID != slowest {
		t.Fatalf("trace %s: %+v, want the one turn span", slowest, spans)
	}
	turn := spans[0]
	checkAttributes(t, turn, turnAttributes)
	var toRequests []otlpLink
	for _, l := range turn.Links {
		if attr(l.Attributes, string(linkKind)) == "token request" {
			toRequests = append(toRequests, l)
		}
	}
	if len(toRequests) == 0 {
		t.Fatalf("the slowest turn links to no token request: %+v", turn)
	}
	linked := spansOf(t, j.get(t, "/api/v3/traces/"+toRequests[0].TraceID, hasSpans))
	if req := find(linked, toRequests[0].SpanID); req == nil || req.Name != "providerToken.getToken" ||
		attr(req.Attributes, "tokenbroker.session.id") != attr(turn.Attributes, "tokenbroker.session.id") {
		t.Errorf("the turn's link leads to %+v, want its session's token request", linked)
	}

	// A cold token request: the refresh it caused is its child, and it
	// links to its turn, which links back.
	window := url.Values{"query.service_name": {"tokenload"}, "query.start_time_min": {from.UTC().Format(time.RFC3339Nano)},
		"query.start_time_max": {time.Now().Add(time.Minute).UTC().Format(time.RFC3339Nano)}, "query.num_traces": {"100000"}} // all of them: a quiet machine makes thousands
	search := func(operation string) []byte {
		q := maps.Clone(window)
		if operation != "" {
			q.Set("query.operation_name", operation)
		}
		return j.get(t, "/api/v3/traces?"+q.Encode(), hasSpans)
	}
	refreshTraces := spansOf(t, search("tokenbroker.refresh"))
	var request, refresh *otlpSpan
	for i, s := range refreshTraces {
		if s.Name == "tokenbroker.refresh" && attr(s.Attributes, "tokenbroker.refresh.reason") == "cold" {
			if parent := find(refreshTraces, s.ParentSpanID); parent != nil && parent.TraceID == s.TraceID {
				request, refresh = parent, &refreshTraces[i]
				break
			}
		}
	}
	if request == nil {
		t.Fatalf("no cold refresh with its token request as parent among %d spans", len(refreshTraces))
	}
	t.Logf("token request %s/%s, refresh %s", request.TraceID, request.SpanID, refresh.SpanID)
	checkAttributes(t, *request, requestAttributes)
	checkAttributes(t, *refresh, refreshAttributes)
	if attr(request.Attributes, "tokenbroker.outcome") != "refreshed" || attr(refresh.Attributes, "tokenbroker.refresh.outcome") != "ok" ||
		attr(request.Attributes, "rpc.method") != "providerToken.getToken" {
		t.Errorf("request %+v, refresh %+v", request.Attributes, refresh.Attributes)
	}
	var toTurn *otlpLink
	for i, l := range request.Links {
		if attr(l.Attributes, string(linkKind)) == "turn" {
			toTurn = &request.Links[i]
		}
	}
	if toTurn == nil {
		t.Fatalf("the token request links to no turn: %+v", request.Links)
	}
	turnSpans := spansOf(t, j.get(t, "/api/v3/traces/"+toTurn.TraceID, hasSpans))
	back := find(turnSpans, toTurn.SpanID)
	if back == nil || back.Name != spanTurn {
		t.Fatalf("the link leads to %+v, want a turn", turnSpans)
	}
	linksBack := false
	for _, l := range back.Links {
		linksBack = linksBack || (l.TraceID == request.TraceID && l.SpanID == request.SpanID)
	}
	if !linksBack {
		t.Errorf("the turn %s does not link back to its token request: %+v", back.SpanID, back.Links)
	}

	// Every span of the run: no token value.
	all := search("")
	if len(spansOf(t, all)) < int(r.Requests) {
		t.Errorf("Jaeger holds %d spans, fewer than the run's %d token requests", len(spansOf(t, all)), r.Requests)
	}
	if bytes.Contains(all, []byte(secretMarker)) {
		t.Error("a token value reached Jaeger")
	}

	// The README names what was checked.
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range append(append(append([]string{spanTurn, string(linkKind)}, turnAttributes...), requestAttributes...), refreshAttributes...) {
		if !bytes.Contains(readme, []byte("`"+a+"`")) {
			t.Errorf("README.md does not name `%s`", a)
		}
	}
}

func find(spans []otlpSpan, spanID string) *otlpSpan {
	for i := range spans {
		if spans[i].SpanID == spanID {
			return &spans[i]
		}
	}
	return nil
}

func checkAttributes(t *testing.T, s otlpSpan, keys []string) {
	t.Helper()
	for _, k := range keys {
		if attr(s.Attributes, k) == "" {
			t.Errorf("span %s (%s) lacks %s: %+v", s.Name, s.SpanID, k, s.Attributes)
		}
	}
}
