package actors

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// Credential is a token cache shared explicitly by many sessions' providers:
// one credential and scope, one refresh at a time, whatever the number of
// sessions. Sharing is never implicit: two tenants with two Credentials
// never see each other's tokens, even for the same provider name.
//
// A Credential is itself a tokens.Source; give it as a provider's Source to
// share it. It asks its own Source with an empty SessionID, since its token
// belongs to no one session.
type Credential struct {
	p    *provider
	pid  *actor.PID
	refs atomic.Int64 // sessions using it
	done chan struct{}
	once sync.Once
}

// NewCredential starts a shared credential named name (the ProviderName its
// Source is asked with) for scope.
func (b *Broker) NewCredential(name, scope string, src tokens.Source) (*Credential, error) {
	if src == nil {
		return nil, errors.New("tokenbroker: NewCredential: nil Source")
	}
	if _, nested := src.(*Credential); nested {
		return nil, errors.New("tokenbroker: NewCredential: a Credential cannot wrap another")
	}
	if r, ok := src.(tokens.ScopeRequirer); ok && r.RequiresScope() && scope == "" {
		return nil, fmt.Errorf("tokenbroker: NewCredential %q: its Source needs a scope", name)
	}
	c := &Credential{done: make(chan struct{})}
	c.p = &provider{b: b, name: name, scope: scope, src: src, shared: c}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, closedError("broker")
	}
	c.pid = b.spawn(newProviderProps(c.p))
	b.creds[c] = struct{}{}
	return c, nil
}

// Name and Scope are the credential's identity.
func (c *Credential) Name() string  { return c.p.name }
func (c *Credential) Scope() string { return c.p.scope }

// Token serves the shared cached token, refreshing it as the policy says.
// The request's fields are ignored: the token is the credential's.
func (c *Credential) Token(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
	if tok, ok := c.p.cached(ctx, c.p.b.clock.Now()); ok {
		return tok, nil
	}
	g, err := c.p.b.acquire(ctx, c.pid, &acquire{provider: c.p.name}, nil, c.done)
	if err != nil {
		return tokens.Token{}, &contextError{prefix: fmt.Sprintf("shared credential %q: ", c.p.name), err: err}
	}
	return g.Token, nil
}

// Invalidate drops the cached token: the next request refreshes. Use it when
// the provider rejects the token (a 401), or the runtime's retry of a 401
// would be served the same rejected token from the cache.
func (c *Credential) Invalidate() {
	c.p.snap.Store(nil)
	c.p.b.root.Send(c.pid, invalidate{})
}

// Close stops the credential: its refreshes end and the sessions still using
// it get errors. The broker closes every credential when it closes.
func (c *Credential) Close() {
	c.once.Do(func() {
		close(c.done)
		b := c.p.b
		b.mu.Lock()
		delete(b.creds, c)
		b.mu.Unlock()
		b.root.Stop(c.pid)
	})
}

func (c *Credential) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// hold and release count the sessions using c; with none left its
// background refreshes stop.
func (c *Credential) hold() { c.refs.Add(1) }

func (c *Credential) release() {
	if c.refs.Add(-1) == 0 {
		c.p.b.root.Send(c.pid, released{})
	}
}

func (c *Credential) String() string { return fmt.Sprintf("credential %q", c.p.name) }
