package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions/client/internal/process"
)

// defaultStartTimeout bounds Start when its ctx has no deadline. The CLI's
// first start on a machine unpacks its package (~235 MB) first.
const defaultStartTimeout = time.Minute

// exitWait is how long a failed start waits for a runtime that closed the
// connection to exit, so that the error can say how it ended.
const exitWait = time.Second

// Start spawns the Copilot CLI as a child process speaking on its stdio,
// connects to it and performs the connect handshake, all within ctx (a
// minute when ctx has no deadline). ctx bounds the start only; the process
// lives until Close or its own exit, which ends the connection. The
// runtime's environment is an allowlist (see Options.Env).
//
// An error names the binary and, when the process exited (ErrExited), its
// exit status or signal; it quotes the last lines of its stderr.
func Start(ctx context.Context, broker *actors.Broker, opts Options) (*Client, error) {
	path := opts.CLIPath
	if path == "" {
		path = os.Getenv("COPILOT_CLI_PATH")
	}
	if path == "" {
		return nil, ErrNoCLI
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}
	home, ownHome := opts.Home, false
	if home == "" {
		var err error
		if home, err = os.MkdirTemp("", "copilot-home-"); err != nil {
			return nil, fmt.Errorf("client: creating the runtime's home: %w", err)
		}
		ownHome = true
	}
	args := opts.Args
	if args == nil {
		args = DefaultCLIArgs()
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = opts.Dir
	cmd.Env = runtimeEnv(os.Environ(), home, opts)
	cmd.Stderr = opts.Stderr
	grace := opts.StopGrace
	if grace <= 0 {
		grace = defaultStopGrace
	}
	proc, err := process.Start(cmd, grace)
	if err != nil {
		if ownHome {
			_ = os.RemoveAll(home)
		}
		return nil, fmt.Errorf("client: starting %s: %w", path, err)
	}
	c := newClient(ctx, broker, proc, opts)
	c.proc, c.home, c.ownHome = proc, home, ownHome
	if err := c.handshake(ctx); err != nil {
		return nil, c.failStart(ctx, path, err)
	}
	return c, nil
}

// failStart stops a runtime whose handshake failed, at once (it has
// nothing to save), and explains why it failed: how the process ended and
// what it wrote to stderr, rather than the pipe error the handshake saw.
func (c *Client) failStart(ctx context.Context, path string, err error) error {
	if ctx.Err() == nil {
		// The connection ended first: the process is probably exiting.
		t := time.NewTimer(exitWait)
		select {
		case <-c.proc.Done():
		case <-t.C:
		}
		t.Stop()
	}
	exitErr := c.exited()
	_ = c.proc.Kill()
	_ = c.Close()
	var stopped *process.ExitError
	errors.As(c.proc.Err(), &stopped) // always an *ExitError once killed
	switch {
	case exitErr != nil:
		return fmt.Errorf("client: starting %s: %w before answering connect", path, exitErr)
	case ctx.Err() != nil:
		return fmt.Errorf("client: starting %s: no answer to connect: %w%s", path, ctx.Err(), stderrNote(stopped))
	}
	var rpcErr *callError
	if errors.As(err, &rpcErr) {
		return fmt.Errorf("client: starting %s: %w%s", path, err, stderrNote(stopped))
	}
	return fmt.Errorf("client: starting %s: the connection ended before connect was answered (not a JSON-RPC runtime on stdio?)%s", path, stderrNote(stopped))
}

func stderrNote(e *process.ExitError) string {
	if e == nil || e.Stderr == "" {
		return ""
	}
	return "; stderr: " + e.Stderr
}

// closedErr is ErrClosed, saying how the runtime process ended if it did.
func (c *Client) closedErr() error {
	if err := c.exited(); err != nil {
		return fmt.Errorf("%w: runtime connection ended: %w", ErrClosed, err)
	}
	return ErrClosed
}

// exited is how the runtime process ended, nil while it runs or when the
// client did not start it.
func (c *Client) exited() error {
	if c.proc == nil {
		return nil
	}
	return c.proc.Err()
}
