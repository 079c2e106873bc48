package runtimesim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"
	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/internal/syncbuf"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor bounds every wait for the simulator: only a test that is
// failing anyway waits this long, so it is generous (race detector, busy
// machine).
const waitFor = 10 * time.Second

// note is a notification received by the test client.
type note struct {
	method string
	raw    json.RawMessage
	ev     struct {
		SessionID string `json:"sessionId"`
		Type      string `json:"type"` // session.lifecycle
		Event     struct {
			Type      string          `json:"type"`
			Data      json.RawMessage `json:"data"`
			Ephemeral bool            `json:"ephemeral"`
			ID        string          `json:"id"`
			Timestamp string          `json:"timestamp"`
			ParentID  *string         `json:"parentId"`
		} `json:"event"`
	}
}

// sameJSON compares two JSON texts by value: the test client's jsonrpc2
// re-encodes received params with sorted keys.
func sameJSON(a, b string) bool {
	var va, vb any
	return json.Unmarshal([]byte(a), &va) == nil && json.Unmarshal([]byte(b), &vb) == nil && reflect.DeepEqual(va, vb)
}

// tokenCall is a token request as the test client saw it.
type tokenCall struct {
	method string
	params string // raw JSON
}

// answerFunc answers a token request (result, or error).
type answerFunc func(n int, method string, params json.RawMessage) (any, error)

// client is a minimal client of the simulator: it answers token requests
// with answer and files notifications per session, in arrival order.
type client struct {
	t      *testing.T
	jc     *jsonrpc2.Conn
	answer answerFunc

	mu     sync.Mutex
	notes  map[string]chan note // by session id
	tokens []tokenCall
}

// handler handles notifications inline (to keep their order) and token
// requests on their own goroutines (they may block).
type handler struct{ c *client }

func (h handler) Handle(ctx context.Context, jc *jsonrpc2.Conn, req *jsonrpc2.Request) {
	c := h.c
	if req.Notif {
		n := note{method: req.Method, raw: *req.Params}
		if err := json.Unmarshal(*req.Params, &n.ev); err != nil {
			c.t.Errorf("notification %s: %v", req.Method, err)
		}
		select {
		case c.queue(n.ev.SessionID) <- n:
		default:
			c.t.Errorf("notification queue full")
		}
		return
	}
	c.mu.Lock()
	c.tokens = append(c.tokens, tokenCall{method: req.Method, params: string(*req.Params)})
	n := len(c.tokens)
	c.mu.Unlock()
	go func() {
		res, err := c.answer(n, req.Method, *req.Params)
		var rpcErr *jsonrpc2.Error
		switch {
		case errors.As(err, &rpcErr):
			_ = jc.ReplyWithError(ctx, req.ID, rpcErr)
		case err != nil:
			_ = jc.ReplyWithError(ctx, req.ID, &jsonrpc2.Error{Code: -32000, Message: err.Error()})
		default:
			_ = jc.Reply(ctx, req.ID, res)
		}
	}()
}

func (c *client) queue(sessionID string) chan note {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.notes[sessionID]
	if q == nil {
		q = make(chan note, 256)
		c.notes[sessionID] = q
	}
	return q
}

// connect serves one net.Pipe connection with rt and returns its client.
// Cleanup closes the connection and checks that Serve returned.
func connect(t *testing.T, rt *Runtime, answer answerFunc) *client {
	t.Helper()
	return connectTee(t, rt, answer, nil)
}

// teeConn copies what it reads to w.
type teeConn struct {
	net.Conn
	w io.Writer
}

func (c teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.w.Write(p[:n])
	return n, err
}

// connectTee is connect that also records the simulator's raw output in w
// (when not nil).
func connectTee(t *testing.T, rt *Runtime, answer answerFunc, w *syncbuf.Buffer) *client {
	t.Helper()
	a, b := net.Pipe()
	var clientSide net.Conn = b
	if w != nil {
		clientSide = teeConn{b, w}
	}
	served := make(chan error, 1)
	go func() { served <- rt.Serve(context.Background(), a) }()
	c := &client{t: t, answer: answer, notes: map[string]chan note{}}
	c.jc = jsonrpc2.NewConn(context.Background(), jsonrpc2.NewBufferedStream(clientSide, jsonrpc2.VSCodeObjectCodec{}), handler{c})
	t.Cleanup(func() {
		c.jc.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(waitFor):
			t.Errorf("Serve did not return after the client closed")
		}
	})
	return c
}

// fake starts a fake model endpoint closed at cleanup.
func fake(t *testing.T, opts fakemodel.Options) *fakemodel.Server {
	t.Helper()
	s, err := fakemodel.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// call makes a request and fails the test on error.
func (c *client) call(method string, params any) json.RawMessage {
	c.t.Helper()
	res, err := c.try(method, params)
	if err != nil {
		c.t.Fatalf("%s: %v", method, err)
	}
	return res
}

func (c *client) try(method string, params any) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var res json.RawMessage
	err := c.jc.Call(ctx, method, params, &res)
	return res, err
}

// rpcError calls method and returns the error it must fail with.
func (c *client) rpcError(method string, params any) *jsonrpc2.Error {
	c.t.Helper()
	_, err := c.try(method, params)
	var rpcErr *jsonrpc2.Error
	if !errors.As(err, &rpcErr) {
		c.t.Fatalf("%s: got %v, want a JSON-RPC error", method, err)
	}
	return rpcErr
}

// next returns the session's next session.event of type typ ("*": any),
// skipping other notifications.
func (c *client) next(sessionID, typ string) note {
	c.t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case n := <-c.queue(sessionID):
			if n.method == "session.event" && (typ == "*" || n.ev.Event.Type == typ) {
				return n
			}
		case <-timeout:
			c.t.Fatalf("no %s event for session %s", strings.Replace(typ, "*", "further", 1), sessionID)
		}
	}
}

// turnResult waits for the end of a turn and returns the assistant texts
// and the session.error data (nil when the turn succeeded).
func (c *client) turnResult(sessionID string) (texts []string, sessionErr map[string]any) {
	c.t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case n := <-c.queue(sessionID):
			if n.method != "session.event" {
				continue
			}
			switch n.ev.Event.Type {
			case "assistant.message":
				var d struct{ Content string }
				_ = json.Unmarshal(n.ev.Event.Data, &d)
				texts = append(texts, d.Content)
			case "session.error":
				_ = json.Unmarshal(n.ev.Event.Data, &sessionErr)
			case "session.idle":
				return texts, sessionErr
			}
		case <-timeout:
			c.t.Fatalf("turn of session %s did not end", sessionID)
		}
	}
}

func (c *client) tokenCalls() []tokenCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]tokenCall(nil), c.tokens...)
}

// send sends a prompt and returns the turn's outcome.
func (c *client) send(sessionID, prompt string) ([]string, map[string]any) {
	c.t.Helper()
	c.call("session.send", map[string]any{"sessionId": sessionID, "prompt": prompt})
	return c.turnResult(sessionID)
}

// tokenN answers every token request with {"token": "tok-<n>"}.
func tokenN(n int, _ string, _ json.RawMessage) (any, error) {
	return map[string]string{"token": "tok-" + strconv.Itoa(n)}, nil
}

// wholeSessionParams returns create params for one whole-session provider.
func wholeSessionParams(id string, provider map[string]any) map[string]any {
	return map[string]any{"sessionId": id, "model": "gpt-4o", "provider": provider}
}

// bearers returns the bearer tokens the fake model received, in order.
func bearers(s *fakemodel.Server) []string {
	var out []string
	for _, r := range s.Requests() {
		out = append(out, r.BearerToken())
	}
	return out
}
