package actors

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/tokenbroker/tokenbroker/internal/requestobs"
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
	if nilSource(src) {
		return nil, fmt.Errorf("tokenbroker: NewCredential %q: %w: its Source is nil", name, ErrNoCredential)
	}
	if _, nested := src.(*Credential); nested {
		return nil, errors.New("tokenbroker: NewCredential: a Credential cannot wrap another")
	}
	if r, ok := src.(tokens.ScopeRequirer); ok && r.RequiresScope() && scope == "" {
		return nil, fmt.Errorf("tokenbroker: NewCredential %q: %w", name, tokens.ErrScopeRequired)
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

// nilSource reports a Source that can only panic: nil, or a nil value of a
// func, pointer or other nillable type in a non-nil interface (a var
// declared as tokens.Func and never set).
func nilSource(src tokens.Source) bool {
	if src == nil {
		return true
	}
	switch v := reflect.ValueOf(src); v.Kind() {
	case reflect.Func, reflect.Pointer, reflect.Map, reflect.Chan, reflect.Slice, reflect.Interface:
		return v.IsNil()
	}
	return false
}

// Name and Scope are the credential's identity.
func (c *Credential) Name() string  { return c.p.name }
func (c *Credential) Scope() string { return c.p.scope }

// Token serves the shared cached token, refreshing it as the policy says.
// The request's fields are ignored: the token is the credential's.
func (c *Credential) Token(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
	g, err := c.grant(ctx)
	if err != nil {
		return tokens.Token{}, &contextError{prefix: fmt.Sprintf("shared credential %q: ", c.p.name), err: err}
	}
	return g.Token, nil
}

// BearerToken serves the credential's token in the shape of the official
// copilot-sdk Go client's BearerTokenProvider callback, so that the whole
// integration is
//
//	BearerTokenProvider: func(a copilot.ProviderTokenArgs) (string, error) {
//		return cred.BearerToken(a.SessionID, a.ProviderName)
//	}
//
// It serves from the same cache, with the same single flight, as every
// session using c; the session id and provider name only label the
// request's span and error (the Source is asked as for any shared
// credential). The callback has no context, so every call is bounded by
// the broker's RequestTimeout. Each call is recorded as a token request
// over a connection is: a span named tracing.SpanCallback and the request
// metrics with dialect tracing.DialectCallback.
//
// For a per-session or per-tenant source, give each its own Credential
// and Close it when it is no longer used.
func (c *Credential) BearerToken(sessionID, providerName string) (string, error) {
	ctx, rec := c.p.b.requests.Start(context.Background(), requestobs.Callback, sessionID, providerName)
	g, err := c.grant(ctx)
	if err != nil {
		err = &contextError{prefix: fmt.Sprintf("session %q: provider %q: shared credential %q: ", sessionID, providerName, c.p.name), err: err}
		rec.Failed(ctx, err.Error())
		return "", err
	}
	rec.Served(ctx, g.Outcome.String(), g.Token.ExpiresOn)
	return g.Token.Value, nil
}

// grant serves from the snapshot when it can, else asks the actor.
func (c *Credential) grant(ctx context.Context) (Grant, error) {
	if g, ok := c.p.cached(ctx, c.p.b.clock.Now()); ok {
		return g, nil
	}
	return c.p.b.acquire(ctx, c.p, c.pid, &acquire{provider: c.p.name}, nil, c.done)
}

// Invalidate drops the cached token: the next request refreshes. Use it when
// the provider rejects the token (a 401), or the runtime's retry of a 401
// would be served the same rejected token from the cache.
func (c *Credential) Invalidate() { c.p.invalidate() }

// Close stops the credential: once it returns, no request gets its token;
// its refreshes end and the sessions still using it get errors. The broker
// closes every credential when it closes.
func (c *Credential) Close() {
	c.once.Do(func() {
		c.p.closed.Store(true)
		c.p.invalidate()
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
