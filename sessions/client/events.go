package client

import "encoding/json"

// Event types that make up a turn. The runtime sends many more (model.*,
// session.usage_info, ...); they are delivered too, with their raw Data.
const (
	EventAssistantMessage = "assistant.message" // Data: content, messageId, originatingMessageId
	EventSessionError     = "session.error"     // Data: errorType, message, originatingMessageId
	EventSessionIdle      = "session.idle"      // the turn is over; Data: aborted when it was aborted
)

// Event types that, for a message of ours, start its turn (see turn.observe).
const (
	eventUserMessage    = "user.message"
	eventSessionWarning = "session.warning" // with warningType policy_blocked
)

// Event is one "session.event" notification of the runtime.
type Event struct {
	SessionID string
	Type      string
	// AgentID is set on events of a sub-agent, not of the session's own turn.
	AgentID string
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
		Type    string          `json:"type"`
		AgentID string          `json:"agentId"`
		Data    json.RawMessage `json:"data"`
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
		AgentID:   w.Event.AgentID,
		Data:      w.Event.Data,
	}, true
}
