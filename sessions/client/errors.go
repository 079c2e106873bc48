package client

import (
	"errors"
	"fmt"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/sessions/client/internal/process"
)

// Errors of the client, usable with errors.Is.
var (
	// ErrNoCLI: Start found no runtime path in Options.CLIPath or
	// COPILOT_CLI_PATH.
	ErrNoCLI = errors.New("client: Copilot CLI not found: set Options.CLIPath or COPILOT_CLI_PATH")
	// ErrExited: the runtime started by Start exited. A failed Start
	// returns it with the exit status or signal and the end of the
	// runtime's stderr; once the runtime has exited, calls fail with
	// ErrClosed and it.
	ErrExited = process.ErrExited
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
	// ErrTokenRejected: a turn failed because the model provider rejected
	// the token tokenbroker served (it answered 401 to every retry). The
	// client has reported it (actors.Router.Rejected): the token is
	// dropped and the next turn fetches a fresh one, unless the rejected
	// token was itself fetched to replace a rejected one; then the error
	// also matches actors.ErrRejectedAgain, nothing is dropped, and the
	// fault is the provider's refusal of the identity (its role
	// assignment, say), which a fresh token cannot fix. errors.As to
	// *SessionError still gives the runtime's own report.
	ErrTokenRejected = errors.New("client: the model provider rejected the token tokenbroker served")
	// ErrAborted: the turn was aborted before it completed.
	ErrAborted = errors.New("client: turn aborted")
)

// SessionError is a session.error event: the runtime's errorType (e.g.
// "query", "authentication") and its message. A turn that failed because
// tokenbroker could not serve a token carries that error's text in the
// runtime's message, and the error itself: errors.Is matches its sentinel
// (actors.ErrCredential, actors.ErrTimeout, actors.ErrClosed...).
type SessionError struct {
	SessionID string
	Type      string
	Message   string
	cause     error // the session's failed token request, if its last one failed
}

func (e *SessionError) Error() string {
	return fmt.Sprintf("session %s: %s error: %s", e.SessionID, e.Type, e.Message)
}

// Is makes errors.Is(err, ErrSessionFailed) true.
func (e *SessionError) Is(target error) bool { return target == ErrSessionFailed }

// Unwrap is the failed token request behind the error, if any.
func (e *SessionError) Unwrap() error { return e.cause }

// callError is the runtime's error reply to method.
type callError struct {
	method string
	err    *jsonrpc2.Error
}

func (e *callError) Error() string   { return "client: " + e.method + ": " + e.err.Message }
func (e *callError) Unwrap() []error { return []error{ErrRuntime, e.err} }
