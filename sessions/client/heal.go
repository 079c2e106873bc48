package client

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

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

// heal acts on a turn that failed because the provider rejected our token:
// it invalidates the tokens of the session's providers that this side
// serves (a shared credential's too), so the next turn fetches a fresh one
// instead of the cached, rejected one, and returns ev with an error saying
// so. The runtime's message names the endpoint that answered 401; when it
// is one with a static key, nothing of ours was rejected. Any other event
// is returned as is. It runs on the connection's read loop;
// Router.Invalidate does not block.
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
	var invalidated []string
	for _, e := range suspects {
		if e.ours && s.c.router.Invalidate(s.id, e.name) == nil { // fails only once the session is closed
			invalidated = append(invalidated, e.name)
		}
	}
	if len(invalidated) == 0 {
		return ev
	}
	ev.err = fmt.Errorf("%w (%s of session %s); it was invalidated and the next turn fetches a fresh one: %w",
		ErrTokenRejected, providerList(invalidated), s.id, se)
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
