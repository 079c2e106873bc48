// Package transport carries the runtime's JSON-RPC connection: framing with
// a size cap, connections over a child process's stdio, TCP and an
// in-memory pipe, and the middleware that answers token requests through a
// per-connection actors.Router and hands every other message on.
package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"sync"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/actors"
)

// ConnOptions configure NewConn.
type ConnOptions struct {
	Options
	MaxFrameSize int // 0: DefaultMaxFrameSize
}

// Conn is a runtime connection whose token requests are answered from its
// own Router. When the connection ends, for whatever reason, the Router
// closes: its sessions stop and their pending requests fail.
type Conn struct {
	*jsonrpc2.Conn
	Router *actors.Router
}

// NewConn starts serving rwc: token requests go to a new Router of broker,
// everything else to next, each request in its own goroutine.
func NewConn(ctx context.Context, broker *actors.Broker, rwc io.ReadWriteCloser, next jsonrpc2.Handler, opts ConnOptions) *Conn {
	if opts.Logger == nil {
		opts.Logger = broker.Logger()
	}
	router := broker.NewRouter()
	h := jsonrpc2.AsyncHandler(TokenHandler(router, next, opts.Options))
	stream := NewStream(rwc, Codec{MaxFrameSize: opts.MaxFrameSize, Logger: opts.Logger})
	c := jsonrpc2.NewConn(ctx, stream, h, jsonrpc2.SetLogger(slogAdapter{opts.Logger}))
	go func() {
		<-c.DisconnectNotify()
		router.Close()
	}()
	return &Conn{Conn: c, Router: router}
}

// slogAdapter routes jsonrpc2's Printf logging to slog at debug level.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Printf(format string, v ...any) {
	a.l.Debug(fmt.Sprintf(format, v...), "lib", "jsonrpc2")
}

// Pipe returns the two ends of an in-memory, synchronous connection.
func Pipe() (client, runtime io.ReadWriteCloser) {
	return net.Pipe()
}

// Dial connects to a runtime listening on addr over TCP.
func Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// Process is a runtime started as a child process, spoken to over its
// stdin and stdout.
type Process struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout io.ReadCloser
	done   chan struct{}
	err    error
	once   sync.Once
	grace  time.Duration
}

// DefaultStopGrace is how long Close waits for the child to exit after its
// stdin closes before killing it.
const DefaultStopGrace = 5 * time.Second

// Start starts cmd with pipes on its stdin and stdout. The command must not
// have Stdin or Stdout set. Close ends it.
func Start(cmd *exec.Cmd) (*Process, error) {
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, stdin: stdin, stdout: stdout, done: make(chan struct{}), grace: DefaultStopGrace}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *Process) Read(b []byte) (int, error)  { return p.stdout.Read(b) }
func (p *Process) Write(b []byte) (int, error) { return p.stdin.Write(b) }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Close closes the child's stdin, which tells a runtime to exit, waits up
// to DefaultStopGrace, then kills that process (and only it).
func (p *Process) Close() error {
	p.once.Do(func() {
		_ = p.stdin.Close()
		t := time.NewTimer(p.grace)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	var exit *exec.ExitError
	if p.err != nil && !errors.As(p.err, &exit) {
		return p.err
	}
	return nil
}
