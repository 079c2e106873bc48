package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Event types a client usually acts on. The runtime sends many more
// (model.*, session.usage_info, ...); they are delivered too, with their raw
// Data.
const (
	EventUserMessage      = "user.message"
	EventAssistantMessage = "assistant.message" // Data: content, messageId, originatingMessageId
	EventSessionError     = "session.error"     // Data: errorType, message, originatingMessageId
	EventSessionIdle      = "session.idle"      // the turn is over; Data: aborted when it was aborted
	EventSessionWarning   = "session.warning"
	EventSessionShutdown  = "session.shutdown" // sent when the session is destroyed
)

// Event is one "session.event" notification of the runtime.
type Event struct {
	SessionID string
	Type      string
	ID        string
	ParentID  string
	// AgentID is set on events of a sub-agent, not of the session's own turn.
	AgentID   string
	Ephemeral bool
	Timestamp time.Time
	// Data is the event's payload as the runtime sent it.
	Data json.RawMessage

	err error // what Err reports instead, set when the client acted on it
}

// eventData holds the payload fields the client itself reads.
type eventData struct {
	MessageID            string `json:"messageId"`
	OriginatingMessageID string `json:"originatingMessageId"`
	Content              string `json:"content"`
	ErrorType            string `json:"errorType"`
	Message              string `json:"message"`
	WarningType          string `json:"warningType"`
	Aborted              bool   `json:"aborted"`
}

func (e Event) data() eventData {
	var d eventData
	_ = json.Unmarshal(e.Data, &d) // a payload of another shape reads as zero fields
	return d
}

// Content is the text of an assistant.message event ("" for other types).
func (e Event) Content() string {
	if e.Type != EventAssistantMessage {
		return ""
	}
	return e.data().Content
}

// Err returns the error a session.error event reports, nil for other types.
func (e Event) Err() error {
	if e.Type != EventSessionError {
		return nil
	}
	if e.err != nil {
		return e.err
	}
	d := e.data()
	return &SessionError{SessionID: e.SessionID, Type: d.ErrorType, Message: d.Message}
}

// wireEvent is the params of a session.event notification.
type wireEvent struct {
	SessionID string `json:"sessionId"`
	Event     struct {
		Type      string          `json:"type"`
		ID        string          `json:"id"`
		ParentID  string          `json:"parentId"`
		AgentID   string          `json:"agentId"`
		Ephemeral bool            `json:"ephemeral"`
		Timestamp time.Time       `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	} `json:"event"`
}

func decodeEvent(params *json.RawMessage) (Event, bool) {
	if params == nil {
		return Event{}, false
	}
	var w wireEvent
	if err := json.Unmarshal(*params, &w); err != nil || w.SessionID == "" || w.Event.Type == "" {
		return Event{}, false
	}
	return Event{
		SessionID: w.SessionID,
		Type:      w.Event.Type,
		ID:        w.Event.ID,
		ParentID:  w.Event.ParentID,
		AgentID:   w.Event.AgentID,
		Ephemeral: w.Event.Ephemeral,
		Timestamp: w.Event.Timestamp,
		Data:      w.Event.Data,
	}, true
}

// Errors of the client, usable with errors.Is.
var (
	// ErrNoCLI: no runtime path in Options.CLIPath or COPILOT_CLI_PATH.
	ErrNoCLI = errors.New("client: Copilot CLI not found: set Options.CLIPath or COPILOT_CLI_PATH")
	// ErrClosed: the client was closed or its runtime connection ended.
	ErrClosed = errors.New("client: runtime client closed")
	// ErrSessionClosed: the session was destroyed on this client.
	ErrSessionClosed = errors.New("client: session closed")
	// ErrRuntime: the runtime answered a request with a JSON-RPC error;
	// errors.As to *jsonrpc2.Error gives its code.
	ErrRuntime = errors.New("client: runtime refused the request")
	// ErrSessionFailed: the turn ended with a session.error event; errors.As
	// to *SessionError gives its type and message.
	ErrSessionFailed = errors.New("client: session error")
	// ErrAborted: the turn was aborted before it completed.
	ErrAborted = errors.New("client: turn aborted")
)

// SessionError is a session.error event: the runtime's errorType (e.g.
// "query", "authentication") and its message. A failing token callback shows
// up here, its message carried inside the runtime's.
type SessionError struct {
	SessionID string
	Type      string
	Message   string
}

func (e *SessionError) Error() string {
	return fmt.Sprintf("session %s: %s error: %s", e.SessionID, e.Type, e.Message)
}

// Is makes errors.Is(err, ErrSessionFailed) true.
func (e *SessionError) Is(target error) bool { return target == ErrSessionFailed }
