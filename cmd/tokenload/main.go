// Command tokenload drives a tokenbroker under load and reports what
// happened: N sessions with M bearer-token providers each (on shared or
// per-session credentials), C concurrent requesters or a target rate, for
// a duration. The credential is a fake one with configurable latency,
// lifetime and failure rate, or (-credential identity) azidentity's
// ManagedIdentityCredential against an embedded App Service identity
// endpoint.
//
// Runtimes (-runtime):
//
//	sim      the embedded runtime simulator over an in-memory pipe (default):
//	         each operation is a turn (session.send ... session.idle) in
//	         which the runtime asks for a token and calls a fake model
//	direct   this program plays the runtime and sends token requests itself,
//	         back to back, with no model calls: the broker and transport alone
//	tcp      a runtime listening on -addr (e.g. cmd/runtimesim -listen)
//	copilot  the real Copilot CLI (-cli, $COPILOT_CLI_PATH, or make cli's copy)
//
// Every token request and refresh the broker traces is counted from its
// span, so the numbers are the same whatever drives it; -trace also exports
// the spans (and metrics) to stdout, a file or OTLP, and the report lists
// the slowest requests and turns by trace id. -outage makes the credential
// (or the identity endpoint) fail, hang or slow down during a window;
// -check turns the summary's figures into pass/fail thresholds for CI
// (exit status 3 when one fails). At the end it prints a summary and
// writes <out>.json and <out>.html (charts over time and latency
// histograms, drawn with gonum/plot). Ctrl-C stops early and still reports.
//
//	go run ./cmd/tokenload -sessions 1000 -providers 2 -duration 10s
//	go run ./cmd/tokenload -duration 10s -outage 3s@4s -check 'errors==0'
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/cmd/tokenload/internal/telemetry"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/transport"
)

// Exit statuses.
const (
	exitOK     = 0
	exitError  = 1 // the run could not be done
	exitUsage  = 2
	exitChecks = 3 // the run was done and a -check failed
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills the program the usual way
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, isTerminal(os.Stderr)))
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// config is the parsed command line.
type config struct {
	Args        []string      `json:"args"`
	Runtime     string        `json:"runtime"`
	Addr        string        `json:"addr,omitempty"`
	CLIPath     string        `json:"cli,omitempty"`
	ModelURL    string        `json:"model_url,omitempty"`
	Dialect     string        `json:"dialect,omitempty"` // empty where the runtime decides
	Sessions    int           `json:"sessions"`
	Providers   int           `json:"providers"`
	Shared      bool          `json:"shared_credentials"`
	Concurrency int           `json:"concurrency"`
	Rate        float64       `json:"rate,omitempty"`
	Duration    time.Duration `json:"-"`
	Credential  string        `json:"credential"`
	CredLatency time.Duration `json:"-"`
	Lifetime    time.Duration `json:"-"`
	FailureRate float64       `json:"failure_rate"`
	Interval    time.Duration `json:"-"`
	BackoffMax  time.Duration `json:"-"`
	ReqTimeout  time.Duration `json:"-"`
	Out         string        `json:"out"`
	Trace       string        `json:"trace"`
	Check       string        `json:"check,omitempty"`
	Outage      outage        `json:"outage"`

	target telemetry.Target
	checks []check
	// defaulted lists the flags tokenload chose for this runtime, and why.
	defaulted string
}

// Credentials (-credential).
const (
	credFake     = "fake"
	credIdentity = "identity"
	// identityMinLifetime leaves the broker a token it may serve.
	identityMinLifetime = 2 * time.Minute
)

// loopHelp is the usage text's word on the two ways of driving the load
// and on what catches a stall in each.
const loopHelp = `
Open and closed loop. An operation is a turn, or with -runtime direct a
token request. With -rate R (the open loop) operation k is due at k/R s;
its latency counts from then, whether or not a requester was free to start
it, so a stall shows as latency: operations started over 10ms late are
counted (late), and at the end those running or never started count
(unfinished) and enter the percentiles at their age. Without -rate (the
closed loop) each of -concurrency requesters starts its next operation
when the last one ends, and a stalled requester starts nothing: the
percentiles count the operations running at the end at their age, and
max_age (the oldest one's age) catches a stall: e.g. -check 'max_age<1s'.
`

// errUsage marks errors that deserve the usage text and exit status 2.
var errUsage = errors.New("usage")

// Copilot CLI limits: one CLI process on this kind of machine serves a
// handful of turns at once (Node.js, one event loop); more requesters only
// queue inside it, and the run measures that queue instead of the broker
// (README.md, "The real CLI", has the measurements on 2 cores).
const (
	copilotPerCPU      = 2 // default requesters per CPU
	copilotMaxPerCPU   = 8 // refused above this many per CPU
	copilotMinDuration = 5 * time.Second
)

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{Args: args}
	fs := flag.NewFlagSet("tokenload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var outageSpec string
	fs.StringVar(&cfg.Runtime, "runtime", "sim", "what sends the token requests: sim, direct, tcp or copilot")
	fs.StringVar(&cfg.Addr, "addr", "", "runtime address for -runtime tcp (host:port)")
	fs.StringVar(&cfg.CLIPath, "cli", "", "Copilot CLI binary for -runtime copilot (default $COPILOT_CLI_PATH or make cli's copy)")
	fs.StringVar(&cfg.ModelURL, "model-url", "", "model endpoint the runtime calls (default: a fake one started on 127.0.0.1)")
	fs.StringVar(&cfg.Dialect, "dialect", runtimesim.DefaultDialect.String(), "token request dialect for sim and direct (getToken or acquire); copilot speaks getToken only; a tcp runtime chooses its own")
	fs.IntVar(&cfg.Sessions, "sessions", 100, "number of sessions (copilot: 2 per CPU)")
	fs.IntVar(&cfg.Providers, "providers", 1, "bearer-token providers per session")
	fs.BoolVar(&cfg.Shared, "shared", false, "providers share one credential per provider name across sessions (default: one per session)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 64, "concurrent requesters (copilot: 2 per CPU, at most 8 per CPU)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "target operations per second: the open loop, latency from each operation's slot in the schedule (0: the closed loop, each requester starts its next operation when the last ends)")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to run")
	fs.StringVar(&cfg.Credential, "credential", credFake, "the credential: fake (in process) or identity (azidentity's ManagedIdentityCredential against an embedded App Service identity endpoint)")
	fs.DurationVar(&cfg.CredLatency, "cred-latency", 0, "latency of each credential call (fake credential)")
	fs.DurationVar(&cfg.Lifetime, "lifetime", time.Hour, "lifetime of issued tokens (0: bare, single-use tokens)")
	fs.Float64Var(&cfg.FailureRate, "failure-rate", 0, "fraction of credential calls that fail, 0 to 1 (fake credential)")
	fs.StringVar(&outageSpec, "outage", "", "an outage of the credential (or identity endpoint) of LENGTH from START, e.g. 5s@10s")
	fs.StringVar(&cfg.Outage.Kind, "outage-kind", outageError, "what the credential does in the outage: "+strings.Join(outageKinds, ", "))
	fs.DurationVar(&cfg.Outage.Delay, "outage-delay", time.Second, "extra latency of each credential call in a slow outage")
	fs.BoolVar(&cfg.Outage.Invalidate, "outage-invalidate", true, "drop every cached token when the outage starts, so the broker must call the credential during it")
	fs.DurationVar(&cfg.BackoffMax, "backoff-max", tokens.DefaultPolicy().BackoffMax, "broker: longest wait before retrying a failed credential (tokens.Policy.BackoffMax)")
	fs.DurationVar(&cfg.ReqTimeout, "request-timeout", actors.DefaultRequestTimeout, "broker: longest a token request waits (actors.Options.RequestTimeout)")
	fs.StringVar(&cfg.Check, "check", "", "thresholds, e.g. 'p99<50ms,errors==0,credential_calls<=2,hit_ratio>=0.9' (exit status 3 when one fails)")
	fs.DurationVar(&cfg.Interval, "interval", 0, "time-series interval in the report (default: duration/60, 100ms to 10s)")
	fs.StringVar(&cfg.Out, "out", "tokenload-report", "report path prefix: writes PREFIX.json and PREFIX.html")
	fs.StringVar(&cfg.Trace, "trace", "none", "export spans and metrics: none, stdout, stderr, file:PATH, otlp, otlp-grpc or otlp-http (OTLP endpoint from OTEL_EXPORTER_OTLP_*; OTEL_METRICS_EXPORTER=none for spans only, e.g. to Jaeger)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: tokenload [flags]\n\nDrives a tokenbroker under load and writes a report.\n\n")
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), loopHelp)
		fmt.Fprintf(fs.Output(), "\nFigures for -check (NAME OP VALUE, OP one of < <= > >= == !=):\n")
		for _, f := range figureHelp {
			fmt.Fprintf(fs.Output(), "  %-20s %s\n", f.name, f.what)
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	bad := func(format string, a ...any) (*config, error) {
		err := fmt.Errorf("%w: "+format, append([]any{errUsage}, a...)...)
		fmt.Fprintf(stderr, "tokenload: %s\n", strings.TrimPrefix(err.Error(), "usage: "))
		fs.Usage()
		return nil, err
	}
	if fs.NArg() > 0 {
		return bad("unexpected argument %q", fs.Arg(0))
	}
	if cfg.Dialect != "getToken" && cfg.Dialect != "acquire" {
		return bad("-dialect %q: want getToken or acquire", cfg.Dialect)
	}
	switch cfg.Runtime {
	case "sim", "direct":
	case "copilot":
		if cfg.Dialect != "getToken" {
			return bad("-dialect %s does not apply to -runtime copilot: Copilot CLI 1.0.102 sends providerToken.getToken only", cfg.Dialect)
		}
		if msg := copilotLimits(cfg, set); msg != "" {
			return bad("%s", msg)
		}
	case "tcp":
		if cfg.Addr == "" {
			return bad("-runtime tcp needs -addr")
		}
		if set["dialect"] {
			return bad("-dialect does not apply to -runtime tcp: the runtime at -addr chooses its dialect (e.g. runtimesim -dialect %s), and tokenload answers both", cfg.Dialect)
		}
		cfg.Dialect = ""
	default:
		return bad("-runtime %q: want sim, direct, tcp or copilot", cfg.Runtime)
	}
	switch {
	case cfg.Sessions < 1:
		return bad("-sessions must be at least 1")
	case cfg.Providers < 1:
		return bad("-providers must be at least 1")
	case cfg.Concurrency < 1:
		return bad("-concurrency must be at least 1")
	case cfg.Duration <= 0:
		return bad("-duration must be positive")
	case cfg.Rate < 0:
		return bad("-rate must not be negative")
	case cfg.CredLatency < 0 || cfg.Lifetime < 0 || cfg.Interval < 0 || cfg.Outage.Delay < 0:
		return bad("durations must not be negative")
	case cfg.BackoffMax <= 0 || cfg.ReqTimeout <= 0:
		return bad("-backoff-max and -request-timeout must be positive")
	case cfg.FailureRate < 0 || cfg.FailureRate > 1:
		return bad("-failure-rate must be between 0 and 1")
	case cfg.Out == "":
		return bad("-out must not be empty")
	case cfg.Credential != credFake && cfg.Credential != credIdentity:
		return bad("-credential %q: want %s or %s", cfg.Credential, credFake, credIdentity)
	case cfg.Credential == credIdentity && (set["cred-latency"] || set["failure-rate"]):
		return bad("-cred-latency and -failure-rate apply to the fake credential only; use -outage-kind slow or 500 with -credential identity")
	case cfg.Credential == credIdentity && cfg.Lifetime < identityMinLifetime:
		return bad("-lifetime %s with -credential identity: the endpoint issues expiring tokens, at least %s (the broker serves none with less than 60 s left)", cfg.Lifetime, identityMinLifetime)
	case !slices.Contains(outageKinds, cfg.Outage.Kind):
		return bad("-outage-kind %q: want one of %s", cfg.Outage.Kind, strings.Join(outageKinds, ", "))
	}
	if outageSpec != "" {
		var err error
		if cfg.Outage.Length, cfg.Outage.At, err = parseOutage(outageSpec); err != nil {
			return bad("-outage %v", err)
		}
		if cfg.Outage.At >= cfg.Duration {
			return bad("-outage %s starts after the run ends (-duration %s)", outageSpec, cfg.Duration)
		}
	}
	checks, err := parseChecks(cfg.Check, figures(&result{}))
	if err != nil {
		return bad("-check: %v", err)
	}
	cfg.checks = checks
	target, err := telemetry.ParseTarget(cfg.Trace)
	if err != nil {
		return bad("-trace: %v", err)
	}
	cfg.target = target
	if cfg.Interval == 0 {
		cfg.Interval = min(max(cfg.Duration/60, 100*time.Millisecond), 10*time.Second).Round(100 * time.Millisecond)
	}
	return cfg, nil
}

// copilotLimits fills in the defaults one Copilot CLI can carry, for the
// flags not given, and refuses loads it cannot carry.
func copilotLimits(cfg *config, set map[string]bool) string {
	cpus := runtime.NumCPU()
	var chosen []string
	if !set["concurrency"] {
		cfg.Concurrency = copilotPerCPU * cpus
		chosen = append(chosen, fmt.Sprintf("-concurrency %d", cfg.Concurrency))
	}
	if !set["sessions"] {
		cfg.Sessions = cfg.Concurrency
		chosen = append(chosen, fmt.Sprintf("-sessions %d", cfg.Sessions))
	}
	if chosen != nil {
		cfg.defaulted = fmt.Sprintf("%s: what one Copilot CLI on %d CPUs carries (%d requesters per CPU)", strings.Join(chosen, " "), cpus, copilotPerCPU)
	}
	if limit := copilotMaxPerCPU * cpus; cfg.Concurrency > limit {
		return fmt.Sprintf("-concurrency %d is more than one Copilot CLI on %d CPUs can serve (at most %d): "+
			"its turns would queue inside the CLI for seconds and time out, measuring that queue, not the broker", cfg.Concurrency, cpus, limit)
	}
	if cfg.Duration < copilotMinDuration {
		return fmt.Sprintf("-duration %s is too short for -runtime copilot: a turn of the CLI takes up to a second, use at least %s", cfg.Duration, copilotMinDuration)
	}
	return ""
}

// run is the whole program; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return exitUsage
	}
	res, err := load(ctx, cfg, stdout, stderr, tty)
	if err != nil {
		fmt.Fprintf(stderr, "tokenload: %v\n", err)
		return exitError
	}
	if !res.ChecksPassed {
		return exitChecks
	}
	return exitOK
}

func load(ctx context.Context, cfg *config, stdout, stderr io.Writer, tty bool) (res *result, err error) {
	col := newCollector(cfg.Providers, cfg.Runtime == "direct")
	providers, err := telemetry.New(context.WithoutCancel(ctx), telemetry.Config{
		Target:         cfg.target,
		Metrics:        cfg.target.Kind != telemetry.None,
		ServiceName:    "tokenload",
		SpanProcessors: []sdktrace.SpanProcessor{col},
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		// Flush what was exported, bounded: an unreachable collector must
		// not keep the report from being written.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if serr := providers.Shutdown(sctx); serr != nil {
			fmt.Fprintf(stderr, "tokenload: exporting telemetry: %v\n", serr)
		}
	}()
	policy := tokens.DefaultPolicy()
	policy.BackoffMax = cfg.BackoffMax
	policy.BackoffBase = min(policy.BackoffBase, cfg.BackoffMax)
	broker := actors.NewBroker(actors.Options{TracerProvider: providers.Tracer, MeterProvider: providers.Meter, Policy: &policy, RequestTimeout: cfg.ReqTimeout})
	var creds *credentials
	defer func() {
		if cerr := broker.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if creds != nil {
			creds.close() // once the broker has ended its credential calls
		}
	}()
	creds, err = newCredentials(cfg, broker, col)
	if err != nil {
		return nil, err
	}
	opts := transport.ConnOptions{TracerProvider: providers.Tracer, MeterProvider: providers.Meter}
	var d driver
	if cfg.Runtime == "direct" {
		d = newDirect(context.WithoutCancel(ctx), cfg, broker, creds, opts)
	} else {
		td, err := newTurnDriver(ctx, cfg, broker, creds, opts)
		if err != nil {
			return nil, err
		}
		d = td
	}
	closed := false
	defer func() {
		if !closed {
			_ = d.close()
		}
	}()

	if cfg.defaulted != "" {
		fmt.Fprintf(stderr, "tokenload: %s\n", cfg.defaulted)
	}
	fmt.Fprintf(stderr, "tokenload: %s; opening %d sessions x %d providers (%s credentials)\n", d.label(), cfg.Sessions, cfg.Providers, credKind(cfg))
	if err := d.open(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, errors.New("interrupted while opening sessions")
		}
		return nil, err
	}

	var tracer trace.Tracer
	if cfg.target.Kind != telemetry.None {
		tracer = providers.Tracer.Tracer("tokenload")
	}
	started := time.Now()
	elapsed, interrupted := drive(ctx, cfg, d, col, tracer, stderr, tty)
	closed = true
	if err := d.close(); err != nil {
		fmt.Fprintf(stderr, "tokenload: closing the runtime connection: %v\n", err)
	}

	res = buildResult(cfg, d, col, creds, started, elapsed, interrupted)
	printSummary(stdout, res)
	if err := writeReports(cfg.Out, res); err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "\nreport: %s.json, %s.html\n", cfg.Out, cfg.Out)
	return res, nil
}

func credKind(cfg *config) string {
	if cfg.Shared {
		return "shared"
	}
	return "per-session"
}

// drive runs the requesters until the duration ends or ctx is cancelled,
// and returns how long they ran and whether they were interrupted. With a
// tracer, each operation gets a span of its own, whose trace id the report
// lists for the slowest.
//
// With -rate (the open loop) a dispatcher hands out the schedule's slots
// in order, each at its due time or, when no requester was free then, as
// soon as one is: the ledger counts it late and its latency from its due
// time, and the slots still waiting at the end count unfinished. Without
// (the closed loop) each requester starts its next operation when the
// last one ends.
func drive(ctx context.Context, cfg *config, d driver, col *collector, tracer trace.Tracer, stderr io.Writer, tty bool) (time.Duration, bool) {
	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	col.begin(start, cfg.Interval, cfg.Rate)
	cfg.Outage.begin(start)
	if cfg.Outage.Length > 0 && cfg.Outage.Invalidate {
		t := time.AfterFunc(cfg.Outage.At, d.invalidate)
		defer t.Stop()
	}

	tickDone := make(chan struct{})
	var tickWG sync.WaitGroup
	tickWG.Go(func() {
		series := time.NewTicker(cfg.Interval)
		defer series.Stop()
		var live <-chan time.Time
		if tty {
			t := time.NewTicker(250 * time.Millisecond)
			defer t.Stop()
			live = t.C
		}
		for {
			select {
			case now := <-series.C:
				col.tick(now)
			case now := <-live:
				fmt.Fprint(stderr, "\r\033[K"+progressLine(cfg, col.progress(now), terminalWidth()))
			case <-tickDone:
				return
			}
		}
	})

	var wg sync.WaitGroup
	if cfg.Rate > 0 {
		slots := make(chan uint64)
		wg.Go(func() { dispatch(runCtx, schedule{start: start, rate: cfg.Rate}, slots) })
		for w := range cfg.Concurrency {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case k := <-slots:
						operate(runCtx, d, col, tracer, slot{worker: w, iter: i, global: int(k)}, k)
					case <-runCtx.Done():
						return
					}
				}
			})
		}
	} else {
		var global atomic.Uint64
		for w := range cfg.Concurrency {
			wg.Go(func() {
				for i := 0; runCtx.Err() == nil; i++ {
					k := global.Add(1) - 1
					operate(runCtx, d, col, tracer, slot{worker: w, iter: i, global: int(k)}, k)
				}
			})
		}
	}
	<-runCtx.Done()
	// Finish before the requesters return: the operations the end cuts
	// short are unfinished, not failures.
	end := time.Now()
	col.finish(end)
	wg.Wait()
	close(tickDone)
	tickWG.Wait()
	if tty {
		fmt.Fprint(stderr, "\r\033[K")
	}
	return end.Sub(start), ctx.Err() != nil
}

// dispatch hands out the open loop's slots in order, each no earlier than
// its due time, to whichever requester is free, until ctx ends.
func dispatch(ctx context.Context, sched schedule, slots chan<- uint64) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for k := uint64(0); ; k++ {
		if wait := time.Until(sched.due(k)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		select {
		case slots <- k:
		case <-ctx.Done():
			return
		}
	}
}

// Span names of tokenload's own operations.
const (
	spanTurn    = "tokenload.turn"
	spanRequest = "tokenload.request" // -runtime direct: the broker's span is its child
)

// Attributes of tokenload's own spans.
const (
	attrStartDelay = attribute.Key("tokenload.start_delay_s") // how late it started after its slot (open loop)
	attrUnfinished = attribute.Key("tokenload.unfinished")    // the end of the run cut it short
)

// operate performs operation id of the load loop (its slot, in the open
// loop) and records it in the collector: from its intended start, with a
// span of its own when tracer is set (starting then too, so its duration
// is the latency counted). A turn's span is linked to the token requests
// the runtime sent for its session meanwhile; a direct token request
// carries its span's context to the broker.
func operate(runCtx context.Context, d driver, col *collector, tracer trace.Tracer, s slot, id uint64) {
	started := time.Now()
	intended := col.ops.intended(id, started) // the schedule is set before the requesters start
	session := d.session(s)
	opCtx, span := runCtx, trace.Span(nil)
	var sc trace.SpanContext
	if tracer != nil {
		name, kind := spanTurn, trace.SpanKindInternal
		if !d.turns() {
			name, kind = spanRequest, trace.SpanKindClient
		}
		opCtx, span = tracer.Start(runCtx, name, trace.WithTimestamp(intended), trace.WithSpanKind(kind),
			trace.WithAttributes(tracing.SessionID.String(session)))
		if delay := started.Sub(intended); delay > 0 {
			span.SetAttributes(attrStartDelay.Float64(delay.Seconds()))
		}
		sc = span.SpanContext()
	}
	col.opStart(id, started, session, sc)
	err := d.op(opCtx, s)
	// The end of the run may wake this requester before finish runs: an
	// operation it cut short is unfinished.
	cut := err != nil && runCtx.Err() != nil
	links := col.opEnd(id, time.Now(), err, cut, session, sc)
	if span != nil {
		for _, l := range links {
			span.AddLink(trace.Link{SpanContext: l, Attributes: []attribute.KeyValue{linkKind.String("token request")}})
		}
		if cut {
			span.SetAttributes(attrUnfinished.Bool(true))
		}
		if err != nil {
			span.SetStatus(codes.Error, tokens.Scrub(err.Error()))
		}
		span.End()
	}
}
