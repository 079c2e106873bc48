// Command tokenload drives a tokenbroker under load and reports what
// happened: N sessions with M bearer-token providers each (on shared or
// per-session credentials with configurable latency, lifetime and failure
// rate), C concurrent requesters or a target rate, for a duration.
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
// the spans (and metrics) to stdout, a file or OTLP. At the end it prints a
// summary and writes <out>.json and <out>.html (an inline SVG chart of
// throughput and latency over time). Ctrl-C stops early and still reports.
//
//	go run ./cmd/tokenload -sessions 1000 -providers 2 -duration 10s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tracing/export"
	"github.com/tokenbroker/tokenbroker/transport"
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
	Runtime     string        `json:"runtime"`
	Addr        string        `json:"addr,omitempty"`
	CLIPath     string        `json:"cli,omitempty"`
	ModelURL    string        `json:"model_url,omitempty"`
	Dialect     string        `json:"dialect"`
	Sessions    int           `json:"sessions"`
	Providers   int           `json:"providers"`
	Shared      bool          `json:"shared_credentials"`
	Concurrency int           `json:"concurrency"`
	Rate        float64       `json:"rate,omitempty"`
	Duration    time.Duration `json:"-"`
	CredLatency time.Duration `json:"-"`
	Lifetime    time.Duration `json:"-"`
	FailureRate float64       `json:"failure_rate"`
	Interval    time.Duration `json:"-"`
	Out         string        `json:"out"`
	Trace       string        `json:"trace"`

	target export.Target
}

// errUsage marks errors that deserve the usage text and exit status 2.
var errUsage = errors.New("usage")

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("tokenload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Runtime, "runtime", "sim", "what sends the token requests: sim, direct, tcp or copilot")
	fs.StringVar(&cfg.Addr, "addr", "", "runtime address for -runtime tcp (host:port)")
	fs.StringVar(&cfg.CLIPath, "cli", "", "Copilot CLI binary for -runtime copilot (default $COPILOT_CLI_PATH or make cli's copy)")
	fs.StringVar(&cfg.ModelURL, "model-url", "", "model endpoint the runtime calls (default: a fake one started on 127.0.0.1)")
	fs.StringVar(&cfg.Dialect, "dialect", "getToken", "token request dialect for sim and direct: getToken or acquire")
	fs.IntVar(&cfg.Sessions, "sessions", 100, "number of sessions")
	fs.IntVar(&cfg.Providers, "providers", 1, "bearer-token providers per session")
	fs.BoolVar(&cfg.Shared, "shared", false, "providers share one credential per provider name across sessions (default: one per session)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 64, "concurrent requesters")
	fs.Float64Var(&cfg.Rate, "rate", 0, "target operations per second (0: as fast as the requesters go)")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to run")
	fs.DurationVar(&cfg.CredLatency, "cred-latency", 0, "latency of each credential call")
	fs.DurationVar(&cfg.Lifetime, "lifetime", time.Hour, "lifetime of issued tokens (0: bare, single-use tokens)")
	fs.Float64Var(&cfg.FailureRate, "failure-rate", 0, "fraction of credential calls that fail, 0 to 1")
	fs.DurationVar(&cfg.Interval, "interval", 0, "time-series interval in the report (default: duration/60, 100ms to 10s)")
	fs.StringVar(&cfg.Out, "out", "tokenload-report", "report path prefix: writes PREFIX.json and PREFIX.html")
	fs.StringVar(&cfg.Trace, "trace", "none", "export spans and metrics: none, stdout, stderr, file:PATH, otlp, otlp-grpc or otlp-http (OTLP endpoint from OTEL_EXPORTER_OTLP_*)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: tokenload [flags]\n\nDrives a tokenbroker under load and writes a report.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	bad := func(format string, a ...any) (*config, error) {
		err := fmt.Errorf("%w: "+format, append([]any{errUsage}, a...)...)
		fmt.Fprintf(stderr, "tokenload: %s\n", strings.TrimPrefix(err.Error(), "usage: "))
		fs.Usage()
		return nil, err
	}
	if fs.NArg() > 0 {
		return bad("unexpected argument %q", fs.Arg(0))
	}
	switch cfg.Runtime {
	case "sim", "direct", "copilot":
	case "tcp":
		if cfg.Addr == "" {
			return bad("-runtime tcp needs -addr")
		}
	default:
		return bad("-runtime %q: want sim, direct, tcp or copilot", cfg.Runtime)
	}
	if cfg.Dialect != "getToken" && cfg.Dialect != "acquire" {
		return bad("-dialect %q: want getToken or acquire", cfg.Dialect)
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
	case cfg.CredLatency < 0 || cfg.Lifetime < 0 || cfg.Interval < 0:
		return bad("durations must not be negative")
	case cfg.FailureRate < 0 || cfg.FailureRate > 1:
		return bad("-failure-rate must be between 0 and 1")
	case cfg.Out == "":
		return bad("-out must not be empty")
	}
	target, err := export.ParseTarget(cfg.Trace)
	if err != nil {
		return bad("-trace: %v", err)
	}
	cfg.target = target
	if cfg.Interval == 0 {
		cfg.Interval = min(max(cfg.Duration/60, 100*time.Millisecond), 10*time.Second).Round(100 * time.Millisecond)
	}
	return cfg, nil
}

// run is the whole program; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	if err := load(ctx, cfg, stdout, stderr, tty); err != nil {
		fmt.Fprintf(stderr, "tokenload: %v\n", err)
		return 1
	}
	return 0
}

func load(ctx context.Context, cfg *config, stdout, stderr io.Writer, tty bool) (err error) {
	col := newCollector()
	providers, err := export.New(context.WithoutCancel(ctx), export.Config{
		Target:         cfg.target,
		Metrics:        cfg.target.Kind != export.None,
		ServiceName:    "tokenload",
		SpanProcessors: []sdktrace.SpanProcessor{col},
	})
	if err != nil {
		return err
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
	broker := actors.NewBroker(actors.Options{TracerProvider: providers.Tracer, MeterProvider: providers.Meter})
	defer func() {
		if cerr := broker.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	creds, err := newCredentials(cfg, broker)
	if err != nil {
		return err
	}
	opts := transport.ConnOptions{Options: transport.Options{TracerProvider: providers.Tracer, MeterProvider: providers.Meter}}
	var d driver
	if cfg.Runtime == "direct" {
		d = newDirect(context.WithoutCancel(ctx), cfg, broker, creds, opts)
	} else {
		td, err := newTurnDriver(ctx, cfg, broker, creds, opts)
		if err != nil {
			return err
		}
		d = td
	}
	closed := false
	defer func() {
		if !closed {
			_ = d.close()
		}
	}()

	fmt.Fprintf(stderr, "tokenload: %s; opening %d sessions x %d providers (%s credentials)\n", d.label(), cfg.Sessions, cfg.Providers, credKind(cfg))
	if err := d.open(ctx); err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted while opening sessions")
		}
		return err
	}

	started := time.Now()
	elapsed, interrupted := drive(ctx, cfg, d, col, stderr, tty)
	closed = true
	if err := d.close(); err != nil {
		fmt.Fprintf(stderr, "tokenload: closing the runtime connection: %v\n", err)
	}
	col.tick(time.Now())

	res := buildResult(cfg, d, col, creds, started, elapsed, interrupted)
	printSummary(stdout, res)
	if err := writeReports(cfg.Out, res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nreport: %s.json, %s.html\n", cfg.Out, cfg.Out)
	return nil
}

func credKind(cfg *config) string {
	if cfg.Shared {
		return "shared"
	}
	return "per-session"
}

// drive runs the requesters until the duration ends or ctx is cancelled,
// and returns how long they ran and whether they were interrupted.
func drive(ctx context.Context, cfg *config, d driver, col *collector, stderr io.Writer, tty bool) (time.Duration, bool) {
	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	col.begin(start)

	tickDone := make(chan struct{})
	var tickWG sync.WaitGroup
	tickWG.Add(1)
	go func() {
		defer tickWG.Done()
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
				printProgress(stderr, cfg, col.progress(now))
			case <-tickDone:
				return
			}
		}
	}()

	var global atomic.Int64
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; runCtx.Err() == nil; i++ {
				k := global.Add(1) - 1
				t0 := time.Now()
				if cfg.Rate > 0 {
					// Open loop: the operation is due at its slot in the
					// schedule, and its latency counts from then, so a
					// stalled broker shows up as latency, not as fewer
					// samples.
					due := start.Add(time.Duration(float64(k) / cfg.Rate * float64(time.Second)))
					if wait := time.Until(due); wait > 0 {
						t := time.NewTimer(wait)
						select {
						case <-t.C:
						case <-runCtx.Done():
							t.Stop()
							return
						}
					}
					t0 = due
				}
				err := d.op(runCtx, slot{worker: w, iter: i, global: int(k)})
				if err != nil && runCtx.Err() != nil {
					return // cut short by the end of the run, not a failure
				}
				col.client(time.Since(t0), err)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(tickDone)
	tickWG.Wait()
	if tty {
		fmt.Fprint(stderr, "\r\033[K")
	}
	return elapsed, ctx.Err() != nil
}

func printProgress(w io.Writer, cfg *config, p progress) {
	fmt.Fprintf(w, "\r\033[K%5.1fs/%s  %d token requests  %.0f/s  p50 %s  p99 %s  errors %d",
		p.elapsed.Seconds(), cfg.Duration, p.requests, p.rate, fmtDur(p.p50), fmtDur(p.p99), p.errors)
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}
