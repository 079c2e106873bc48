// Package transport serves a runtime's JSON-RPC connection over any
// io.ReadWriteCloser (a child process's stdio, TCP, net.Pipe): LSP-style
// framing with a size cap, bounded requests in flight, a write timeout, and
// the middleware that answers the runtime's token requests through the
// connection's own actors.Router and hands every other message on.
package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/sourcegraph/jsonrpc2"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/actors"
)

// Defaults of ConnOptions.
const (
	// defaultMaxInFlight: the runtime sends at most one token request per
	// model request per session, so 1024 lets every session of a busy
	// connection wait on a slow credential together, while a runtime that
	// stops reading its replies holds at most 1024 goroutines, about 10 MiB
	// with their stacks (BENCHMARKS.md).
	defaultMaxInFlight = 1024
	// defaultWriteTimeout: a healthy runtime reads its replies within
	// milliseconds; one that has not read for 30 s is stuck.
	defaultWriteTimeout = 30 * time.Second
)

// errWriteTimeout is why a connection ended when the runtime stopped
// reading: a write did not complete within ConnOptions.WriteTimeout.
var errWriteTimeout = errors.New("transport: the runtime did not read what was written to it")

// ConnOptions configure NewConn. The zero value is the broker's logger and
// OpenTelemetry providers with the default limits.
type ConnOptions struct {
	// Logger, TracerProvider and MeterProvider receive the connection's
	// logs, token request spans and metrics. Nil: the broker's.
	Logger         *slog.Logger
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// MaxFrameSize caps one message; a frame announcing more ends the
	// connection before any of it is read. 0: 16 MiB, ample for the
	// runtime's largest messages (events carrying model output).
	MaxFrameSize int
	// MaxInFlight caps the requests being answered at once. At the cap the
	// connection stops reading until one is answered, which pushes back on
	// the runtime instead of failing requests. 0: 1024.
	MaxInFlight int
	// WriteTimeout bounds each write to the runtime; when it passes, the
	// connection ends as if its framing broke. 0: 30 s.
	WriteTimeout time.Duration
}

// Conn is a runtime connection whose token requests are answered from its
// own Router. When the connection ends, for whatever reason, the Router
// closes: its sessions stop and their pending requests fail.
type Conn struct {
	rpc      *jsonrpc2.Conn
	router   *actors.Router
	rwc      *writeBound
	tokens   jsonrpc2.Handler
	next     jsonrpc2.Handler
	slots    chan struct{} // one per request being answered
	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup // request goroutines
	watched  chan struct{}  // closed once the end of the connection is handled
}

// NewConn starts serving rwc: token requests go to a new Router of broker,
// everything else to next.
//
// Requests each run in their own goroutine, at most MaxInFlight at once,
// so a slow credential never stalls the connection and a handler may call
// the runtime back. Notifications are handed to next in arrival order on the
// connection's read loop (a runtime's events must not overtake each other),
// so next must not block on them.
func NewConn(ctx context.Context, broker *actors.Broker, rwc io.ReadWriteCloser, next jsonrpc2.Handler, opts ConnOptions) *Conn {
	if opts.Logger == nil {
		opts.Logger = broker.Logger()
	}
	if opts.TracerProvider == nil {
		opts.TracerProvider = broker.TracerProvider()
	}
	if opts.MeterProvider == nil {
		opts.MeterProvider = broker.MeterProvider()
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = defaultMaxInFlight
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = defaultWriteTimeout
	}
	c := &Conn{router: broker.NewRouter(), next: next, slots: make(chan struct{}, opts.MaxInFlight), watched: make(chan struct{})}
	c.tokens = newTokenHandler(c.router, next, opts)
	c.rwc = boundWrites(rwc, opts.WriteTimeout, opts.Logger)
	stream := jsonrpc2.NewBufferedStream(c.rwc, codec{maxFrameSize: opts.MaxFrameSize, log: opts.Logger})
	// The connection outlives the ctx of the call that made it.
	c.rpc = jsonrpc2.NewConn(context.WithoutCancel(ctx), stream, handlerFunc(c.handle), jsonrpc2.SetLogger(slogAdapter{opts.Logger}))
	go func() {
		defer close(c.watched)
		<-c.rpc.DisconnectNotify()
		c.router.Close()
	}()
	return c
}

// Router returns the connection's session registry.
func (c *Conn) Router() *actors.Router { return c.router }

// Call sends a request to the runtime and waits for its answer, decoded
// into result (nil: ignored), or for ctx to end. A JSON-RPC error reply is
// returned as a *jsonrpc2.Error; once the connection has ended, the error
// is jsonrpc2.ErrClosed or the stream's own.
func (c *Conn) Call(ctx context.Context, method string, params, result any) error {
	return c.rpc.Call(ctx, method, params, result)
}

// handle runs on the read loop, so blocking here for a free slot is what
// stops reading at the cap. ctx ends when the connection is closed; a write
// timeout ends the wait too, so that the read loop finds the stream closed.
func (c *Conn) handle(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request) {
	if _, token := tokenDialect(req.Method); req.Notif && !token {
		if c.next != nil {
			c.next.Handle(ctx, conn, req)
		}
		return
	}
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return
	case <-c.rwc.expired:
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.slots
		return
	}
	c.inflight.Add(1)
	c.mu.Unlock()
	go func() {
		defer func() {
			<-c.slots
			c.inflight.Done()
		}()
		c.tokens.Handle(ctx, conn, req)
	}()
}

// Close closes the connection and returns once its sessions are closed and
// every request it was handling has returned.
func (c *Conn) Close() error {
	err := c.rpc.Close()
	if errors.Is(err, jsonrpc2.ErrClosed) {
		err = nil
	}
	<-c.watched
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.inflight.Wait()
	return err
}

// Done is closed when the connection has ended and its sessions are closed.
func (c *Conn) Done() <-chan struct{} { return c.watched }

// writeBound closes the connection when one write does not complete within
// timeout: a runtime that stops reading would otherwise hold every request
// goroutine, and the memory they hold, forever. One timer serves every write
// (the stream writes one at a time) and works on any ReadWriteCloser, with
// or without deadlines: closing is what unblocks the write.
type writeBound struct {
	io.ReadWriteCloser
	timeout time.Duration
	timer   *time.Timer
	expired chan struct{} // closed when a write overran
	once    sync.Once
	log     *slog.Logger
}

func boundWrites(rwc io.ReadWriteCloser, timeout time.Duration, log *slog.Logger) *writeBound {
	w := &writeBound{ReadWriteCloser: rwc, timeout: timeout, expired: make(chan struct{}), log: log}
	w.timer = time.AfterFunc(timeout, w.expire)
	w.timer.Stop()
	return w
}

func (w *writeBound) Write(p []byte) (int, error) {
	select {
	case <-w.expired:
		return 0, errWriteTimeout
	default:
	}
	w.timer.Reset(w.timeout)
	n, err := w.ReadWriteCloser.Write(p)
	if !w.timer.Stop() {
		return n, fmt.Errorf("%w within %s", errWriteTimeout, w.timeout)
	}
	return n, err
}

// expire may race with a write that completed just in time, and with the
// next write's timer; the connection ends once.
func (w *writeBound) expire() {
	w.once.Do(func() {
		w.log.Warn("tokenbroker: closing the runtime connection", "error", errWriteTimeout.Error(), "timeout", w.timeout)
		close(w.expired)
		_ = w.ReadWriteCloser.Close()
	})
}

// handlerFunc adapts a function to jsonrpc2.Handler.
type handlerFunc func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request)

func (f handlerFunc) Handle(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request) {
	f(ctx, conn, req)
}

// slogAdapter routes jsonrpc2's Printf logging to slog at debug level.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Printf(format string, v ...any) {
	a.l.Debug(fmt.Sprintf(format, v...), "lib", "jsonrpc2")
}
