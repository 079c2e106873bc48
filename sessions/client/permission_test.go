package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
)

// askTool is the Copilot CLI's way to ask for a tool (1.0.102): the tool's
// start event, then permission.requested; the tool waits for the client's
// handlePendingPermissionRequest, whose params it returns.
func askTool(ctx context.Context, jc *jsonrpc2.Conn, session string, decisions <-chan map[string]any) map[string]any {
	event(ctx, jc, session, client.EventToolStart, map[string]any{
		"toolCallId": "call-1", "toolName": "bash", "arguments": map[string]any{"command": "env"},
	})
	event(ctx, jc, session, client.EventPermissionRequested, map[string]any{
		"requestId": "req-1",
		"permissionRequest": map[string]any{
			"kind": "shell", "toolCallId": "call-1", "fullCommandText": "env", "intention": "print env",
		},
	})
	select {
	case d := <-decisions:
		return d
	case <-ctx.Done():
		return nil
	}
}

// permissionScript is a script runtime that records session.create's params
// and hands over the permission decisions it receives.
func permissionScript(t *testing.T, opts client.Options) (*script, *client.Client, <-chan map[string]any, <-chan map[string]any) {
	s, c, _ := newScript(t, opts)
	created := make(chan map[string]any, 1)
	decisions := make(chan map[string]any, 1)
	s.create = func(p map[string]any) (any, error) {
		created <- p
		return map[string]any{"sessionId": p["sessionId"]}, nil
	}
	s.other = func(_ context.Context, req *jsonrpc2.Request, p map[string]any) (any, error) {
		if req.Method != "session.permissions.handlePendingPermissionRequest" {
			return nil, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: req.Method}
		}
		decisions <- p
		return map[string]any{"success": true}, nil
	}
	return s, c, created, decisions
}

func TestPermissionDeniedByDefault(t *testing.T) {
	s, c, created, decisions := permissionScript(t, client.Options{})
	ctx := ctxT(t)
	var decision map[string]any
	s.send = func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
		go func() {
			decision = askTool(ctx, jc, session, decisions)
			answer(ctx, jc, session, msgID, "no tool for me")
		}()
	}
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if p := <-created; p["requestPermission"] != true {
		t.Fatalf("session.create requestPermission = %v, want true", p["requestPermission"])
	}
	if ans, err := sess.SendAndWait(ctx, "run env"); err != nil || ans != "no tool for me" {
		t.Fatalf("turn: %q, %v", ans, err)
	}
	result, _ := decision["result"].(map[string]any)
	if decision["sessionId"] != sess.ID() || decision["requestId"] != "req-1" ||
		result["kind"] != "reject" || result["feedback"] != client.DenyReason {
		t.Fatalf("decision sent: %v", decision)
	}
}

func TestPermissionHandler(t *testing.T) {
	got := make(chan client.PermissionRequest, 1)
	allow := func(_ context.Context, req client.PermissionRequest) client.PermissionDecision {
		got <- req
		return client.PermissionDecision{Allow: true}
	}
	s, c, created, decisions := permissionScript(t, client.Options{Permission: allow})
	ctx := ctxT(t)
	var decision map[string]any
	s.send = func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
		go func() {
			decision = askTool(ctx, jc, session, decisions)
			answer(ctx, jc, session, msgID, "ran it")
		}()
	}
	// A config that sets requestPermission itself keeps its value.
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{Extra: map[string]any{"requestPermission": false}})
	if err != nil {
		t.Fatal(err)
	}
	if p := <-created; p["requestPermission"] != false {
		t.Fatalf("session.create requestPermission = %v, want the config's false", p["requestPermission"])
	}
	if _, err := sess.SendAndWait(ctx, "run env"); err != nil {
		t.Fatal(err)
	}
	req := <-got
	var detail struct{ FullCommandText string }
	_ = json.Unmarshal(req.Detail, &detail)
	if req.SessionID != sess.ID() || req.ToolCallID != "call-1" || req.Tool != "bash" || req.Kind != "shell" ||
		string(req.Arguments) != `{"command":"env"}` || detail.FullCommandText != "env" {
		t.Fatalf("handler saw %+v", req)
	}
	if result, _ := decision["result"].(map[string]any); result["kind"] != "approve-once" {
		t.Fatalf("decision sent: %v", decision)
	}
}

// Close cancels a permission handler in progress and does not wait past it.
func TestPermissionHandlerCancelledByClose(t *testing.T) {
	entered := make(chan struct{})
	hang := func(ctx context.Context, _ client.PermissionRequest) client.PermissionDecision {
		close(entered)
		<-ctx.Done()
		return client.PermissionDecision{}
	}
	s, c, _, decisions := permissionScript(t, client.Options{Permission: hang})
	ctx := ctxT(t)
	s.send = func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
		go askTool(ctx, jc, session, decisions)
	}
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Send(ctx, "run env"); err != nil {
		t.Fatal(err)
	}
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for a permission handler")
	}
}

// A request from the runtime that the client does not know gets an error
// at once, not silence.
func TestUnknownRuntimeRequestAnswered(t *testing.T) {
	s, _, _ := newScript(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.jc.Call(ctx, "userInput.request", map[string]any{"sessionId": "x", "question": "?"}, nil)
	var rpcErr *jsonrpc2.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != jsonrpc2.CodeMethodNotFound {
		t.Fatalf("err = %v, want method not found", err)
	}
}

// A runtime cannot make the client hold more than a bounded number of
// permission decisions or remembered tool calls, whatever it sends; tools
// that ran without asking are forgotten when they complete, so a long
// session's later requests still carry their tool.
func TestPermissionRequestsBounded(t *testing.T) {
	const flood = 300 // beyond the client's 256
	var mu sync.Mutex
	running, most := 0, 0
	release := make(chan struct{})
	seen := make(chan client.PermissionRequest, flood)
	block := func(ctx context.Context, req client.PermissionRequest) client.PermissionDecision {
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		seen <- req
		select {
		case <-release:
		case <-ctx.Done():
		}
		mu.Lock()
		running--
		mu.Unlock()
		return client.PermissionDecision{Reason: "no"}
	}
	s, c, _, decisions := permissionScript(t, client.Options{Permission: block})
	ctx := ctxT(t)
	sent := make(chan struct{})
	s.send = func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
		go func() {
			defer close(sent)
			// 400 tools that ran without asking, then one that asks: its
			// request must still name it.
			for i := range 400 {
				id := fmt.Sprintf("quiet-%d", i)
				event(ctx, jc, session, client.EventToolStart, map[string]any{"toolCallId": id, "toolName": "view"})
				event(ctx, jc, session, client.EventToolComplete, map[string]any{"toolCallId": id, "success": true})
			}
			event(ctx, jc, session, client.EventToolStart, map[string]any{"toolCallId": "late", "toolName": "bash"})
			for i := range flood {
				id := "late"
				if i > 0 {
					id = fmt.Sprintf("flood-%d", i)
				}
				event(ctx, jc, session, client.EventPermissionRequested, map[string]any{
					"requestId": fmt.Sprintf("req-%d", i), "permissionRequest": map[string]any{"kind": "shell", "toolCallId": id},
				})
			}
		}()
	}
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Send(ctx, "flood"); err != nil {
		t.Fatal(err)
	}
	<-sent
	// Every slot taken: the handler sees 256 requests, no more. The client
	// takes slots in the order the events arrive, so they are the first
	// 256 requests; the handlers run concurrently, so in any order.
	want := map[string]bool{"late": true}
	for i := 1; i < 256; i++ {
		want[fmt.Sprintf("flood-%d", i)] = true
	}
	for range 256 {
		req := <-seen
		if !want[req.ToolCallID] {
			t.Fatalf("the handler saw %+v, not one of the first 256 requests, or twice", req)
		}
		delete(want, req.ToolCallID)
		if req.ToolCallID == "late" && req.Tool != "bash" {
			t.Fatalf("the request after 400 quiet tools saw %+v, want tool bash", req)
		}
	}
	// Any answer from the runtime (this one: method not found) comes after
	// its events, which the client handles in order.
	if err := c.Call(ctx, "ping", struct{}{}, nil); err != nil && ctx.Err() != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := most
	mu.Unlock()
	if got != 256 || len(seen) != 0 {
		t.Fatalf("%d decisions at once (%d more queued), want 256", got, len(seen))
	}
	close(release)
	for range 256 {
		<-decisions
	}
}
