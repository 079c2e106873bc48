package runtimesim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/sourcegraph/jsonrpc2"
)

// maxToolRounds bounds the tool rounds of one model exchange: a script that
// always answers with tool calls would otherwise never end its turn.
const maxToolRounds = 8

// What the model is told a tool did. Nothing is executed: an approved tool
// "ran" with a fixed output; the other two are 1.0.102's wording.
const (
	simulatedOutput = "simulated: %s ran"
	rejectedOutput  = "The user rejected this tool call."
	noUserOutput    = "Permission denied and could not request permission from user. Copilot needed the user's approval and no one could answer."
)

// methodPermission is how the client answers a permission.requested event.
const methodPermission = "session.permissions.handlePendingPermissionRequest"

// errRejected ends a turn whose tool the client rejected without feedback:
// 1.0.102 then stops the turn (abort, user_initiated) instead of telling the
// model.
var errRejected = errors.New("tool call rejected without feedback")

// toolCall is one tool call of a model reply; arguments is the JSON text
// the model sent.
type toolCall struct{ id, name, arguments string }

// reply is one model answer.
type reply struct {
	text  string
	calls []toolCall
}

// exchange is the conversation a model request carries: the prompt, then
// each reply that called tools with the results sent back.
type exchange struct {
	prompt string
	rounds []toolRound
}

type toolRound struct {
	reply   reply
	results []string // one per call, in order
}

// chatMessages is ex as chat completions messages: each tool-calling
// reply as an assistant message with tool_calls, then a "tool" message per
// result.
func (ex *exchange) chatMessages() []any {
	msgs := []any{
		map[string]any{"role": "system", "content": "You are the tokenbroker runtime simulator."},
		map[string]any{"role": "user", "content": ex.prompt},
	}
	for _, r := range ex.rounds {
		calls := make([]any, len(r.reply.calls))
		for i, call := range r.reply.calls {
			calls[i] = map[string]any{"id": call.id, "type": "function",
				"function": map[string]any{"name": call.name, "arguments": call.arguments}}
		}
		msgs = append(msgs, map[string]any{"role": "assistant", "content": r.reply.text, "tool_calls": calls})
		for i, call := range r.reply.calls {
			msgs = append(msgs, map[string]any{"role": "tool", "tool_call_id": call.id, "content": r.results[i]})
		}
	}
	return msgs
}

// responsesInput is ex as Responses API input items: the user message,
// then a function_call and a function_call_output item per call.
func (ex *exchange) responsesInput() []any {
	items := []any{map[string]any{"role": "user", "content": ex.prompt}}
	for _, r := range ex.rounds {
		if r.reply.text != "" {
			items = append(items, map[string]any{"role": "assistant", "content": r.reply.text})
		}
		for i, call := range r.reply.calls {
			items = append(items,
				map[string]any{"type": "function_call", "call_id": call.id, "name": call.name, "arguments": call.arguments},
				map[string]any{"type": "function_call_output", "call_id": call.id, "output": r.results[i]})
		}
	}
	return items
}

// decision is the client's answer to one permission request.
type decision struct {
	approved bool
	feedback string
}

// argsJSON is a call's arguments as the events carry them: the object the
// model sent, or its text when that is not JSON.
func (t toolCall) argsJSON() any {
	if json.Valid([]byte(t.arguments)) {
		return json.RawMessage(t.arguments)
	}
	return t.arguments
}

// permissionRequest is the permissionRequest object of permission.requested
// in 1.0.102's shape for its shell and view tools; any other name is asked
// for as a custom tool (1.0.102 would answer that the tool does not exist).
func (t toolCall) permissionRequest() map[string]any {
	var args struct {
		Command     string `json:"command"`
		Description string `json:"description"`
		Path        string `json:"path"`
	}
	_ = json.Unmarshal([]byte(t.arguments), &args) // malformed arguments leave them empty
	switch t.name {
	case "bash":
		return map[string]any{
			"kind": "shell", "toolCallId": t.id,
			"fullCommandText": args.Command, "intention": args.Description,
			"commands":      []any{map[string]any{"identifier": args.Command, "readOnly": false}},
			"possiblePaths": []string{}, "possibleUrls": []string{},
			"hasWriteFileRedirection": false, "canOfferSessionApproval": false,
		}
	case "view":
		return map[string]any{"kind": "read", "toolCallId": t.id, "path": args.Path, "intention": "Read file: " + args.Path}
	}
	return map[string]any{"kind": "custom-tool", "toolCallId": t.id, "toolName": t.name, "toolDescription": "", "args": t.argsJSON()}
}

// runTools plays each call of r in order: tool.execution_start, then, in a
// session created with requestPermission, permission.requested and a wait
// for the client's decision (until ctx ends), then tool.execution_complete.
// Nothing is executed. It returns what the model is told of each call, or
// errRejected.
func (c *conn) runTools(ctx context.Context, jc *jsonrpc2.Conn, s *session, turnID string, r reply) ([]string, error) {
	results := make([]string, 0, len(r.calls))
	for _, call := range r.calls {
		c.emit(jc, s, "tool.execution_start", map[string]any{
			"toolCallId": call.id, "toolName": call.name, "arguments": call.argsJSON(), "turnId": turnID,
		}, false)
		var d decision
		c.mu.Lock()
		ask := s.askPermission
		c.mu.Unlock()
		if ask {
			var err error
			if d, err = c.askPermission(ctx, jc, s, call); err != nil {
				return nil, err
			}
		}
		done := map[string]any{"toolCallId": call.id, "success": d.approved, "turnId": turnID}
		var out string
		code := "denied"
		switch {
		case d.approved:
			out = fmt.Sprintf(simulatedOutput, call.name)
			done["result"] = map[string]any{"content": out}
		case !ask:
			out = noUserOutput
		case d.feedback == "":
			out, code = rejectedOutput, "rejected"
		default:
			out = rejectedOutput + " User feedback: " + d.feedback
		}
		if !d.approved {
			done["error"] = map[string]any{"code": code, "message": out}
		}
		c.rt.count(func(st *Stats) { st.ToolCalls++ })
		c.emit(jc, s, "tool.execution_complete", done, false)
		if code == "rejected" {
			return nil, errRejected
		}
		results = append(results, out)
	}
	return results, nil
}

// askPermission sends permission.requested for call and waits for the
// client's handlePendingPermissionRequest, as 1.0.102 does (without limit),
// or until ctx ends (abort, destroy, the connection closing).
func (c *conn) askPermission(ctx context.Context, jc *jsonrpc2.Conn, s *session, call toolCall) (decision, error) {
	id := newID()
	answer := make(chan decision, 1)
	c.mu.Lock()
	s.pending[id] = answer // before the event: the client may answer at once
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(s.pending, id)
		c.mu.Unlock()
	}()
	c.emit(jc, s, "permission.requested", map[string]any{
		"requestId": id, "permissionRequest": call.permissionRequest(),
	}, false)
	var d decision
	select {
	case d = <-answer:
	case <-ctx.Done():
		return d, ctx.Err()
	}
	result := map[string]any{"kind": "approved"}
	if !d.approved {
		result = map[string]any{"kind": "denied-interactively-by-user", "feedback": d.feedback}
	}
	c.emit(jc, s, "permission.completed", map[string]any{"requestId": id, "toolCallId": call.id, "result": result}, false)
	return d, nil
}

// handlePermission handles session.permissions.handlePendingPermissionRequest
// {sessionId, requestId, result: {kind: "approve-once"} | {kind: "reject",
// feedback}}: {success: true} when a tool was waiting for it, {success:
// false} for a request id that is not pending (answered, or its turn ended).
func (c *conn) handlePermission(req *jsonrpc2.Request) (any, *jsonrpc2.Error) {
	id, fields, rpcErr := sessionIDParam(req, "Missing sessionId parameter")
	if rpcErr != nil {
		return nil, rpcErr
	}
	var requestID string
	var result struct {
		Kind     string `json:"kind"`
		Feedback string `json:"feedback"`
	}
	if json.Unmarshal(fields["requestId"], &requestID) != nil || requestID == "" {
		return nil, failed(req.Method, "requestId must be a non-empty string")
	}
	if json.Unmarshal(fields["result"], &result) != nil {
		return nil, failed(req.Method, "result must be an object")
	}
	var d decision
	switch result.Kind {
	case "approve-once":
		d.approved = true
	case "reject":
		d.feedback = result.Feedback
	default:
		return nil, failed(req.Method, "the simulator answers result kinds approve-once and reject, not %q", result.Kind)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sessions[id]
	if !ok {
		return nil, failed(req.Method, "Session not found for sessionId: %s", id)
	}
	answer, ok := s.pending[requestID]
	if !ok {
		return map[string]any{"success": false}, nil
	}
	delete(s.pending, requestID) // a second answer finds nothing
	answer <- d
	return map[string]any{"success": true}, nil
}
