// Package client drives a Copilot runtime over one JSON-RPC connection: it
// spawns the Copilot CLI (Start) or connects to a runtime already listening
// (Connect), creates and resumes sessions whose BYOK providers take their
// tokens from sources on this side, and answers the runtime's token
// requests for them on the same connection.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client/internal/process"
	"github.com/tokenbroker/tokenbroker/transport"
)

// DefaultCLIArgs are the arguments that start the Copilot CLI as a headless
// runtime on its stdio, never updating itself or looking for a GitHub
// login: BYOK sessions need none. Each call returns a new slice.
func DefaultCLIArgs() []string {
	return []string{"--headless", "--no-auto-update", "--stdio", "--no-auto-login"}
}

// Defaults of Options.
const (
	defaultEventBuffer = 64              // unread events a session keeps
	defaultStopGrace   = 5 * time.Second // a runtime's time to exit after its stdin closes
)

// Options configure Start and Connect. The zero value works for
// Connect; Start needs a CLI path here or in COPILOT_CLI_PATH.
type Options struct {
	// CLIPath is the copilot binary. Empty: $COPILOT_CLI_PATH.
	CLIPath string
	// Args replace DefaultCLIArgs.
	Args []string
	// Home is the runtime's HOME and COPILOT_HOME (its config and session
	// state; resuming a session needs the home it was created in). Empty: a
	// fresh temporary directory, removed by Close. A HOME of its own keeps
	// the runtime from finding, by default, what tools keep under the
	// service's HOME (a cloud CLI's token cache); the CLI's package cache
	// stays shared through XDG_CACHE_HOME.
	Home string
	// Dir is the runtime's working directory. Empty: this process's.
	Dir string
	// Env is added last to the runtime's environment, and wins. Before it
	// come this process's variables named by RuntimeEnv or InheritEnv, then
	// HOME and COPILOT_HOME set to Home (HOME only when InheritEnv does not
	// pass this process's), and XDG_CACHE_HOME set to this process's cache
	// directory when it is not passed. Nothing else is: a credential in the
	// service's environment (AZURE_*, IDENTITY_*, MSI_*, AWS_*,
	// GITHUB_TOKEN, ...) stays there.
	Env []string
	// InheritEnv names more variables the runtime inherits from this
	// process ("X*" for a prefix, "*" for all of them, "HOME" for the
	// service's HOME). The runtime and every tool it runs, a shell command
	// a model asked for included, can read and send on what they inherit: a
	// credential passed here lets whoever controls a model reply use it.
	InheritEnv []string
	// Stderr receives a copy of the runtime's stderr; it must not block.
	// Nil: discarded. Start's errors quote its last lines either way.
	Stderr io.Writer
	// StopGrace is how long Close lets a runtime started by Start exit
	// after its stdin closes before killing its process group. 0: 5 s.
	StopGrace time.Duration
	// Permission decides whether the runtime may run a tool, for every
	// session (the client creates them with "requestPermission": true
	// unless their Extra sets it). Nil: every tool is denied, with
	// DenyReason.
	Permission PermissionHandler

	// Conn configures the connection: its limits (frame size, requests in
	// flight, write timeout) and the token middleware's logger, tracer and
	// meter providers, each the broker's when nil.
	Conn transport.ConnOptions
	// Handler receives what the runtime sends that the client does not
	// handle itself: notifications other than session events of its
	// sessions, and requests other than token requests. Requests each run
	// in their own goroutine, and Close waits for them; notifications run
	// in arrival order on the connection's read loop, so Handler must not
	// block on them. Nil: notifications are dropped, requests get
	// method-not-found.
	Handler jsonrpc2.Handler
	// EventBuffer is how many unread events each Session.Events channel
	// holds; when it is full the oldest is dropped. 0: 64; negative: no
	// Events channel (SendAndWait still works).
	EventBuffer int
}

// ServerInfo is the runtime's answer to connect.
type ServerInfo struct {
	ProtocolVersion int    `json:"protocolVersion"`
	Version         string `json:"version"`
}

// Client drives one Copilot runtime over one JSON-RPC connection: it
// creates and resumes sessions whose BYOK providers take their tokens from
// callbacks on this side, and answers the runtime's token requests for them
// on the same connection, through the connection's own actors.Router.
type Client struct {
	tc      *transport.Conn
	router  *actors.Router
	handler jsonrpc2.Handler
	proc    *process.Process
	perm    *permissions
	home    string // removed by Close when ownHome
	ownHome bool
	buffer  int
	info    ServerInfo

	watched chan struct{} // closed once the disconnect is handled

	mu       sync.Mutex
	sessions map[string]*Session
	closing  bool // Close was called
	ended    bool // the connection is gone

	closeOnce sync.Once
	closeErr  error
}

// Connect drives a runtime already listening at the other end of rwc (a
// TCP connection, or an in-memory pipe to a simulator) and performs the
// connect handshake within ctx. The client owns rwc: Close closes it.
func Connect(ctx context.Context, broker *actors.Broker, rwc io.ReadWriteCloser, opts Options) (*Client, error) {
	c := newClient(ctx, broker, rwc, opts)
	if err := c.handshake(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

func newClient(ctx context.Context, broker *actors.Broker, rwc io.ReadWriteCloser, opts Options) *Client {
	log := opts.Conn.Logger
	if log == nil {
		log = broker.Logger()
	}
	c := &Client{
		perm:     newPermissions(opts.Permission, log),
		handler:  opts.Handler,
		buffer:   opts.EventBuffer,
		sessions: map[string]*Session{},
		watched:  make(chan struct{}),
	}
	if c.buffer == 0 {
		c.buffer = defaultEventBuffer
	}
	// transport.NewConn answers token requests, runs every request in its
	// own goroutine and hands notifications to dispatch in arrival order, so
	// an answer and the idle event after it are never swapped.
	c.tc = transport.NewConn(ctx, broker, rwc, dispatcher{c}, opts.Conn)
	c.router = c.tc.Router()
	go c.watch()
	return c
}

// dispatcher is the client as its connection's handler.
type dispatcher struct{ c *Client }

func (d dispatcher) Handle(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request) {
	d.c.dispatch(ctx, conn, req)
}

// dispatch receives what the token middleware does not answer: session
// events go to their sessions, everything else to Options.Handler.
func (c *Client) dispatch(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request) {
	if req.Notif && req.Method == methodSessionEvent {
		if ev, ok := decodeEvent(req.Params); ok {
			if s := c.session(ev.SessionID); s != nil {
				c.perm.observe(c, ev)
				s.deliver(ev)
				return
			}
		}
	}
	switch {
	case c.handler != nil:
		c.handler.Handle(ctx, conn, req)
	case !req.Notif:
		_ = conn.ReplyWithError(ctx, req.ID, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: "method not found: " + req.Method})
	}
}

// watch closes the routing and the sessions once the connection ends,
// whoever ended it.
func (c *Client) watch() {
	defer close(c.watched)
	<-c.tc.Done()
	c.mu.Lock()
	c.ended = true
	all := c.sessions
	c.sessions = map[string]*Session{}
	reason := c.closedErr()
	if reason == ErrClosed {
		reason = fmt.Errorf("%w: runtime connection ended", ErrClosed)
	}
	if c.closing {
		reason = ErrClosed
	}
	c.mu.Unlock()
	for _, s := range all {
		s.shutdown(reason)
	}
}

// handshake sends connect, falling back to ping for a runtime that does
// not know connect.
func (c *Client) handshake(ctx context.Context) error {
	err := c.call(ctx, "connect", struct{}{}, &c.info)
	var rpcErr *jsonrpc2.Error
	if errors.As(err, &rpcErr) && rpcErr.Code == jsonrpc2.CodeMethodNotFound {
		return c.call(ctx, "ping", struct{}{}, nil)
	}
	return err
}

// Info is the runtime's answer to the connect handshake (zero if it only
// knew ping).
func (c *Client) Info() ServerInfo { return c.info }

// Router is the connection's token routing: the sessions whose token
// requests this client answers.
func (c *Client) Router() *actors.Router { return c.router }

// Call sends a runtime method the client does not wrap and decodes its
// answer into result (nil: ignored). Its errors are those of the client's
// own methods: the runtime's error reply matches ErrRuntime, a closed client
// or ended connection ErrClosed.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	return c.call(ctx, method, params, result)
}

// Pid is the runtime's process id, 0 when it was not started by Start.
func (c *Client) Pid() int {
	if c.proc == nil {
		return 0
	}
	return c.proc.Pid()
}

// Done is closed when the runtime connection has ended.
func (c *Client) Done() <-chan struct{} { return c.watched }

// Close stops every session's token routing, closes the connection,
// cancels the permission decisions in progress and, for a runtime started
// by Start, stops the process (closes its stdin, waits up to StopGrace,
// then kills its process group, descendants included) and removes the
// temporary home. It returns within StopGrace and a fraction of a second.
// Sessions are not destroyed on the runtime first: a runtime started by
// Start exits, and one reached by Connect keeps them for a later resume.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.mu.Unlock()
		c.closeErr = c.tc.Close()
		<-c.watched
		c.perm.stop()
		if c.proc != nil {
			if err := c.proc.Close(); err != nil && c.closeErr == nil {
				c.closeErr = err
			}
		}
		if c.ownHome {
			if err := os.RemoveAll(c.home); err != nil && c.closeErr == nil {
				c.closeErr = err
			}
		}
	})
	return c.closeErr
}

// CreateSession opens the session's token routing under a client-chosen
// session id, then sends session.create with the rewritten config. Events
// the runtime sends before it answers are kept for the session.
func (c *Client) CreateSession(ctx context.Context, cfg sessions.SessionConfig) (*Session, error) {
	return c.open(ctx, methodCreate, cfg)
}

// ResumeSession re-attaches a session the runtime knows (created by this or
// an earlier runtime process sharing its COPILOT_HOME). The runtime keeps no
// provider configs, so cfg must carry them again, as for create.
func (c *Client) ResumeSession(ctx context.Context, cfg sessions.SessionConfig) (*Session, error) {
	if cfg.SessionID == "" {
		return nil, errors.New("client: ResumeSession needs the SessionID")
	}
	return c.open(ctx, methodResume, cfg)
}

func (c *Client) open(ctx context.Context, method string, cfg sessions.SessionConfig) (*Session, error) {
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if closing {
		return nil, ErrClosed
	}
	p, err := sessions.Open(c.router, askPermission(cfg))
	if err != nil {
		if errors.Is(err, actors.ErrClosed) {
			err = fmt.Errorf("%w: %w", ErrClosed, err)
		}
		return nil, err
	}
	s := newSession(c, p.SessionID, endpoints(cfg), c.buffer)
	c.mu.Lock()
	if c.closing || c.ended {
		c.mu.Unlock()
		_ = c.router.CloseSession(p.SessionID)
		s.shutdown(ErrClosed)
		return nil, ErrClosed
	}
	c.sessions[p.SessionID] = s // before the request: events may precede the answer
	c.mu.Unlock()

	var res struct {
		SessionID string `json:"sessionId"`
	}
	err = c.call(ctx, method, p.Body, &res)
	if err == nil && res.SessionID != p.SessionID {
		err = fmt.Errorf("client: %s: runtime answered for session %q instead of %q", method, res.SessionID, p.SessionID)
	}
	if err != nil {
		c.forget(s, ErrSessionClosed)
		return nil, err
	}
	return s, nil
}

// forget closes a session's routing and event delivery.
func (c *Client) forget(s *Session, reason error) {
	c.mu.Lock()
	if c.sessions[s.id] == s {
		delete(c.sessions, s.id)
	}
	c.mu.Unlock()
	_ = c.router.CloseSession(s.id) // unknown once the connection closed it
	s.shutdown(reason)
}

func (c *Client) session(id string) *Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessions[id]
}

// call makes a request and maps the connection's errors to the client's.
func (c *Client) call(ctx context.Context, method string, params, result any) error {
	err := c.tc.Call(ctx, method, params, result)
	if err == nil {
		return nil
	}
	var rpcErr *jsonrpc2.Error
	switch {
	case errors.As(err, &rpcErr):
		return &callError{method: method, err: rpcErr}
	case errors.Is(err, jsonrpc2.ErrClosed), errors.Is(err, io.ErrClosedPipe):
		return fmt.Errorf("client: %s: %w", method, c.closedErr())
	}
	return fmt.Errorf("client: %s: %w", method, err)
}

// Runtime methods the client calls.
const (
	methodCreate       = "session.create"
	methodResume       = "session.resume"
	methodSend         = "session.send"
	methodAbort        = "session.abort"
	methodDestroy      = "session.destroy"
	methodSwitchModel  = "session.model.switchTo"
	methodSessionEvent = "session.event"
)
