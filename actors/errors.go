package actors

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sentinel errors, usable with errors.Is; the messages are longer and name
// the session, provider and credential involved. A turn that failed for
// want of a token matches them too, through the client's *SessionError.
//
//	sentinel            when                                  what to do
//	ErrNoCredential     Open or NewCredential got a nil       give the provider a Source
//	                    Source (a tokens.Func never set)
//	ErrSessionExists    Open of an id open on the Router      close it first, or use another id
//	ErrScopeMismatch    a scope other than the configured     configure one scope; a shared
//	                    one (a shared Credential's)           Credential's is its providers'
//	ErrUnknownSession   a token request for a session not     open it before session.create
//	                    open on this connection               (sessions.Open does)
//	ErrUnknownProvider  a token request for a provider the    declare that provider with a Source
//	                    session did not declare
//	ErrCredential       the Source failed (its words,         fix what it says: identity endpoint,
//	                    scrubbed, follow) or panicked         secret, network; a panic is logged
//	ErrInvalidToken     the Source returned "" or "Bearer …"  fix the Source
//	ErrTimeout          no answer within RefreshTimeout or    the endpoint hangs: check network,
//	                    the request's deadline                proxy, authority host
//	ErrNoCallSlot       the deadline passed while the call    calls of other credentials hold the
//	                    waited for a slot of the call limit   limit: raise MaxConcurrentCalls
//	ErrBackoff          the credential failed moments ago     nothing: it is tried again at the
//	                    (also matches that failure)           time the message gives
//	ErrRejectedAgain    the model provider rejected a token   give the identity access to the model
//	                    fetched to replace a rejected one     (its role assignment)
//	ErrClosed           the broker, connection, session or    reconnect, or stop using it
//	                    Credential closed
var (
	ErrUnknownSession  = errors.New("session not registered")
	ErrUnknownProvider = errors.New("no bearer-token provider registered")
	ErrSessionExists   = errors.New("session already registered")
	ErrScopeMismatch   = errors.New("scope not configured for provider")
	ErrNoCredential    = errors.New("no credential")
	ErrCredential      = errors.New("credential failed")
	ErrInvalidToken    = errors.New("credential returned an invalid token")
	ErrTimeout         = errors.New("token request timed out")
	ErrNoCallSlot      = errors.New("no credential call slot free")
	ErrRejectedAgain   = errors.New("the model provider rejected a freshly fetched token too")
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

// The one wording of each failure a caller can see. A credential's own
// message appears only where it says what went wrong (a failed call), and
// then scrubbed by the caller of failed.

func unknownSession(id string) error {
	return newError(ErrUnknownSession, nil, "session %q is not registered on this connection", id)
}

func unknownProvider(session, name string) error {
	return newError(ErrUnknownProvider, nil, "no bearer-token provider registered for provider %q in session %q", name, session)
}

// timedOut: the credential gave no answer within d, whoever's deadline
// ended the wait (the call's RefreshTimeout or the request's own).
func timedOut(d time.Duration, cause error) error {
	return newError(ErrTimeout, cause, "timed out: credential did not answer within %s", roundDuration(d))
}

// slotTimeout: the request's deadline passed while its credential call was
// still waiting for a slot of the broker's call limit; the credential was
// never asked.
func slotTimeout(waited time.Duration, busy string) error {
	return newError(ErrNoCallSlot, nil, "waited %s for a credential call slot: %s", roundDuration(waited), busy)
}

// rejectedAgain: the model provider rejected a token fetched to replace
// one it had rejected.
func rejectedAgain(age time.Duration) error {
	return newError(ErrRejectedAgain, nil, "rejected again with a token fetched %s ago: the provider refuses this identity; check its role assignment", roundDuration(age))
}

// failed carries the credential's own message, already scrubbed.
func failed(cause error, scrubbed string) error {
	return newError(ErrCredential, cause, "credential failed: %s", scrubbed)
}

func invalidToken(cause error) error {
	return newError(ErrInvalidToken, cause, "credential returned an invalid token: %s", trimPrefix(cause.Error()))
}

func closedError(what string) error {
	return newError(ErrClosed, nil, "%s closed", what)
}

// backingOff repeats the last failure and says when the credential will be
// tried again.
func backingOff(last error, retryAt, now time.Time) error {
	return newError(ErrBackoff, last, "%s; next try in %s (at %s)",
		last.Error(), roundDuration(retryAt.Sub(now)), retryAt.UTC().Format("15:04:05 UTC"))
}

// roundDuration keeps the digits a reader needs: whole seconds from one
// second up, hundredths below.
func roundDuration(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Second)
	}
	return d.Round(10 * time.Millisecond)
}

// trimPrefix drops a "pkg: " prefix from a sentinel's message.
func trimPrefix(s string) string {
	if i := strings.Index(s, ": "); i >= 0 && !strings.Contains(s[:i], " ") {
		return s[i+2:]
	}
	return s
}

// contextError puts the names a reader needs (session, provider, shared
// credential) in front of an error raised where they are not all known.
type contextError struct {
	prefix string
	err    error
}

func (e *contextError) Error() string { return e.prefix + e.err.Error() }
func (e *contextError) Unwrap() error { return e.err }
