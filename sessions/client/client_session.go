package client

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// Session is a runtime session created or resumed by a Client, with its
// token routing open on the client's connection.
type Session struct {
	c         *Client
	id        string
	endpoints []endpoint // the session's providers, for heal

	dropped atomic.Int64

	mu      sync.Mutex
	events  chan Event // nil when the client keeps no events
	turns   map[*turn]struct{}
	err     error // why the session closed; nil while open
	done    chan struct{}
	destroy sync.Once
}

func newSession(c *Client, id string, endpoints []endpoint, buffer int) *Session {
	s := &Session{c: c, id: id, endpoints: endpoints, turns: map[*turn]struct{}{}, done: make(chan struct{})}
	if buffer > 0 {
		s.events = make(chan Event, buffer)
	}
	return s
}

// ID is the session id.
func (s *Session) ID() string { return s.id }

// Events delivers the session's events in the order the runtime sent them.
// The channel holds Options.EventBuffer events; when the reader falls
// behind, the oldest unread event is dropped (see DroppedEvents), so an
// unread channel costs bounded memory. It is closed when the session
// closes. Nil when Options.EventBuffer is negative.
func (s *Session) Events() <-chan Event { return s.events }

// DroppedEvents counts events dropped because Events was not read.
func (s *Session) DroppedEvents() int64 { return s.dropped.Load() }

// Done is closed when the session is destroyed or its client closes.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the session closed (ErrSessionClosed or ErrClosed), nil while
// it is open.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Send queues a prompt and returns the runtime's message id; the answer
// comes as events on Events, up to EventSessionIdle.
func (s *Session) Send(ctx context.Context, prompt string) (string, error) {
	if err := s.Err(); err != nil {
		return "", err
	}
	var res struct {
		MessageID string `json:"messageId"`
	}
	err := s.c.call(ctx, methodSend, map[string]any{"sessionId": s.id, "prompt": prompt}, &res)
	return res.MessageID, err
}

// SendAndWait sends a prompt and waits until the runtime says the turn is
// over. It returns the turn's last assistant message, a *SessionError
// (errors.Is ErrSessionFailed) when the turn ended with session.error,
// ErrAborted when it was aborted, or ctx's error. Giving up on ctx does not
// abort the turn on the runtime; call Abort for that.
func (s *Session) SendAndWait(ctx context.Context, prompt string) (string, error) {
	t := &turn{session: s.id, done: make(chan struct{})}
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return "", err
	}
	s.turns[t] = struct{}{} // before the send: events may precede its answer
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.turns, t)
		s.mu.Unlock()
	}()

	id, err := s.Send(ctx, prompt)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	t.admit(id)
	s.mu.Unlock()
	select {
	case <-t.done:
		return t.answer, t.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Abort stops the turn in progress; the session stays usable.
func (s *Session) Abort(ctx context.Context) error {
	if err := s.Err(); err != nil {
		return err
	}
	return s.c.call(ctx, methodAbort, map[string]any{"sessionId": s.id}, nil)
}

// SwitchModel selects another of the session's models ("<provider>/<id>"
// in the named form) for the next turns.
func (s *Session) SwitchModel(ctx context.Context, model string) error {
	if err := s.Err(); err != nil {
		return err
	}
	var res struct {
		ModelID  string `json:"modelId"`
		Deferred bool   `json:"deferred"`
	}
	if err := s.c.call(ctx, methodSwitchModel, map[string]any{"sessionId": s.id, "modelId": model}, &res); err != nil {
		return err
	}
	if res.ModelID != "" && res.ModelID != model && !res.Deferred {
		return fmt.Errorf("client: %s: runtime selected %q instead of %q", methodSwitchModel, res.ModelID, model)
	}
	return nil
}

// Destroy ends the session on the runtime (session.destroy), then closes
// its token routing and event delivery, whatever the runtime answered.
// Waiting SendAndWait calls return ErrSessionClosed. The Copilot CLI keeps
// the session's history in its COPILOT_HOME: ResumeSession can bring it
// back later.
func (s *Session) Destroy(ctx context.Context) error {
	err := ErrSessionClosed
	s.destroy.Do(func() {
		err = s.Err()
		if err != nil {
			return
		}
		// Only an explicit false means an unknown session: an empty
		// result is success.
		var res struct {
			Success *bool `json:"success"`
		}
		err = s.c.call(ctx, methodDestroy, map[string]any{"sessionId": s.id}, &res)
		if err == nil && res.Success != nil && !*res.Success {
			err = fmt.Errorf("client: %s: the runtime does not know session %q", methodDestroy, s.id)
		}
		s.c.forget(s, ErrSessionClosed)
	})
	return err
}

// deliver hands an event to the waiting turns and to Events. It runs on the
// connection's read loop and never blocks.
func (s *Session) deliver(ev Event) {
	ev = s.heal(s.explain(ev))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if relevant(ev) {
		for t := range s.turns {
			t.observe(ev)
		}
	}
	if s.events == nil {
		return
	}
	for {
		select {
		case s.events <- ev:
			return
		default:
		}
		select {
		case <-s.events: // drop the oldest to make room
			s.dropped.Add(1)
		default:
		}
	}
}

// shutdown closes the session locally: turns fail with reason, Events
// closes.
func (s *Session) shutdown(reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = reason
	for t := range s.turns {
		t.finish("", reason)
	}
	if s.events != nil {
		close(s.events)
	}
	close(s.done)
}

// maxEarlyEvents bounds what a turn keeps while its send is in flight.
const maxEarlyEvents = 64

// turn follows one SendAndWait, with the rules of the official SDK's
// sendAndWait: the turn is the runtime's answer to our message id, and it
// ends at the session.idle that follows, or at a session.error for it.
// Guarded by its session's mu.
type turn struct {
	session  string
	msgID    string
	admitted bool    // msgID is known
	early    []Event // events seen before msgID was known
	started  bool    // the runtime began working on our message
	answer   string
	err      error
	done     chan struct{}
	finished bool
}

func relevant(ev Event) bool {
	switch ev.Type {
	case eventUserMessage, EventAssistantMessage, EventSessionIdle, EventSessionError, eventSessionWarning:
		return ev.AgentID == "" // a sub-agent's events are not the turn's
	}
	return false
}

func (t *turn) admit(msgID string) {
	t.msgID, t.admitted = msgID, true
	early := t.early
	t.early = nil
	for _, ev := range early {
		t.observe(ev)
	}
}

func (t *turn) observe(ev Event) {
	if t.finished {
		return
	}
	if !t.admitted {
		if len(t.early) < maxEarlyEvents {
			t.early = append(t.early, ev)
		}
		return
	}
	d := ev.data()
	switch ev.Type {
	case eventUserMessage:
		if d.MessageID == t.msgID {
			t.started = true
		}
	case eventSessionWarning:
		if d.WarningType == "policy_blocked" && d.OriginatingMessageID == t.msgID {
			t.started = true
		}
	case EventAssistantMessage:
		if d.OriginatingMessageID == t.msgID || (d.OriginatingMessageID == "" && t.started) {
			t.answer = d.Content
			t.started = true
		}
	case EventSessionIdle:
		if !t.started {
			return
		}
		if d.Aborted {
			t.finish("", fmt.Errorf("session %s: %w", t.session, ErrAborted))
			return
		}
		t.finish(t.answer, nil)
	case EventSessionError:
		if d.OriginatingMessageID == "" || d.OriginatingMessageID == t.msgID {
			t.finish("", ev.Err())
		}
	}
}

func (t *turn) finish(answer string, err error) {
	if t.finished {
		return
	}
	t.finished = true
	t.answer, t.err = answer, err
	close(t.done)
}
