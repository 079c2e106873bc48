package runtimesim

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/jsonrpc2"
)

// conn is one client connection and the sessions created on it.
type conn struct {
	rt  *Runtime
	ctx context.Context // canceled when Serve ends
	seq atomic.Uint64   // ids of our requests to the client, from 1 like the CLI

	mu       sync.Mutex
	closing  bool
	wg       sync.WaitGroup // handlers and turn loops in flight
	sessions map[string]*session
}

// session is guarded by conn.mu, except for what only its turn loop touches
// (noted below).
type session struct {
	id        string
	startTime time.Time
	cfg       sessionConfig
	lastEvent string // parentId of the next event

	queue   []pendingTurn
	running bool               // a turn loop is draining queue
	cancel  context.CancelFunc // cancels the running turn
	gone    bool               // destroyed

	tokens map[string]cachedToken // acquire-dialect cache by provider name

	// askPermission: created or resumed with requestPermission, so a tool
	// waits for the client's decision instead of being denied.
	askPermission bool
	pending       map[string]chan decision // by permission requestId
}

type pendingTurn struct{ prompt, messageID string }

type cachedToken struct {
	token string
	exp   time.Time
}

// enter registers a goroutine with the connection unless Serve is ending;
// the caller must call wg.Done when it returns true.
func (c *conn) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.wg.Add(1)
	return true
}

// shutdown refuses new goroutines and waits for the running ones.
func (c *conn) shutdown() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.wg.Wait()
}

// Handle implements jsonrpc2.Handler. It runs on its own goroutine (the
// connection wraps it in jsonrpc2.AsyncHandler).
func (c *conn) Handle(ctx context.Context, jc *jsonrpc2.Conn, req *jsonrpc2.Request) {
	if !c.enter() {
		return
	}
	defer c.wg.Done()
	if req.Notif {
		return // the runtime expects no notifications from its client
	}
	c.rt.count(func(s *Stats) { s.Calls++ })
	result, after, rpcErr := c.dispatch(jc, req)
	var err error
	if rpcErr != nil {
		err = jc.ReplyWithError(ctx, req.ID, rpcErr)
	} else {
		err = jc.Reply(ctx, req.ID, result)
	}
	if err != nil {
		c.rt.log.Debug("runtimesim: reply not sent", "method", req.Method, "err", err)
		return
	}
	if after != nil {
		after() // e.g. start a turn only once the client has its messageId
	}
}

// dispatch answers one request; after, when set, runs once the reply is out.
func (c *conn) dispatch(jc *jsonrpc2.Conn, req *jsonrpc2.Request) (result any, after func(), err *jsonrpc2.Error) {
	switch req.Method {
	case "connect":
		return map[string]any{"ok": true, "protocolVersion": protocolVersion, "version": c.rt.Version()}, nil, nil
	case "ping":
		return map[string]any{
			"message":         "pong",
			"timestamp":       time.Now().UTC().Format(time.RFC3339Nano),
			"protocolVersion": protocolVersion,
		}, nil, nil
	case "session.create", "session.resume":
		res, err := c.open(jc, req)
		return res, nil, err
	case "session.send":
		return c.send(jc, req)
	case "session.abort":
		res, err := c.abort(req)
		return res, nil, err
	case "session.destroy":
		res, err := c.destroy(req)
		return res, nil, err
	case "session.model.switchTo":
		res, err := c.switchModel(req)
		return res, nil, err
	case methodPermission:
		res, err := c.handlePermission(req)
		return res, nil, err
	}
	return nil, nil, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: "Unhandled method " + req.Method}
}

// failed builds the error the real runtime sends for any failed method.
func failed(method, format string, a ...any) *jsonrpc2.Error {
	return &jsonrpc2.Error{
		Code:    jsonrpc2.CodeInternalError,
		Message: fmt.Sprintf("Request %s failed with message: %s", method, fmt.Sprintf(format, a...)),
	}
}

// open handles session.create and session.resume. Resume re-validates the
// providers like create; resuming an id unknown on this connection creates
// the session (a fresh real runtime with the same COPILOT_HOME would load it
// from disk). A resume without provider settings keeps the session's.
func (c *conn) open(jc *jsonrpc2.Conn, req *jsonrpc2.Request) (any, *jsonrpc2.Error) {
	p, err := parseOpen(req.Method, req.Params, c.rt.opts.Dialect)
	if err != nil {
		return nil, failed(req.Method, "%s", err)
	}
	resume := req.Method == "session.resume"
	if resume && p.id == "" {
		return nil, failed(req.Method, "Missing sessionId parameter")
	}
	if p.id == "" {
		p.id = newID()
	}
	c.mu.Lock()
	s, known := c.sessions[p.id]
	if !known {
		s = &session{id: p.id, startTime: time.Now(), tokens: map[string]cachedToken{}, pending: map[string]chan decision{}}
		c.sessions[p.id] = s
	}
	s.askPermission = p.requestPermission
	if !resume || p.hasProviders || !known {
		s.cfg = p.cfg
		clear(s.tokens) // a new provider config invalidates cached tokens
	}
	result := openResult{
		SessionID:       s.id,
		NativeSessionID: s.id,
		StartTime:       jsTime(s.startTime),
		Mode:            "interactive",
	}
	result.ModelState.ModelID = s.cfg.modelID
	c.mu.Unlock()
	if !known {
		c.rt.count(func(st *Stats) { st.Sessions++ })
	}

	lifecycle := "session.created"
	if resume {
		lifecycle = "session.updated"
	}
	lc := lifecycleParams{Type: lifecycle, SessionID: s.id}
	lc.Metadata.StartTime, lc.Metadata.ModifiedTime = jsTime(s.startTime), jsTime(time.Now())
	c.notify(jc, "session.lifecycle", lc)
	if !resume {
		c.emit(jc, s, "session.start", map[string]any{
			"sessionId":      s.id,
			"version":        1,
			"producer":       "runtimesim",
			"copilotVersion": c.rt.Version(),
			"startTime":      jsTime(s.startTime),
			"selectedModel":  s.cfg.modelID,
		}, false)
	}
	return result, nil
}

// sessionIDParam extracts params.sessionId, with the real runtime's message
// when it is missing.
func sessionIDParam(req *jsonrpc2.Request, missing string) (string, map[string]json.RawMessage, *jsonrpc2.Error) {
	var fields map[string]json.RawMessage
	if req.Params == nil || json.Unmarshal(*req.Params, &fields) != nil || fields == nil {
		return "", nil, failed(req.Method, "params must be an object")
	}
	var id string
	if raw, ok := fields["sessionId"]; !ok || json.Unmarshal(raw, &id) != nil || id == "" {
		return "", nil, failed(req.Method, "%s", missing)
	}
	return id, fields, nil
}

func (c *conn) send(jc *jsonrpc2.Conn, req *jsonrpc2.Request) (any, func(), *jsonrpc2.Error) {
	id, fields, rpcErr := sessionIDParam(req, "Missing sessionId in session.send request")
	if rpcErr != nil {
		return nil, nil, rpcErr
	}
	var prompt string
	if raw, ok := fields["prompt"]; ok && json.Unmarshal(raw, &prompt) != nil {
		return nil, nil, failed(req.Method, "session.send prompt must be a string")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sessions[id]
	if !ok {
		return nil, nil, failed(req.Method, "Session not found for sessionId: %s", id)
	}
	t := pendingTurn{prompt: prompt, messageID: newID()}
	s.queue = append(s.queue, t)
	var after func()
	if !s.running {
		s.running = true
		after = func() { c.runTurns(jc, s) }
	}
	return map[string]any{"messageId": t.messageID}, after, nil
}

func (c *conn) abort(req *jsonrpc2.Request) (any, *jsonrpc2.Error) {
	id, _, rpcErr := sessionIDParam(req, "Missing sessionId parameter")
	if rpcErr != nil {
		return nil, rpcErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sessions[id]
	if !ok {
		return nil, failed(req.Method, "Session not found for sessionId: %s", id)
	}
	s.stop()
	return map[string]any{"success": true}, nil
}

func (c *conn) destroy(req *jsonrpc2.Request) (any, *jsonrpc2.Error) {
	id, _, rpcErr := sessionIDParam(req, "Missing sessionId parameter")
	if rpcErr != nil {
		return nil, rpcErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sessions[id]
	if !ok {
		return map[string]any{"success": false}, nil
	}
	delete(c.sessions, id)
	s.gone = true
	s.stop()
	return map[string]any{"success": true}, nil
}

// stop drops s's queued turns and cancels the running one; c.mu must be
// held.
func (s *session) stop() {
	s.queue = nil
	if s.cancel != nil {
		s.cancel()
	}
}

// notify sends a notification; a closed connection is not an error here
// because every sender stops once Serve cancels its context.
func (c *conn) notify(jc *jsonrpc2.Conn, method string, params any) {
	if err := jc.Notify(c.ctx, method, params); err != nil {
		c.rt.log.Debug("runtimesim: notification not sent", "method", method, "err", err)
	}
}

// emit sends one session.event in the real runtime's shape:
// {"sessionId", "event": {"type", "data", "ephemeral"?, "id", "timestamp", "parentId"}}.
func (c *conn) emit(jc *jsonrpc2.Conn, s *session, typ string, data any, ephemeral bool) {
	id := newID()
	c.mu.Lock()
	var parent any
	if s.lastEvent != "" {
		parent = s.lastEvent
	}
	s.lastEvent = id
	c.mu.Unlock()
	ev := event{Type: typ, Data: data, ID: id, Timestamp: jsTime(time.Now()), ParentID: parent}
	if ephemeral {
		ev.Ephemeral = &ephemeral
	}
	c.notify(jc, "session.event", sessionEvent{SessionID: s.id, Event: ev})
}

// The wire structs below keep the real runtime's field order, so captured
// traffic of both can be compared by eye.

type openResult struct {
	SessionID       string `json:"sessionId"`
	NativeSessionID string `json:"nativeSessionId"`
	StartTime       string `json:"startTime"`
	IsRemote        bool   `json:"isRemote"`
	Mode            string `json:"mode"`
	ModelState      struct {
		ModelID string `json:"modelId"`
	} `json:"modelState"`
}

type lifecycleParams struct {
	Type      string `json:"type"`
	SessionID string `json:"sessionId"`
	Metadata  struct {
		StartTime    string `json:"startTime"`
		ModifiedTime string `json:"modifiedTime"`
	} `json:"metadata"`
}

type sessionEvent struct {
	SessionID string `json:"sessionId"`
	Event     event  `json:"event"`
}

type event struct {
	Type      string `json:"type"`
	Data      any    `json:"data"`
	Ephemeral *bool  `json:"ephemeral,omitempty"`
	ID        string `json:"id"`
	Timestamp string `json:"timestamp"`
	ParentID  any    `json:"parentId"`
}

// jsTime formats like JavaScript's Date.toISOString, as the runtime does.
func jsTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// switchModel handles session.model.switchTo {sessionId, modelId}: later
// turns use the provider of the newly selected model.
func (c *conn) switchModel(req *jsonrpc2.Request) (any, *jsonrpc2.Error) {
	id, fields, rpcErr := sessionIDParam(req, "Missing sessionId parameter")
	if rpcErr != nil {
		return nil, rpcErr
	}
	var model string
	if raw, ok := fields["modelId"]; !ok || json.Unmarshal(raw, &model) != nil || model == "" {
		return nil, failed(req.Method, "modelId must be a non-empty string")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sessions[id] // destroy removes a session before marking it gone
	if !ok {
		return nil, failed(req.Method, "Session not found for sessionId: %s", id)
	}
	if err := s.cfg.switchTo(model); err != nil {
		return nil, failed(req.Method, "%s", err)
	}
	return map[string]any{"modelId": model}, nil
}
