// Command runtimesim runs the runtime simulator of sessions/runtimesim.
//
// By default it serves one JSON-RPC connection on stdin/stdout, like
// `copilot --headless --stdio`, and exits when stdin closes. With -listen it
// serves TCP connections on a loopback address until interrupted, printing
// "listening on ADDR" on stdout first.
//
//	runtimesim                  (getToken dialect, like the Copilot CLI)
//	runtimesim -dialect acquire -listen 127.0.0.1:0
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "runtimesim:", err)
		}
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("runtimesim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dialect := fs.String("dialect", runtimesim.DefaultDialect.String(), "token request dialect: acquire or getToken")
	listen := fs.String("listen", "", "serve TCP on this loopback address (e.g. 127.0.0.1:0) instead of stdin/stdout")
	turnRequests := fs.Int("turn-requests", 1, "model requests per turn")
	tokenTimeout := fs.Duration("token-timeout", 60*time.Second, "bound on each token request")
	tokenRetries := fs.Int("token-retries", 0, "retries of a failed token request (the real CLI does 5)")
	retryDelay := fs.Duration("retry-delay", 0, "pause before each retry (the real CLI waits about 1s)")
	verbose := fs.Bool("v", false, "debug logs on stderr (token fingerprints only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := runtimesim.ParseDialect(*dialect)
	if err != nil {
		return err
	}
	opts := runtimesim.Options{
		Dialect:      d,
		TurnRequests: *turnRequests,
		TokenTimeout: *tokenTimeout,
		TokenRetries: *tokenRetries,
		RetryDelay:   *retryDelay,
	}
	if *verbose {
		opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	rt := runtimesim.New(opts)
	if *listen != "" {
		return serveTCP(ctx, rt, *listen, stdout)
	}
	err = rt.Serve(ctx, stdio{stdin, stdout})
	if errors.Is(err, context.Canceled) {
		return nil // interrupted
	}
	return err
}

// stdio joins stdin and stdout into the connection Serve needs.
type stdio struct {
	io.Reader
	io.Writer
}

func (s stdio) Close() error {
	var errs []error
	for _, v := range []any{s.Reader, s.Writer} {
		if c, ok := v.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// serveTCP serves every connection on addr until ctx ends. Only loopback
// addresses are accepted: the simulator hands tokens to whoever connects.
func serveTCP(ctx context.Context, rt *runtimesim.Runtime, addr string, stdout io.Writer) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("-listen %s: only loopback addresses are allowed", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
	return rt.ServeListener(ctx, ln)
}
