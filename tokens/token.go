// Package tokens holds the values a bearer-token callback deals in: the
// token, the request it answers, the Source a service implements, and the
// refresh policy as pure functions of time.
//
// It imports nothing else from tokenbroker, so a credential adapter can be
// written against it alone.
package tokens

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Sentinel errors for tokens a Source must never hand out.
var (
	ErrEmptyToken   = errors.New("tokens: empty token")
	ErrBearerPrefix = errors.New(`tokens: token already starts with "Bearer "`)
)

// Token is what a Source returns. A zero ExpiresOn makes it a bare,
// single-use token (the Go form of a callback returning a plain string): it
// is never cached and the Source runs again for the next request.
type Token struct {
	Value     string
	ExpiresOn time.Time // zero: bare, single use
	RefreshOn time.Time // optional hint from the issuer, e.g. azidentity's RefreshOn
}

// Bare reports whether t carries no expiry and so must not be cached.
func (t Token) Bare() bool { return t.ExpiresOn.IsZero() }

// Validate rejects values the runtime would forward verbatim and that no
// provider accepts: an empty token (sent as "Bearer ") and one that already
// carries the scheme (sent as "Bearer Bearer ...").
func (t Token) Validate() error {
	if t.Value == "" {
		return ErrEmptyToken
	}
	if len(t.Value) >= 7 && strings.EqualFold(t.Value[:7], "bearer ") {
		return ErrBearerPrefix
	}
	return nil
}

// String never shows the value; it gives a fingerprint and the expiry so a
// Token can be printed or logged by accident without leaking.
func (t Token) String() string {
	if t.Bare() {
		return fmt.Sprintf("token(%s, bare)", Fingerprint(t.Value))
	}
	return fmt.Sprintf("token(%s, expires %s)", Fingerprint(t.Value), t.ExpiresOn.UTC().Format(time.RFC3339))
}

// GoString keeps %#v from printing the value.
func (t Token) GoString() string { return t.String() }

// LogValue keeps slog from printing the value.
func (t Token) LogValue() slog.Value { return slog.StringValue(t.String()) }

// Fingerprint identifies a token value in logs and tests without revealing
// it: the first 8 hex digits of its SHA-256.
func Fingerprint(value string) string {
	if value == "" {
		return "empty"
	}
	sum := sha256.Sum256([]byte(value))
	return hex.EncodeToString(sum[:4])
}

// Request is what a Source is asked for. For a credential shared by many
// sessions (see actors.Credential) SessionID is empty: the token is not any
// one session's.
type Request struct {
	SessionID    string
	ProviderName string
	Scope        string // the provider's configured scope; "" when none was set
}

// Source supplies tokens. It is always called with a deadline and should
// honour ctx. A provider calls its Source once per refresh, but a Source that
// gives bare tokens is called once per request, so possibly concurrently.
type Source interface {
	Token(ctx context.Context, req Request) (Token, error)
}

// Func adapts a plain callback to Source.
type Func func(ctx context.Context, req Request) (Token, error)

// Token calls f.
func (f Func) Token(ctx context.Context, req Request) (Token, error) { return f(ctx, req) }

// BareFunc adapts a callback that returns a plain string: every token it
// gives is single use.
type BareFunc func(ctx context.Context, req Request) (string, error)

// Token calls f and wraps the string as a bare token.
func (f BareFunc) Token(ctx context.Context, req Request) (Token, error) {
	v, err := f(ctx, req)
	return Token{Value: v}, err
}

// Static returns a Source that always gives the same token. Meant for tests
// and examples; a token with an expiry stops being useful once it passes.
func Static(t Token) Source {
	return Func(func(context.Context, Request) (Token, error) { return t, nil })
}

// ScopeRequirer is implemented by a Source that cannot issue a token without
// a scope (azidentity credentials need one). Configuration code refuses such
// a Source without a scope, with an error matching ErrScopeRequired, when
// the session opens or the credential is made, not at its first turn.
type ScopeRequirer interface {
	RequiresScope() bool
}

// ErrScopeRequired: a Source that needs a scope (see ScopeRequirer) was
// configured or asked without one.
var ErrScopeRequired = errors.New("tokens: the Source needs a scope")
