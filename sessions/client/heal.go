package client

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
)

// errorTypeAuthentication is the session.error type of a turn whose model
// requests all got a 401 (Copilot CLI 1.0.102: three attempts).
const errorTypeAuthentication = "authentication"

// endpoint is one provider of a session: its name, its base URL, and
// whether this side serves its tokens.
type endpoint struct {
	name    string
	baseURL string
	ours    bool
}

// endpoints lists cfg's providers, the whole-session one under
// sessions.DefaultProviderName.
func endpoints(cfg sessions.SessionConfig) []endpoint {
	var es []endpoint
	add := func(name string, p *sessions.ProviderConfig) {
		es = append(es, endpoint{name: name, baseURL: strings.TrimSuffix(p.BaseURL, "/"), ours: p.BearerTokenSource != nil})
	}
	if cfg.Provider != nil {
		add(sessions.DefaultProviderName, cfg.Provider)
	}
	for i := range cfg.Providers {
		add(cfg.Providers[i].Name, &cfg.Providers[i].ProviderConfig)
	}
	return es
}

// explain gives a session.error the error of the session's token request,
// when its last one failed: the runtime asks for a token before every
// model request, so a turn that ends that way failed for want of a token,
// and the runtime's report keeps only the error's text.
func (s *Session) explain(ev Event) Event {
	if ev.Type != EventSessionError || ev.err != nil {
		return ev
	}
	if cause := s.c.router.LastError(s.id); cause != nil {
		d := ev.data()
		ev.err = &SessionError{SessionID: ev.SessionID, Type: d.ErrorType, Message: d.Message, cause: cause}
	}
	return ev
}

// heal acts on a turn that failed because the provider rejected our token:
// it reports the rejection to the Router for each of the session's
// providers that this side serves (see actors.Router.Rejected), so the
// next turn fetches a fresh token instead of the cached, rejected one,
// and returns ev with an error saying so. When the rejected token was
// itself fresh, fetched to replace a rejected one, nothing is dropped and
// the error says the provider refuses the identity. The runtime's message
// names the endpoint that answered 401; when it is one with a static key,
// nothing of ours was rejected. Any other event is returned as is. It runs
// on the connection's read loop; Router.Rejected does not block.
func (s *Session) heal(ev Event) Event {
	if ev.Type != EventSessionError {
		return ev
	}
	var se *SessionError
	if !errors.As(ev.Err(), &se) || se.Type != errorTypeAuthentication {
		return ev
	}
	suspects := s.endpoints
	var named []endpoint
	for _, e := range s.endpoints {
		if e.baseURL != "" && strings.Contains(se.Message, e.baseURL) {
			named = append(named, e)
		}
	}
	if len(named) > 0 {
		suspects = named
	}
	var healed []string
	var refused []error
	for _, e := range suspects {
		if !e.ours {
			continue
		}
		switch err := s.c.router.Rejected(s.id, e.name); {
		case err == nil:
			healed = append(healed, e.name)
		case errors.Is(err, actors.ErrRejectedAgain):
			refused = append(refused, err)
		}
		// Any other error: the session is closed, nothing to heal.
	}
	switch {
	case len(refused) > 0:
		ev.err = fmt.Errorf("%w: %w: %w", ErrTokenRejected, errors.Join(refused...), se)
	case len(healed) > 0:
		ev.err = fmt.Errorf("%w (%s of session %s); it was invalidated and the next turn fetches a fresh one: %w",
			ErrTokenRejected, providerList(healed), s.id, se)
	}
	return ev
}

// providerList names providers for a message: provider "a", providers "a", "b".
func providerList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	if len(q) == 1 {
		return "provider " + q[0]
	}
	return "providers " + strings.Join(q, ", ")
}
