// Command quickstart shows tokenbroker end to end, offline: a runtime (the
// embedded simulator by default, or the real Copilot CLI with -runtime
// copilot) asks for a bearer token before each model request, the broker
// answers from per-provider callbacks and their caches, and a fake model
// endpoint on 127.0.0.1 shows which token reached it. Tokens are printed as
// fingerprints only.
//
//	go run ./examples/quickstart
//	go run ./examples/quickstart -dialect getToken
//	go run ./examples/quickstart -runtime copilot   # needs COPILOT_CLI_PATH or `make cli`
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/copilotcli"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/tracing/export"
	"github.com/tokenbroker/tokenbroker/transport"
)

func main() {
	runtimeFlag := flag.String("runtime", "simulator", "runtime to drive: simulator or copilot")
	dialect := flag.String("dialect", "acquire", "simulator dialect: acquire (published design) or getToken (Copilot CLI 1.0.102)")
	turns := flag.Int("turns", 3, "turns per session")
	showTrace := flag.Bool("trace", false, "print the whole trace as an indented tree at the end")
	flag.Parse()
	if *turns < 1 {
		fmt.Fprintln(os.Stderr, "quickstart: -turns must be at least 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout, *runtimeFlag, *dialect, *turns, *showTrace); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer, runtimeName, dialectName string, turns int, showTrace bool) error {
	p := &printer{w: out}

	model, err := fakemodel.Start(fakemodel.Options{PathPrefix: "/v1", Reply: func(r fakemodel.Request) string {
		p.printf("    model request   POST %s  Authorization: Bearer %s\n", r.Path, tokens.Fingerprint(r.BearerToken()))
		return "Hello from the fake model"
	}})
	if err != nil {
		return err
	}
	defer model.Close()

	// Every token request ends a span; printing them as they end shows how
	// each one was served. -trace also prints the whole trace at the end.
	spans := &spanPrinter{p: p, ended: make(chan struct{}, 1)}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithSpanProcessor(spans)}
	var tree *export.TreePrinter
	if showTrace {
		tree = export.NewTreePrinter()
		opts = append(opts, sdktrace.WithSpanProcessor(tree))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	defer tp.Shutdown(context.Background())

	broker := actors.NewBroker(actors.Options{TracerProvider: tp})
	defer broker.Close()

	client, label, err := connect(ctx, broker, runtimeName, dialectName, tp)
	if err != nil {
		return err
	}
	defer client.Close()
	p.printf("tokenbroker quickstart\n  runtime         %s\n  model endpoint  %s\n", label, model.URL())

	creds := newCredentials(p)
	named := []sessions.NamedProviderConfig{
		{Name: "mi", ProviderConfig: sessions.ProviderConfig{
			Type: "openai", BaseURL: model.URL(),
			BearerTokenSource: creds.expiring("mi", time.Hour),
			BearerTokenScope:  "https://cognitiveservices.azure.com/.default",
		}},
		{Name: "oauth", ProviderConfig: sessions.ProviderConfig{
			Type: "openai", BaseURL: model.URL(),
			BearerTokenSource: creds.bare("oauth"),
		}},
	}
	models := []sessions.ModelConfig{
		{ID: "default", Provider: "mi", WireModel: "gpt-4o"},
		{ID: "mini", Provider: "oauth", WireModel: "gpt-4o-mini"},
	}
	plan := []struct {
		title string
		cfg   sessions.SessionConfig
	}{
		{"whole-session provider (asked for as \"default\"), tokens valid 1h", sessions.SessionConfig{
			SessionID: "tenant-a-" + shortID(), Model: "gpt-4o",
			Provider: &sessions.ProviderConfig{Type: "openai", BaseURL: model.URL(), BearerTokenSource: creds.expiring("default", time.Hour)},
		}},
		{"named providers; model mi/default (scoped, tokens valid 1h)", sessions.SessionConfig{
			SessionID: "tenant-b-" + shortID(), Model: "mi/default", Models: models, Providers: named,
		}},
		{"named providers; model oauth/mini (bare single-use tokens)", sessions.SessionConfig{
			SessionID: "tenant-c-" + shortID(), Model: "oauth/mini", Models: models, Providers: named,
		}},
	}
	for _, step := range plan {
		s, err := client.CreateSession(ctx, step.cfg)
		if err != nil {
			return fmt.Errorf("creating session: %w", err)
		}
		p.printf("\nsession %s: %s\n", s.ID(), step.title)
		for i := 1; i <= turns; i++ {
			p.printf("  turn %d\n", i)
			before := spans.total()
			answer, err := s.SendAndWait(ctx, fmt.Sprintf("Say hello (turn %d)", i))
			if err != nil {
				return fmt.Errorf("session %s turn %d: %w", s.ID(), i, err)
			}
			// The connection ends a request's span after sending its reply,
			// so the turn can be over before the span is.
			spans.settle(ctx)
			if spans.total() == before {
				p.printf("    token request   none: the runtime reused the token it cached until its expiresOnTimestamp\n")
			}
			p.printf("    answer          %q\n", answer)
		}
		if err := s.Destroy(ctx); err != nil {
			return fmt.Errorf("destroying session %s: %w", s.ID(), err)
		}
	}

	p.printf("\nsummary\n")
	p.printf("  %-8s %-17s %s\n", "provider", "credential calls", "token requests by outcome")
	for _, name := range []string{"default", "mi", "oauth"} {
		p.printf("  %-8s %-17d %s\n", name, creds.calls(name), spans.outcomes(name))
	}
	seen := map[string]bool{}
	for _, r := range model.Requests() {
		if r.BearerToken() == "" {
			return errors.New("a model request arrived without a bearer token")
		}
		seen[tokens.Fingerprint(r.BearerToken())] = true
	}
	p.printf("  model requests %d, all with a bearer token; %d distinct tokens seen\n", model.Count(), len(seen))
	if tree != nil {
		p.printf("\ntrace\n")
		p.mu.Lock()
		_, err := tree.WriteTo(p.w)
		p.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// connect starts the runtime and the client that drives it.
func connect(ctx context.Context, broker *actors.Broker, runtimeName, dialectName string, tp *sdktrace.TracerProvider) (*client.Client, string, error) {
	opts := client.Options{Conn: transport.ConnOptions{TracerProvider: tp}}
	switch runtimeName {
	case "simulator":
		d, err := runtimesim.ParseDialect(dialectName)
		if err != nil {
			return nil, "", err
		}
		clientEnd, runtimeEnd := net.Pipe()
		sim := runtimesim.New(runtimesim.Options{Dialect: d})
		go sim.Serve(context.WithoutCancel(ctx), runtimeEnd) // ends when the client closes its end
		c, err := client.Connect(ctx, broker, clientEnd, opts)
		return c, fmt.Sprintf("embedded simulator (%s dialect)", d), err
	case "copilot":
		path, err := copilotcli.Find()
		if err != nil {
			return nil, "", fmt.Errorf("no Copilot CLI (%w): run `make cli` or set COPILOT_CLI_PATH", err)
		}
		opts.CLIPath = path
		c, err := client.Start(ctx, broker, opts)
		if err != nil {
			return nil, "", err
		}
		return c, fmt.Sprintf("Copilot CLI %s (getToken dialect), pid %d", c.Info().Version, c.Pid()), nil
	}
	return nil, "", fmt.Errorf("unknown -runtime %q: want simulator or copilot", runtimeName)
}

// credentials are the service-side callbacks: stand-ins for a managed
// identity or an OAuth2 client, issuing random tokens and counting calls.
type credentials struct {
	p *printer
	n sync.Map // provider name -> *atomic.Int64
}

func newCredentials(p *printer) *credentials { return &credentials{p: p} }

func (c *credentials) counter(name string) *atomic.Int64 {
	v, _ := c.n.LoadOrStore(name, new(atomic.Int64))
	return v.(*atomic.Int64)
}

func (c *credentials) calls(name string) int64 { return c.counter(name).Load() }

func (c *credentials) expiring(name string, life time.Duration) tokens.Source {
	return tokens.Func(func(ctx context.Context, req tokens.Request) (tokens.Token, error) {
		c.counter(name).Add(1)
		tok := tokens.Token{Value: randomToken(), ExpiresOn: time.Now().Add(life)}
		c.p.printf("    credential      %-8s called (scope %q) -> issued %s, valid %s\n", req.ProviderName, req.Scope, tokens.Fingerprint(tok.Value), life)
		return tok, nil
	})
}

func (c *credentials) bare(name string) tokens.Source {
	return tokens.BareFunc(func(ctx context.Context, req tokens.Request) (string, error) {
		c.counter(name).Add(1)
		v := randomToken()
		c.p.printf("    credential      %-8s called -> issued %s, single use\n", req.ProviderName, tokens.Fingerprint(v))
		return v, nil
	})
}

func randomToken() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "qs-" + hex.EncodeToString(b[:])
}

func shortID() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// printer serialises output from the callbacks, the span processor and
// the model endpoint, which run on different goroutines.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}

// spanPrinter prints each token request span as it ends and counts
// outcomes per provider.
type spanPrinter struct {
	p       *printer
	mu      sync.Mutex
	n       map[string]map[string]int
	all     int
	started int
	ended   chan struct{} // a token request span ended; for settle
}

func (s *spanPrinter) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.all
}

// settle waits until every token request span started has ended, or ctx
// does.
func (s *spanPrinter) settle(ctx context.Context) {
	for {
		s.mu.Lock()
		done := s.all == s.started
		s.mu.Unlock()
		if done {
			return
		}
		select {
		case <-s.ended:
		case <-ctx.Done():
			return
		}
	}
}

func isTokenRequest(span sdktrace.ReadOnlySpan) bool {
	return span.Name() == transport.MethodAcquire || span.Name() == transport.MethodGetToken
}

func (s *spanPrinter) OnStart(_ context.Context, span sdktrace.ReadWriteSpan) {
	if isTokenRequest(span) {
		s.mu.Lock()
		s.started++
		s.mu.Unlock()
	}
}
func (s *spanPrinter) Shutdown(context.Context) error   { return nil }
func (s *spanPrinter) ForceFlush(context.Context) error { return nil }

func (s *spanPrinter) OnEnd(span sdktrace.ReadOnlySpan) {
	if !isTokenRequest(span) {
		return
	}
	attrs := map[attribute.Key]attribute.Value{}
	for _, kv := range span.Attributes() {
		attrs[kv.Key] = kv.Value
	}
	provider := attrs[tracing.ProviderName].AsString()
	outcome := attrs[tracing.Outcome].AsString()
	detail := map[string]string{
		"hit":       "served from cache",
		"refreshed": "cache empty or stale: credential called",
		"coalesced": "joined a refresh in progress",
		"bare":      "single-use token: credential called",
	}[outcome]
	if v, ok := attrs[tracing.RemainingSeconds]; ok {
		detail += fmt.Sprintf(", %s left", (time.Duration(v.AsFloat64()) * time.Second).Round(time.Second))
	}
	if outcome == "error" {
		detail = span.Status().Description
	}
	s.p.printf("    token request   %-22s %-8s -> %s (%s)\n", span.Name(), provider, outcome, detail)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[string]map[string]int{}
	}
	if s.n[provider] == nil {
		s.n[provider] = map[string]int{}
	}
	s.n[provider][outcome]++
	s.all++
	select {
	case s.ended <- struct{}{}:
	default: // settle has a wake-up pending already
	}
}

func (s *spanPrinter) outcomes(provider string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for o, n := range s.n[provider] {
		parts = append(parts, fmt.Sprintf("%s %d", o, n))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
