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
	"sync"

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

	tokens   jsonrpc2.Handler
	next     jsonrpc2.Handler
	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup // request goroutines
	watched  chan struct{}  // closed once the end of the connection is handled
}

// NewConn starts serving rwc: token requests go to a new Router of broker,
// everything else to next.
//
// Requests each run in their own goroutine, so a slow credential never
// stalls the connection and a handler may call the runtime back.
// Notifications are handed to next in arrival order on the connection's
// read loop (a runtime's events must not overtake each other), so next must
// not block on them.
func NewConn(ctx context.Context, broker *actors.Broker, rwc io.ReadWriteCloser, next jsonrpc2.Handler, opts ConnOptions) *Conn {
	if opts.Logger == nil {
		opts.Logger = broker.Logger()
	}
	c := &Conn{Router: broker.NewRouter(), next: next, watched: make(chan struct{})}
	c.tokens = TokenHandler(c.Router, next, opts.Options)
	stream := NewStream(rwc, Codec{MaxFrameSize: opts.MaxFrameSize, Logger: opts.Logger})
	// The connection outlives the ctx of the call that made it.
	c.Conn = jsonrpc2.NewConn(context.WithoutCancel(ctx), stream, HandlerFunc(c.handle), jsonrpc2.SetLogger(slogAdapter{opts.Logger}))
	go func() {
		defer close(c.watched)
		<-c.Conn.DisconnectNotify()
		c.Router.Close()
	}()
	return c
}

func (c *Conn) handle(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request) {
	if req.Notif && req.Method != MethodAcquire && req.Method != MethodGetToken {
		if c.next != nil {
			c.next.Handle(ctx, conn, req)
		}
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.inflight.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.inflight.Done()
		c.tokens.Handle(ctx, conn, req)
	}()
}

// Close closes the connection and returns once its sessions are closed and
// every request it was handling has returned.
func (c *Conn) Close() error {
	err := c.Conn.Close()
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

// HandlerFunc adapts a function to jsonrpc2.Handler, as http.HandlerFunc
// does for net/http.
type HandlerFunc func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request) {
	f(ctx, conn, req)
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
