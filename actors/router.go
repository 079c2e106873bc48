package actors

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// Provider declares one of a session's bearer-token providers.
type Provider struct {
	// Name is the provider name the runtime asks with ("default" for a
	// session's whole-session provider).
	Name string
	// Scope is the configured scope, passed to the Source; a request naming
	// another non-empty scope is refused.
	Scope string
	// Source supplies the tokens. A *Credential shares its cache with every
	// other session that uses it; any other Source gets a cache of its own.
	Source tokens.Source
}

// Router is the session registry of one runtime connection.
type Router struct {
	b        *Broker
	mu       sync.RWMutex
	sessions map[string]*session
	closed   bool
}

// Open registers a session's providers. Call it before the session.create
// (or session.resume) request goes out, so the runtime's first token request
// finds the session.
func (r *Router) Open(sessionID string, providers []Provider) error {
	if sessionID == "" {
		return errors.New("tokenbroker: Open: empty session id")
	}
	s := &session{id: sessionID, routes: make([]route, 0, len(providers)), done: make(chan struct{})}
	for _, pv := range providers {
		if pv.Name == "" {
			return fmt.Errorf("tokenbroker: Open %q: a provider has no name", sessionID)
		}
		if nilSource(pv.Source) {
			return fmt.Errorf("tokenbroker: Open %q: provider %q: %w: its Source is nil", sessionID, pv.Name, ErrNoCredential)
		}
		if s.route(pv.Name) != nil {
			return fmt.Errorf("tokenbroker: Open %q: provider %q declared twice", sessionID, pv.Name)
		}
		// Filled in place: a route holds an atomic and is never copied.
		s.routes = s.routes[:len(s.routes)+1]
		rt := &s.routes[len(s.routes)-1]
		rt.name, rt.scope = pv.Name, pv.Scope
		if c, ok := pv.Source.(*Credential); ok {
			if c.p.b != r.b {
				return fmt.Errorf("tokenbroker: Open %q: %s belongs to another broker", sessionID, c)
			}
			if pv.Scope != "" && pv.Scope != c.p.scope {
				return fmt.Errorf("tokenbroker: Open %q: provider %q: %w: scope %q differs from %s scope %q", sessionID, pv.Name, ErrScopeMismatch, pv.Scope, c, c.p.scope)
			}
			if c.closed() {
				return fmt.Errorf("tokenbroker: Open %q: %w", sessionID, closedError(c.String()))
			}
			rt.p, rt.scope = c.p, c.p.scope // the credential's scope is the provider's
		} else {
			rt.p = &provider{b: r.b, name: pv.Name, scope: pv.Scope, src: pv.Source}
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.b.closedError("connection")
	}
	if _, dup := r.sessions[sessionID]; dup {
		return newError(ErrSessionExists, nil, "session %q is already registered on this connection", sessionID)
	}
	for i := range s.routes {
		if c := s.routes[i].p.shared; c != nil {
			c.hold()
		}
	}
	s.pid = r.b.spawn(newSessionProps(r.b, s))
	r.sessions[sessionID] = s
	return nil
}

// CloseSession stops a session's routing: its pending requests fail at
// once, its per-session providers stop, and shared credentials it used lose
// a reference.
func (r *Router) CloseSession(sessionID string) error {
	r.mu.Lock()
	s := r.sessions[sessionID]
	delete(r.sessions, sessionID)
	r.mu.Unlock()
	if s == nil {
		return unknownSession(sessionID)
	}
	s.close(r.b.root)
	return nil
}

// Close closes every session of this connection. Call it when the
// connection ends.
func (r *Router) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	all := r.sessions
	r.sessions = nil
	r.mu.Unlock()
	for _, s := range all {
		s.close(r.b.root)
	}
	r.b.forget(r)
}

// Len is the number of open sessions.
func (r *Router) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.sessions)
}

func (r *Router) lookup(req tokens.Request) (*session, *route, error) {
	r.mu.RLock()
	s := r.sessions[req.SessionID]
	closed := r.closed
	r.mu.RUnlock()
	if s == nil {
		if closed {
			// Not the runtime's mistake: say what ended the session.
			return nil, nil, &contextError{prefix: fmt.Sprintf("session %q: provider %q: ", req.SessionID, req.ProviderName), err: r.b.closedError("connection")}
		}
		return nil, nil, &contextError{prefix: fmt.Sprintf("provider %q: ", req.ProviderName), err: unknownSession(req.SessionID)}
	}
	rt := s.route(req.ProviderName)
	if rt == nil {
		return s, nil, unknownProvider(req.SessionID, req.ProviderName)
	}
	if req.Scope != "" && req.Scope != rt.scope {
		return s, nil, newError(ErrScopeMismatch, nil, "provider %q in session %q is not configured for scope %q", req.ProviderName, req.SessionID, req.Scope)
	}
	return s, rt, nil
}

// Acquire answers a token request: from the cache when it can, else by
// asking the session's provider actor, within the broker's RequestTimeout
// or ctx's deadline, whichever comes first. req.Scope may be empty (the
// getToken dialect sends none); a non-empty one must be the configured one.
func (r *Router) Acquire(ctx context.Context, req tokens.Request) (Grant, error) {
	s, rt, err := r.lookup(req)
	if err != nil {
		if s != nil {
			s.noteFailure(err)
		}
		return Grant{}, err
	}
	if g, ok := rt.p.cached(ctx, r.b.clock.Now()); ok {
		s.noteServed(rt, g)
		return g, nil
	}
	var credDone <-chan struct{}
	if c := rt.p.shared; c != nil {
		credDone = c.done
	}
	g, err := r.b.acquire(ctx, rt.p, s.pid, &acquire{session: s.id, provider: rt.name}, s.done, credDone)
	if err != nil {
		err = s.named(rt, err)
		s.noteFailure(err)
		return g, err
	}
	s.noteServed(rt, g)
	return g, nil
}

// LastError is the error the latest token request of a session got: nil
// if it was served, or none came. The runtime reports a turn that failed
// for want of a token with only this error's text; LastError gives the
// error itself, for errors.Is. Once the connection has closed, it is the
// reason (ErrClosed) for every session.
func (r *Router) LastError(sessionID string) error {
	r.mu.RLock()
	s := r.sessions[sessionID]
	closed := r.closed
	r.mu.RUnlock()
	switch {
	case s != nil:
		if f := s.failure.Load(); f != nil {
			return f.err
		}
	case closed:
		return r.b.closedError("connection")
	}
	return nil
}

// Invalidate drops the cached token of a session's provider (of the shared
// credential, if it uses one): the next request refreshes.
func (r *Router) Invalidate(sessionID, providerName string) error {
	_, rt, err := r.lookup(tokens.Request{SessionID: sessionID, ProviderName: providerName})
	if err != nil {
		return err
	}
	rt.p.invalidate()
	return nil
}

// Rejected reports that the model provider rejected the token last served
// to a session's provider (it answered 401, and the runtime's own retries
// with the same token failed too). If that token is still cached, it is
// dropped so that the next request fetches a fresh one: a token revoked or
// rotated early heals by itself. However many sessions report one token,
// it is dropped once.
//
// A token fetched to replace a rejected one is not dropped: a provider
// that refuses the identity (a missing role assignment, say) rejects every
// token, and dropping each would cost the identity endpoint one call per
// failed turn, for every tenant sharing it. Rejected then returns an error
// matching ErrRejectedAgain that says so.
func (r *Router) Rejected(sessionID, providerName string) error {
	s, rt, err := r.lookup(tokens.Request{SessionID: sessionID, ProviderName: providerName})
	if err != nil {
		return err
	}
	if err := rt.p.rejected(rt.served.Load(), r.b.clock.Now()); err != nil {
		return s.named(rt, err)
	}
	return nil
}

// acquire sends m to pid, the actor of p or of its session, and waits for
// the answer, the deadline, or the end of the session or credential (a nil
// channel never fires).
func (b *Broker) acquire(ctx context.Context, p *provider, pid *actor.PID, m *acquire, sessionDone, credDone <-chan struct{}) (Grant, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	ch := make(chan reply, 1)
	m.ctx, m.reply = ctx, ch
	b.root.Send(pid, m)
	select {
	case rep := <-ch:
		return rep.grant, rep.err
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			if p.slotWaiters.Load() > 0 {
				return Grant{}, slotTimeout(time.Since(start), b.calls.busy(p))
			}
			return Grant{}, timedOut(time.Since(start), nil)
		}
		return Grant{}, ctx.Err()
	case <-sessionDone:
		return Grant{}, b.closedError("session")
	case <-credDone:
		return Grant{}, b.closedError("shared credential")
	}
}
