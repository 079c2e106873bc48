package client

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/tokenbroker/tokenbroker/actors"
)

// ErrTokenRejected: a turn failed because the model provider rejected the
// token tokenbroker served (it answered 401 to every retry). The client has
// invalidated the session's cached tokens; errors.As to *SessionError still
// gives the runtime's own report.
var ErrTokenRejected = errors.New("client: the model provider rejected the token tokenbroker served")

// errorTypeAuthentication is the session.error type of a turn whose model
// requests all got a 401 (Copilot CLI 1.0.102: three attempts).
const errorTypeAuthentication = "authentication"

// heal acts on a turn that failed because the provider rejected our token:
// it invalidates the session's provider tokens (a shared credential's too),
// so the next turn fetches a fresh one instead of the cached, rejected one,
// and returns ev with an error saying so. Any other event is returned as
// is. It runs on the connection's read loop; Router.Invalidate does not
// block.
func (s *Session) heal(ev Event) Event {
	if ev.Type != EventSessionError || len(s.providers) == 0 {
		return ev
	}
	var se *SessionError
	if !errors.As(ev.Err(), &se) || se.Type != errorTypeAuthentication {
		return ev
	}
	for _, name := range s.providers {
		_ = s.c.router.Invalidate(s.id, name) // fails only once the session is closed
	}
	ev.err = fmt.Errorf("%w (provider %s of session %s); its cached token was invalidated and the next turn fetches a fresh one: %w",
		ErrTokenRejected, quoted(s.providers), s.id, se)
	return ev
}

func providerNames(ps []actors.Provider) []string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Name
	}
	return names
}

func quoted(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}
