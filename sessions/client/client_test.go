package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"
	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/transport"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envFakeRuntime); mode != "" {
		os.Exit(fakeRuntime(mode))
	}
	goleak.VerifyTestMain(m,
		// protoactor's dead-letter throttle sleeps about a second after the
		// system shuts down; it holds nothing of ours.
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewThrottle.func1"),
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"))
}

// script is a runtime whose behaviour each test writes: it answers connect
// and the session methods, and lets the test act inside session.send (ask
// for tokens, emit events) before the send is answered.
type script struct {
	t  *testing.T
	jc *jsonrpc2.Conn

	// create answers session.create/resume; nil: accept. It runs after a
	// session.start event was sent for the session.
	create func(params map[string]any) (any, error)
	// send runs inside session.send, before its answer, with the message id
	// it will return.
	send func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string)
	// destroyed answers session.destroy; nil: {"success": true}.
	destroyed any
	// other answers the methods handle does not know; nil: method not found.
	other func(ctx context.Context, req *jsonrpc2.Request, params map[string]any) (any, error)

	mu      sync.Mutex
	methods []string
	sends   int
}

func newScript(t *testing.T, opts ...client.Options) (*script, *client.Client, *actors.Broker) {
	t.Helper()
	opts = append(opts, client.Options{})
	b := actors.NewBroker(actors.Options{})
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
	s := &script{t: t}
	clientEnd, runtimeEnd := net.Pipe()
	s.jc = jsonrpc2.NewConn(context.Background(), jsonrpc2.NewBufferedStream(runtimeEnd, jsonrpc2.VSCodeObjectCodec{}),
		jsonrpc2.AsyncHandler(jsonrpc2.HandlerWithError(s.handle)))
	t.Cleanup(func() { s.jc.Close(); <-s.jc.DisconnectNotify() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, b, clientEnd, opts[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return s, c, b
}

func (s *script) called(method string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.methods = append(s.methods, method)
}

func (s *script) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.methods)
}

func (s *script) handle(ctx context.Context, jc *jsonrpc2.Conn, req *jsonrpc2.Request) (any, error) {
	s.called(req.Method)
	var p map[string]any
	if req.Params != nil {
		_ = json.Unmarshal(*req.Params, &p)
	}
	id, _ := p["sessionId"].(string)
	switch req.Method {
	case "connect":
		return map[string]any{"ok": true, "protocolVersion": 3, "version": "script"}, nil
	case "session.create", "session.resume":
		// The real runtime sends events before it answers create.
		event(ctx, jc, id, "session.start", map[string]any{"sessionId": id})
		if s.create != nil {
			return s.create(p)
		}
		return map[string]any{"sessionId": id}, nil
	case "session.send":
		s.mu.Lock()
		s.sends++
		msgID := fmt.Sprintf("msg-%d", s.sends)
		s.mu.Unlock()
		if s.send != nil {
			s.send(ctx, jc, id, msgID)
		}
		return map[string]any{"messageId": msgID}, nil
	case "session.destroy":
		if s.destroyed != nil {
			return s.destroyed, nil
		}
		return map[string]any{"success": true}, nil
	case "session.abort":
		return map[string]any{"success": true}, nil
	}
	if s.other != nil {
		return s.other(ctx, req, p)
	}
	return nil, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: "Unhandled method " + req.Method}
}

func event(ctx context.Context, jc *jsonrpc2.Conn, session, typ string, data any) {
	_ = jc.Notify(ctx, "session.event", map[string]any{
		"sessionId": session,
		"event":     map[string]any{"type": typ, "data": data, "id": typ + "-id", "timestamp": time.Now().UTC().Format(time.RFC3339Nano)},
	})
}

// answer is a complete turn: the user message, the answer, idle.
func answer(ctx context.Context, jc *jsonrpc2.Conn, session, msgID, text string) {
	event(ctx, jc, session, "user.message", map[string]any{"messageId": msgID, "content": "q"})
	event(ctx, jc, session, "assistant.message", map[string]any{"messageId": "a-" + msgID, "originatingMessageId": msgID, "content": text})
	event(ctx, jc, session, "session.idle", map[string]any{"mode": "interactive"})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func counted(value string, calls *int, mu *sync.Mutex) tokens.Source {
	return tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		mu.Lock()
		*calls++
		mu.Unlock()
		return tokens.Token{Value: value, ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
}

// Both dialects on one connection, events before the create answer, and a
// turn whose events all arrive before session.send is answered.
func TestClientBothDialectsOneConnection(t *testing.T) {
	s, c, _ := newScript(t)
	ctx := ctxT(t)
	var mu sync.Mutex
	calls := 0
	const secret = "scripted-token-1"
	type got struct {
		method string
		result map[string]any
		err    error
	}
	var results []got
	s.send = func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
		for _, method := range []string{transport.MethodAcquire, transport.MethodGetToken} {
			var res map[string]any
			err := jc.Call(ctx, method, map[string]any{"sessionId": session, "providerName": "default", "scope": "api://x/.default"}, &res)
			results = append(results, got{method, res, err})
		}
		answer(ctx, jc, session, msgID, "done")
	}
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{
		SessionID: "both-1",
		Model:     "gpt-4o",
		Provider:  &sessions.ProviderConfig{Type: "openai", BaseURL: "http://127.0.0.1:1/v1", BearerTokenSource: counted(secret, &calls, &mu), BearerTokenScope: "api://x/.default"},
	})
	if err != nil {
		t.Fatal(err)
	}
	// session.start was sent before create was answered and still reached
	// the session.
	select {
	case ev := <-sess.Events():
		if ev.Type != "session.start" || ev.SessionID != "both-1" {
			t.Fatalf("first event %s for %s, want session.start", ev.Type, ev.SessionID)
		}
	case <-ctx.Done():
		t.Fatal("the event sent before the create answer was lost")
	}
	ans, err := sess.SendAndWait(ctx, "hello")
	if err != nil || ans != "done" {
		t.Fatalf("SendAndWait = %q, %v", ans, err)
	}
	if len(results) != 2 {
		t.Fatalf("%d token replies", len(results))
	}
	for _, r := range results {
		if r.err != nil {
			t.Fatalf("%s: %v", r.method, r.err)
		}
		if r.result["token"] != secret {
			t.Errorf("%s: wrong token (fingerprint %s)", r.method, tokens.Fingerprint(fmt.Sprint(r.result["token"])))
		}
	}
	if _, ok := results[0].result["expiresOnTimestamp"].(float64); !ok || len(results[0].result) != 2 {
		t.Errorf("acquire result keys %v, want token and expiresOnTimestamp", keys(results[0].result))
	}
	if len(results[1].result) != 1 {
		t.Errorf("getToken result keys %v, want only token", keys(results[1].result))
	}
	if calls != 1 {
		t.Errorf("credential called %d times for two requests, want 1 (cached)", calls)
	}
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Events reach Events in the order the runtime sent them, even in bursts.
func TestClientEventOrder(t *testing.T) {
	const n = 500
	s, c, _ := newScript(t, client.Options{EventBuffer: n + 1})
	ctx := ctxT(t)
	s.send = func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
		for i := range n {
			event(ctx, jc, session, "test.seq", map[string]any{"i": i})
		}
	}
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "order-1"})
	if err != nil {
		t.Fatal(err)
	}
	<-sess.Events() // session.start
	if _, err := sess.Send(ctx, "go"); err != nil {
		t.Fatal(err)
	}
	for want := range n {
		select {
		case ev := <-sess.Events():
			var d struct{ I int }
			_ = json.Unmarshal(ev.Data, &d)
			if ev.Type != "test.seq" || d.I != want {
				t.Fatalf("event %d is %s #%d: out of order", want, ev.Type, d.I)
			}
		case <-ctx.Done():
			t.Fatalf("only %d of %d events", want, n)
		}
	}
}

// A turn can be followed on Events instead of SendAndWait: Send returns
// the message id, Content gives an answer's text, Err a session.error's
// SessionError, and session.idle ends the turn. Other types read as
// neither, whatever their data holds.
func TestClientSendAndEvents(t *testing.T) {
	s, c, _ := newScript(t)
	ctx := ctxT(t)
	s.send = func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
		event(ctx, jc, session, "user.message", map[string]any{"messageId": msgID, "content": "the prompt"})
		event(ctx, jc, session, "assistant.message", map[string]any{"messageId": "a-1", "originatingMessageId": msgID, "content": "part one"})
		event(ctx, jc, session, "session.error", map[string]any{"errorType": "query", "message": "model overloaded", "originatingMessageId": msgID})
		event(ctx, jc, session, "session.idle", map[string]any{})
	}
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "stream-1"})
	if err != nil {
		t.Fatal(err)
	}
	id, err := sess.Send(ctx, "the prompt")
	if err != nil || id != "msg-1" {
		t.Fatalf("Send = %q, %v", id, err)
	}
	var texts []string
	var errs []error
	for ev := range sess.Events() {
		if ev.SessionID != "stream-1" {
			t.Errorf("%s event for session %q", ev.Type, ev.SessionID)
		}
		switch ev.Type {
		case client.EventAssistantMessage:
			texts = append(texts, ev.Content())
		case client.EventSessionError:
			errs = append(errs, ev.Err())
		default:
			if ev.Content() != "" || ev.Err() != nil {
				t.Errorf("%s event read as content %q, error %v", ev.Type, ev.Content(), ev.Err())
			}
		}
		if ev.Type == client.EventSessionIdle {
			break
		}
	}
	var se *client.SessionError
	if !slices.Equal(texts, []string{"part one"}) || len(errs) != 1 || !errors.Is(errs[0], client.ErrSessionFailed) ||
		!errors.As(errs[0], &se) || *se != (client.SessionError{SessionID: "stream-1", Type: "query", Message: "model overloaded"}) {
		t.Fatalf("answers %q, errors %v", texts, errs)
	}
	if err := sess.Err(); err != nil {
		t.Fatalf("Err of an open session: %v", err)
	}
}

// An unread Events channel keeps the newest events and counts the rest.
func TestClientEventsBounded(t *testing.T) {
	s, c, _ := newScript(t, client.Options{EventBuffer: 4})
	ctx := ctxT(t)
	const n = 100
	s.send = func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
		for i := range n {
			event(ctx, jc, session, "test.seq", map[string]any{"i": i})
		}
		answer(ctx, jc, session, msgID, "ok")
	}
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "bounded-1"})
	if err != nil {
		t.Fatal(err)
	}
	// SendAndWait does not depend on Events being read.
	if ans, err := sess.SendAndWait(ctx, "go"); err != nil || ans != "ok" {
		t.Fatalf("SendAndWait = %q, %v", ans, err)
	}
	// 1 session.start + 100 + 3 turn events, 4 kept.
	if got, want := sess.DroppedEvents(), int64(1+n+3-4); got != want {
		t.Errorf("dropped %d, want %d", got, want)
	}
	var kept []string
	for range 4 {
		kept = append(kept, (<-sess.Events()).Type)
	}
	if want := []string{"test.seq", "user.message", "assistant.message", "session.idle"}; !slices.Equal(kept, want) {
		t.Errorf("kept %v, want the newest %v", kept, want)
	}
}

func TestClientSessionErrorAndAbort(t *testing.T) {
	s, c, _ := newScript(t)
	ctx := ctxT(t)
	s.send = func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
		event(ctx, jc, session, "user.message", map[string]any{"messageId": msgID})
		switch msgID {
		case "msg-1":
			// An error of an earlier message does not end this turn.
			event(ctx, jc, session, "session.error", map[string]any{"errorType": "query", "message": "stale", "originatingMessageId": "msg-0"})
			event(ctx, jc, session, "session.error", map[string]any{"errorType": "query", "message": "Provider token request failed: credential broke", "originatingMessageId": msgID})
			event(ctx, jc, session, "session.idle", map[string]any{})
		case "msg-2":
			event(ctx, jc, session, "session.idle", map[string]any{"aborted": true})
		}
	}
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "err-1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = sess.SendAndWait(ctx, "a")
	var se *client.SessionError
	if !errors.Is(err, client.ErrSessionFailed) || !errors.As(err, &se) {
		t.Fatalf("err = %v, want a SessionError", err)
	}
	if se.Type != "query" || !strings.Contains(se.Message, "credential broke") || se.SessionID != "err-1" {
		t.Errorf("SessionError %+v", se)
	}
	if _, err := sess.SendAndWait(ctx, "b"); !errors.Is(err, client.ErrAborted) {
		t.Fatalf("aborted turn: err = %v", err)
	}
	if err := sess.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(s.seen(), "session.abort") {
		t.Error("Abort did not call session.abort")
	}
}

// Call reaches runtime methods the client does not wrap, with the errors
// of the methods it does: a refusal matches ErrRuntime and keeps its code, a
// closed client ErrClosed.
func TestClientCall(t *testing.T) {
	s, c, _ := newScript(t)
	ctx := ctxT(t)
	s.other = func(_ context.Context, req *jsonrpc2.Request, params map[string]any) (any, error) {
		if req.Method == "models.list" {
			return map[string]any{"models": []string{params["filter"].(string) + "-1"}}, nil
		}
		return nil, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: "Unhandled method " + req.Method}
	}
	var res struct{ Models []string }
	if err := c.Call(ctx, "models.list", map[string]any{"filter": "gpt"}, &res); err != nil || !slices.Equal(res.Models, []string{"gpt-1"}) {
		t.Fatalf("Call(models.list) = %v, %v", res, err)
	}
	var rpcErr *jsonrpc2.Error
	if err := c.Call(ctx, "account.nothing", nil, nil); !errors.Is(err, client.ErrRuntime) || !errors.As(err, &rpcErr) || rpcErr.Code != jsonrpc2.CodeMethodNotFound {
		t.Fatalf("Call of an unknown method: %v", err)
	}
	if info := c.Info(); info.ProtocolVersion != 3 || info.Version != "script" {
		t.Errorf("Info() = %+v", info)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, "models.list", map[string]any{"filter": "gpt"}, nil); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Call after Close: %v, want ErrClosed", err)
	}
}

// A refused create closes the routing it opened; the error carries the
// runtime's code.
func TestClientCreateRefused(t *testing.T) {
	s, c, _ := newScript(t)
	ctx := ctxT(t)
	s.create = func(map[string]any) (any, error) {
		return nil, &jsonrpc2.Error{Code: jsonrpc2.CodeInternalError, Message: "Request session.create failed with message: nope"}
	}
	src := tokens.Static(tokens.Token{Value: "v"})
	_, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "refused-1", Provider: &sessions.ProviderConfig{BearerTokenSource: src}})
	var rpcErr *jsonrpc2.Error
	if !errors.Is(err, client.ErrRuntime) || !errors.As(err, &rpcErr) || rpcErr.Code != jsonrpc2.CodeInternalError {
		t.Fatalf("err = %v", err)
	}
	if n := c.Router().Len(); n != 0 {
		t.Fatalf("%d sessions still routed after a refused create", n)
	}
	// The id is free again.
	s.create = nil
	if _, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "refused-1", Provider: &sessions.ProviderConfig{BearerTokenSource: src}}); err != nil {
		t.Fatal(err)
	}
	// A second session with the same id is refused before anything is sent.
	if _, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "refused-1"}); !errors.Is(err, actors.ErrSessionExists) {
		t.Fatalf("duplicate id: err = %v", err)
	}
	if _, err := c.ResumeSession(ctx, sessions.SessionConfig{}); err == nil {
		t.Fatal("resume without a session id accepted")
	}
}

func TestClientDestroy(t *testing.T) {
	s, c, _ := newScript(t)
	ctx := ctxT(t)
	src := tokens.Static(tokens.Token{Value: "v"})
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "destroy-1", Provider: &sessions.ProviderConfig{BearerTokenSource: src}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Router().Len() != 1 {
		t.Fatal("session not routed")
	}
	if err := sess.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(s.seen(), "session.destroy") {
		t.Error("Destroy did not call session.destroy")
	}
	if c.Router().Len() != 0 {
		t.Error("routing still open after Destroy")
	}
	for range sess.Events() { // drains, then ends: the channel is closed
	}
	if _, err := sess.SendAndWait(ctx, "x"); !errors.Is(err, client.ErrSessionClosed) {
		t.Errorf("SendAndWait after Destroy: %v", err)
	}
	if err := sess.Destroy(ctx); !errors.Is(err, client.ErrSessionClosed) {
		t.Errorf("second Destroy: %v", err)
	}
	if err := sess.Err(); err != client.ErrSessionClosed {
		t.Errorf("Err after Destroy: %v", err)
	}
}

// A turn in progress ends with ErrClosed when the runtime goes away or the
// client closes.
func TestClientConnectionEnds(t *testing.T) {
	for _, who := range []string{"runtime", "client"} {
		t.Run(who, func(t *testing.T) {
			s, c, _ := newScript(t)
			ctx := ctxT(t)
			sending := make(chan struct{})
			s.send = func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
				event(ctx, jc, session, "user.message", map[string]any{"messageId": msgID})
				close(sending)
			}
			sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "end-1"})
			if err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() {
				_, err := sess.SendAndWait(ctx, "x")
				errc <- err
			}()
			// The runtime is handling the send: the turn has started.
			select {
			case <-sending:
			case <-ctx.Done():
				t.Fatal("session.send never reached the runtime")
			}
			if who == "runtime" {
				s.jc.Close()
			} else {
				c.Close()
			}
			if err := <-errc; !errors.Is(err, client.ErrClosed) {
				t.Fatalf("err = %v, want ErrClosed", err)
			}
			<-c.Done()
			<-sess.Done()
			if err := sess.Err(); !errors.Is(err, client.ErrClosed) {
				t.Errorf("Err of a session whose client ended: %v", err)
			}
			if c.Router().Len() != 0 {
				t.Error("routing still open")
			}
			if _, err := c.CreateSession(ctx, sessions.SessionConfig{}); !errors.Is(err, client.ErrClosed) {
				t.Errorf("create after the end: %v", err)
			}
		})
	}
}

func TestStartWithoutCLI(t *testing.T) {
	t.Setenv("COPILOT_CLI_PATH", "")
	b := actors.NewBroker(actors.Options{})
	defer b.Close()
	if _, err := client.Start(context.Background(), b, client.Options{}); !errors.Is(err, client.ErrNoCLI) {
		t.Fatalf("err = %v, want ErrNoCLI", err)
	}
}
