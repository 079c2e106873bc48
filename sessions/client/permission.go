package client

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/sessions"
)

// The Copilot CLI (1.0.102) asks for a tool's permission with a session
// event, not a request: permission.requested carries a requestId, and the
// tool waits until the client calls handlePendingPermissionRequest with it.
// It does so only for sessions created with "requestPermission": true,
// which the client sets unless the config says otherwise; without it the
// CLI denies every tool that needs approval by itself.
const (
	EventToolStart           = "tool.execution_start"    // Data: toolCallId, toolName, arguments
	EventPermissionRequested = "permission.requested"    // Data: requestId, permissionRequest
	EventToolComplete        = "tool.execution_complete" // Data: toolCallId, success, result or error
)

// methodPermissionDecision answers a permission.requested event.
const methodPermissionDecision = "session.permissions.handlePendingPermissionRequest"

// PermissionRequest is the runtime asking to run a tool.
type PermissionRequest struct {
	SessionID  string
	ToolCallID string
	// Tool and Arguments are the call's, from the tool.execution_start
	// event that preceded the request ("" and nil if there was none).
	Tool      string
	Arguments json.RawMessage
	// Kind is what the runtime asks for: "shell", "write", "read", "url",
	// "mcp", "custom-tool", ...
	Kind string
	// Detail is the runtime's permissionRequest object as it sent it
	// (for a shell command: fullCommandText, commands, possiblePaths...).
	Detail json.RawMessage
}

// PermissionDecision answers a PermissionRequest.
type PermissionDecision struct {
	Allow bool
	// Reason is shown to the model when the tool is denied, and the turn
	// goes on. Empty: Copilot CLI 1.0.102 ends the turn instead, as if the
	// user had aborted it.
	Reason string
}

// PermissionHandler decides whether a tool may run. It runs in a goroutine
// of its own; ctx ends when the client closes.
type PermissionHandler func(ctx context.Context, req PermissionRequest) PermissionDecision

// DenyReason is the reason a client without Options.Permission gives the
// model for denying a tool.
const DenyReason = "this service allows the model no tools (tokenbroker client.Options.Permission)"

// denyAll denies every tool: the default, since a tool a model may call
// runs with the runtime's rights (see the README's security section).
func denyAll(context.Context, PermissionRequest) PermissionDecision {
	return PermissionDecision{Reason: DenyReason}
}

// maxPendingCalls bounds the tool calls remembered until their permission
// request, and the decisions in progress: a runtime cannot make the client
// hold more, whatever it sends.
const maxPendingCalls = 256

// decisionTimeout bounds sending one decision: a runtime that does not
// answer handlePendingPermissionRequest does not keep its goroutine.
const decisionTimeout = 30 * time.Second

// permissions answers a client's permission requests.
type permissions struct {
	decide PermissionHandler
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	slots  chan struct{} // one per decision in progress

	mu    sync.Mutex
	calls map[toolCallKey]toolCall
}

type toolCallKey struct{ session, id string }

type toolCall struct {
	name string
	args json.RawMessage
}

func newPermissions(decide PermissionHandler, log *slog.Logger) *permissions {
	if decide == nil {
		decide = denyAll
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &permissions{decide: decide, log: log, ctx: ctx, cancel: cancel,
		slots: make(chan struct{}, maxPendingCalls), calls: map[toolCallKey]toolCall{}}
}

// observe reads the session events that concern permissions. It runs on the
// connection's read loop: the decision runs in a goroutine of its own.
func (p *permissions) observe(c *Client, ev Event) {
	switch ev.Type {
	case EventToolComplete:
		// Most tools run without asking: forget them when they end, or
		// their starts would fill the table.
		var d struct {
			ToolCallID string `json:"toolCallId"`
		}
		if json.Unmarshal(ev.Data, &d) == nil {
			p.mu.Lock()
			delete(p.calls, toolCallKey{ev.SessionID, d.ToolCallID})
			p.mu.Unlock()
		}
	case EventToolStart:
		var d struct {
			ToolCallID string          `json:"toolCallId"`
			ToolName   string          `json:"toolName"`
			Arguments  json.RawMessage `json:"arguments"`
		}
		if json.Unmarshal(ev.Data, &d) != nil || d.ToolCallID == "" {
			return
		}
		p.mu.Lock()
		if len(p.calls) < maxPendingCalls {
			p.calls[toolCallKey{ev.SessionID, d.ToolCallID}] = toolCall{d.ToolName, d.Arguments}
		}
		p.mu.Unlock()
	case EventPermissionRequested:
		var d struct {
			RequestID         string          `json:"requestId"`
			PermissionRequest json.RawMessage `json:"permissionRequest"`
		}
		if json.Unmarshal(ev.Data, &d) != nil || d.RequestID == "" {
			return
		}
		var detail struct {
			Kind       string `json:"kind"`
			ToolCallID string `json:"toolCallId"`
		}
		_ = json.Unmarshal(d.PermissionRequest, &detail) // a shape of another version leaves them empty
		key := toolCallKey{ev.SessionID, detail.ToolCallID}
		p.mu.Lock()
		call := p.calls[key]
		delete(p.calls, key)
		p.mu.Unlock()
		req := PermissionRequest{
			SessionID: ev.SessionID, ToolCallID: detail.ToolCallID,
			Tool: call.name, Arguments: call.args,
			Kind: detail.Kind, Detail: d.PermissionRequest,
		}
		select {
		case p.slots <- struct{}{}:
		default:
			// The runtime asks for more at once than any turn needs; its
			// tool waits, as the turn of a runtime that floods its client
			// deserves.
			p.log.Warn("tokenbroker: too many permission requests in progress; one left unanswered", "session", req.SessionID, "limit", maxPendingCalls)
			return
		}
		p.wg.Go(func() {
			defer func() { <-p.slots }()
			p.answer(c, d.RequestID, req)
		})
	}
}

// answer asks the handler and sends its decision.
func (p *permissions) answer(c *Client, requestID string, req PermissionRequest) {
	decision := p.decide(p.ctx, req)
	result := map[string]any{"kind": "approve-once"}
	if !decision.Allow {
		result = map[string]any{"kind": "reject", "feedback": decision.Reason}
	}
	// The tool name and kind only: arguments may hold anything.
	p.log.Info("tokenbroker: tool permission", "session", req.SessionID, "tool", req.Tool, "kind", req.Kind, "allowed", decision.Allow)
	ctx, cancel := context.WithTimeout(p.ctx, decisionTimeout)
	defer cancel()
	err := c.call(ctx, methodPermissionDecision, map[string]any{
		"sessionId": req.SessionID, "requestId": requestID, "result": result,
	}, nil)
	if err != nil && p.ctx.Err() == nil {
		p.log.Warn("tokenbroker: sending a permission decision failed", "session", req.SessionID, "error", err)
	}
}

// stop cancels the decisions in progress and waits for them.
func (p *permissions) stop() {
	p.cancel()
	p.wg.Wait()
}

// askPermission makes the runtime ask this client for every tool's
// permission, unless cfg says otherwise.
func askPermission(cfg sessions.SessionConfig) sessions.SessionConfig {
	if _, set := cfg.Extra["requestPermission"]; set {
		return cfg
	}
	cfg.Extra = maps.Clone(cfg.Extra)
	if cfg.Extra == nil {
		cfg.Extra = map[string]any{}
	}
	cfg.Extra["requestPermission"] = true
	return cfg
}
