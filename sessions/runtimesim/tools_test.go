package runtimesim

import (
	"encoding/json"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
)

// shellCall is the tool call the scripted model makes.
const shellCall = `{"command":"env","description":"print the environment"}`

// toolModel answers a request without tool results with one bash call, and
// the next with "done" and the tool result it received.
func toolModel(t *testing.T) *fakemodel.Server {
	return fake(t, fakemodel.Options{Respond: func(r fakemodel.Request) fakemodel.Response {
		if len(r.ToolResults) == 0 {
			return fakemodel.Response{ToolCalls: []fakemodel.ToolCall{{ID: "call-1", Name: "bash", Arguments: shellCall}}}
		}
		return fakemodel.Response{Text: "done: " + r.ToolResults[0].Content}
	}})
}

// toolSetup is one dialect, with the wire API each test runs it over (so
// both dialects and both wire APIs are covered).
type toolSetup struct {
	dialect Dialect
	wireAPI string
}

var toolSetups = []toolSetup{{GetToken, "completions"}, {Acquire, "responses"}}

// startToolSession connects to a new Runtime of s.dialect and creates
// session "s1" on model, asking for tool permissions when askPermission.
func startToolSession(t *testing.T, s toolSetup, model *fakemodel.Server, askPermission bool) (*Runtime, *client) {
	rt := New(Options{Dialect: s.dialect})
	c := connect(t, rt, tokenN)
	params := wholeSessionParams("s1", map[string]any{
		"type": "openai", "baseUrl": model.URL(), "wireApi": s.wireAPI,
		"hasBearerTokenProvider": true, "bearerTokenProvider": true,
	})
	if askPermission {
		params["requestPermission"] = true
	}
	c.call("session.create", params)
	return rt, c
}

// permissionAsked checks the events of the bash call up to its permission
// request and returns the request id.
func permissionAsked(t *testing.T, c *client) string {
	t.Helper()
	var start struct {
		ToolCallID, ToolName string
		Arguments            json.RawMessage
	}
	if err := json.Unmarshal(c.next("s1", "tool.execution_start").ev.Event.Data, &start); err != nil {
		t.Fatal(err)
	}
	if start.ToolCallID != "call-1" || start.ToolName != "bash" || !sameJSON(string(start.Arguments), shellCall) {
		t.Fatalf("tool.execution_start = %+v", start)
	}
	n := c.next("s1", "permission.requested")
	var asked struct {
		RequestID         string
		PermissionRequest map[string]any
	}
	if err := json.Unmarshal(n.ev.Event.Data, &asked); err != nil {
		t.Fatal(err)
	}
	pr := asked.PermissionRequest
	if asked.RequestID == "" || pr["kind"] != "shell" || pr["toolCallId"] != "call-1" ||
		pr["fullCommandText"] != "env" || pr["intention"] != "print the environment" {
		t.Fatalf("permission.requested = %s", n.raw)
	}
	return asked.RequestID
}

// decide answers a permission request and returns the reply's success.
func decide(t *testing.T, c *client, requestID string, result map[string]any) bool {
	t.Helper()
	var res struct{ Success bool }
	raw := c.call(methodPermission, map[string]any{"sessionId": "s1", "requestId": requestID, "result": result})
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	return res.Success
}

// toolResults returns the tool results each model request carried.
func toolResults(model *fakemodel.Server) [][]fakemodel.ToolResult {
	var out [][]fakemodel.ToolResult
	for _, r := range model.Requests() {
		out = append(out, r.ToolResults)
	}
	return out
}

// An approved tool call: the next model request carries the simulated
// output, a token is asked for before it, and the turn ends with the
// model's text.
func TestToolCallApproved(t *testing.T) {
	for _, s := range toolSetups {
		t.Run(s.dialect.String(), func(t *testing.T) {
			model := toolModel(t)
			rt, c := startToolSession(t, s, model, true)
			c.call("session.send", map[string]any{"sessionId": "s1", "prompt": "print the environment"})
			id := permissionAsked(t, c)
			if !decide(t, c, id, map[string]any{"kind": "approve-once"}) {
				t.Fatal("approve-once answered success false")
			}
			var completed struct {
				RequestID, ToolCallID string
				Result                struct{ Kind string }
			}
			if err := json.Unmarshal(c.next("s1", "permission.completed").ev.Event.Data, &completed); err != nil {
				t.Fatal(err)
			}
			if completed.RequestID != id || completed.ToolCallID != "call-1" || completed.Result.Kind != "approved" {
				t.Fatalf("permission.completed = %+v", completed)
			}
			var done struct {
				ToolCallID string
				Success    bool
				Result     struct{ Content string }
			}
			if err := json.Unmarshal(c.next("s1", "tool.execution_complete").ev.Event.Data, &done); err != nil {
				t.Fatal(err)
			}
			if done.ToolCallID != "call-1" || !done.Success || done.Result.Content != "simulated: bash ran" {
				t.Fatalf("tool.execution_complete = %+v", done)
			}
			texts, sessErr := c.turnResult("s1")
			if sessErr != nil || !reflect.DeepEqual(texts, []string{"done: simulated: bash ran"}) {
				t.Fatalf("turn: %q %v", texts, sessErr)
			}
			want := [][]fakemodel.ToolResult{nil, {{CallID: "call-1", Content: "simulated: bash ran"}}}
			if got := toolResults(model); !reflect.DeepEqual(got, want) {
				t.Fatalf("tool results sent to the model %+v, want %+v", got, want)
			}
			if trs := rt.TokenRequests(); len(trs) != 2 || trs[0].Fingerprint != fingerprint("tok-1") || trs[1].Fingerprint != fingerprint("tok-2") {
				t.Fatalf("token requests %+v, want one before each model request", trs)
			}
			if got := bearers(model); !reflect.DeepEqual(got, []string{"tok-1", "tok-2"}) {
				t.Fatalf("model requests carried %d tokens, want tok-1 then tok-2", len(got))
			}
			if st := rt.Stats(); st.ToolCalls != 1 || st.ModelRequests != 2 || st.TurnErrors != 0 {
				t.Fatalf("stats %+v", st)
			}
			if decide(t, c, id, map[string]any{"kind": "approve-once"}) {
				t.Fatal("a second answer to the same request was accepted")
			}
		})
	}
}

// turnEvents returns the session's events up to its session.idle.
func turnEvents(t *testing.T, c *client, sessionID string) []note {
	t.Helper()
	var evs []note
	for {
		n := c.next(sessionID, "*")
		evs = append(evs, n)
		if n.ev.Event.Type == "session.idle" {
			return evs
		}
	}
}

// A rejected tool call: the model is told the client's feedback in the
// CLI's words.
func TestToolCallRejected(t *testing.T) {
	for _, s := range toolSetups {
		t.Run(s.dialect.String(), func(t *testing.T) {
			model := toolModel(t)
			_, c := startToolSession(t, s, model, true)
			c.call("session.send", map[string]any{"sessionId": "s1", "prompt": "print the environment"})
			if !decide(t, c, permissionAsked(t, c), map[string]any{"kind": "reject", "feedback": "not on this host"}) {
				t.Fatal("reject answered success false")
			}
			var completed struct {
				Result struct{ Kind, Feedback string }
			}
			if err := json.Unmarshal(c.next("s1", "permission.completed").ev.Event.Data, &completed); err != nil {
				t.Fatal(err)
			}
			if completed.Result.Kind != "denied-interactively-by-user" || completed.Result.Feedback != "not on this host" {
				t.Fatalf("permission.completed = %+v", completed)
			}
			const told = "The user rejected this tool call. User feedback: not on this host"
			texts, sessErr := c.turnResult("s1")
			if sessErr != nil || !reflect.DeepEqual(texts, []string{"done: " + told}) {
				t.Fatalf("turn: %q %v", texts, sessErr)
			}
			if got := toolResults(model); len(got) != 2 || len(got[1]) != 1 || got[1][0].Content != told {
				t.Fatalf("tool results sent to the model %+v", got)
			}
		})
	}
}

// Without requestPermission the runtime denies the tool itself: no
// permission request, and the model gets 1.0.102's message.
func TestToolCallDeniedWithoutRequestPermission(t *testing.T) {
	for _, s := range toolSetups {
		t.Run(s.dialect.String(), func(t *testing.T) {
			model := toolModel(t)
			rt, c := startToolSession(t, s, model, false)
			c.call("session.send", map[string]any{"sessionId": "s1", "prompt": "print the environment"})
			var types []string
			var texts []string
			var done struct {
				Success bool
				Error   struct{ Code, Message string }
			}
			for _, n := range turnEvents(t, c, "s1") {
				types = append(types, n.ev.Event.Type)
				switch n.ev.Event.Type {
				case "assistant.message":
					var d struct{ Content string }
					_ = json.Unmarshal(n.ev.Event.Data, &d)
					texts = append(texts, d.Content)
				case "tool.execution_complete":
					_ = json.Unmarshal(n.ev.Event.Data, &done)
				}
			}
			want := []string{"session.start", "user.message", "assistant.message", "tool.execution_start", "tool.execution_complete", "assistant.message", "session.idle"}
			if !reflect.DeepEqual(types, want) {
				t.Fatalf("events %v, want %v", types, want)
			}
			if done.Success || done.Error.Code != "denied" || done.Error.Message != noUserOutput {
				t.Fatalf("tool.execution_complete = %+v", done)
			}
			if !reflect.DeepEqual(texts, []string{"", "done: " + noUserOutput}) {
				t.Fatalf("assistant texts %q", texts)
			}
			if st := rt.Stats(); st.ToolCalls != 1 || st.ModelRequests != 2 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// session.abort ends a turn waiting for a permission decision: the model is
// not asked again and a late decision finds nothing pending.
func TestToolCallWaitingEndedByAbort(t *testing.T) {
	for _, s := range toolSetups {
		t.Run(s.dialect.String(), func(t *testing.T) {
			model := toolModel(t)
			_, c := startToolSession(t, s, model, true)
			c.call("session.send", map[string]any{"sessionId": "s1", "prompt": "print the environment"})
			id := permissionAsked(t, c)
			c.call("session.abort", map[string]any{"sessionId": "s1"})
			var types []string
			var idle struct{ Aborted bool }
			for _, n := range turnEvents(t, c, "s1") {
				types = append(types, n.ev.Event.Type)
				if n.ev.Event.Type == "session.idle" {
					_ = json.Unmarshal(n.ev.Event.Data, &idle)
				}
			}
			if !reflect.DeepEqual(types, []string{"abort", "session.idle"}) || !idle.Aborted {
				t.Fatalf("events after abort %v (aborted %t), want abort then session.idle {aborted: true}", types, idle.Aborted)
			}
			if decide(t, c, id, map[string]any{"kind": "approve-once"}) {
				t.Fatal("a decision after the abort was accepted")
			}
			if n := model.Count(); n != 1 {
				t.Fatalf("%d model requests, want 1", n)
			}
		})
	}
}

// A model that calls tools in every answer ends the turn with session.error
// after maxToolRounds tool rounds.
func TestToolRoundsBounded(t *testing.T) {
	for _, s := range toolSetups {
		t.Run(s.dialect.String(), func(t *testing.T) {
			model := fake(t, fakemodel.Options{Respond: func(fakemodel.Request) fakemodel.Response {
				return fakemodel.Response{ToolCalls: []fakemodel.ToolCall{{Name: "bash", Arguments: shellCall}}}
			}})
			rt, c := startToolSession(t, s, model, false)
			_, sessErr := c.send("s1", "loop")
			if msg, _ := sessErr["message"].(string); sessErr["errorType"] != "query" || !strings.Contains(msg, "after 8 tool rounds") {
				t.Fatalf("session.error = %v", sessErr)
			}
			if st := rt.Stats(); st.ToolCalls != maxToolRounds || st.ModelRequests != maxToolRounds+1 || st.TurnErrors != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// session.destroy ends a turn waiting for a permission decision: no
// goroutine is left waiting in askPermission.
func TestToolCallWaitingEndedByDestroy(t *testing.T) {
	model := toolModel(t)
	_, c := startToolSession(t, toolSetups[0], model, true)
	c.call("session.send", map[string]any{"sessionId": "s1", "prompt": "print the environment"})
	permissionAsked(t, c)
	if !waiting() {
		t.Fatal("no turn waiting for the decision before destroy")
	}
	c.call("session.destroy", map[string]any{"sessionId": "s1"})
	for deadline := time.Now().Add(waitFor); waiting(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the destroyed session's turn still waits for its permission decision")
		}
	}
}

// waiting tells whether a goroutine waits in askPermission.
func waiting() bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "runtimesim.(*conn).askPermission")
}

// A rejection without feedback stops the turn, as 1.0.102 does: the tool
// completes "rejected", an abort event and a plain session.idle follow, and
// the model is not asked again.
func TestToolCallRejectedWithoutFeedbackEndsTurn(t *testing.T) {
	for _, s := range toolSetups {
		t.Run(s.dialect.String(), func(t *testing.T) {
			model := toolModel(t)
			rt, c := startToolSession(t, s, model, true)
			c.call("session.send", map[string]any{"sessionId": "s1", "prompt": "print the environment"})
			if !decide(t, c, permissionAsked(t, c), map[string]any{"kind": "reject"}) {
				t.Fatal("reject answered success false")
			}
			var types []string
			var done struct {
				Success bool
				Error   struct{ Code, Message string }
			}
			var idle map[string]any
			for _, n := range turnEvents(t, c, "s1") {
				types = append(types, n.ev.Event.Type)
				switch n.ev.Event.Type {
				case "tool.execution_complete":
					_ = json.Unmarshal(n.ev.Event.Data, &done)
				case "session.idle":
					_ = json.Unmarshal(n.ev.Event.Data, &idle)
				}
			}
			want := []string{"permission.completed", "tool.execution_complete", "abort", "session.idle"}
			if !reflect.DeepEqual(types, want) || !reflect.DeepEqual(idle, map[string]any{"mode": "interactive"}) {
				t.Fatalf("events %v (idle %v), want %v with a plain idle", types, idle, want)
			}
			if done.Success || done.Error.Code != "rejected" || done.Error.Message != "The user rejected this tool call." {
				t.Fatalf("tool.execution_complete = %+v", done)
			}
			if st := rt.Stats(); st.ModelRequests != 1 || st.ToolCalls != 1 || st.TurnErrors != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}
