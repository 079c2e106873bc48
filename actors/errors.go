package actors

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors, usable with errors.Is. The messages the runtime sees are
// longer: they name the session and provider involved.
var (
	ErrUnknownSession  = errors.New("session not registered")
	ErrUnknownProvider = errors.New("no bearer-token provider registered")
	ErrSessionExists   = errors.New("session already registered")
	ErrScopeMismatch   = errors.New("scope not configured for provider")
	ErrCredential      = errors.New("credential failed")
	ErrInvalidToken    = errors.New("credential returned an invalid token")
	ErrTimeout         = errors.New("token request timed out")
	ErrBackoff         = errors.New("credential failing, waiting before the next try")
	ErrClosed          = errors.New("closed")
)

// brokerError carries a readable message and matches both its sentinel and
// the underlying cause with errors.Is.
type brokerError struct {
	kind  error
	msg   string
	cause error
}

func (e *brokerError) Error() string { return e.msg }
func (e *brokerError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}

func newError(kind, cause error, format string, args ...any) error {
	return &brokerError{kind: kind, msg: fmt.Sprintf(format, args...), cause: cause}
}

func unknownSession(id string) error {
	return newError(ErrUnknownSession, nil, "session %q is not registered on this connection", id)
}

func unknownProvider(session, name string) error {
	return newError(ErrUnknownProvider, nil, "no bearer-token provider registered for provider %q in session %q", name, session)
}

func timedOut(after time.Duration) error {
	return newError(ErrTimeout, nil, "token request timed out after %s", after.Round(time.Millisecond))
}

// contextError puts the names a reader needs (session, provider, shared
// credential) in front of an error raised where they are not all known.
type contextError struct {
	prefix string
	err    error
}

func (e *contextError) Error() string { return e.prefix + e.err.Error() }
func (e *contextError) Unwrap() error { return e.err }

func closedError(what string) error {
	return newError(ErrClosed, nil, "%s closed", what)
}
