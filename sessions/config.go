// Package sessions is the API a service calls: provider configs that carry
// a token callback, the rewriting of session.create and session.resume
// params for the wire, and opening a session's token routing on a
// connection's Router. It does not talk to a runtime itself: the runtime
// client is sessions/client, and a service that drives the runtime with its
// own JSON-RPC code needs only this package and transport.NewConn.
package sessions

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// DefaultProviderName is the name the runtime asks with for a session's
// whole-session provider.
const DefaultProviderName = "default"

// ProviderConfig is a BYOK provider as the runtime knows it, plus the token
// callback that stays on this side of the wire.
type ProviderConfig struct {
	Type        string            `json:"type,omitempty"`    // "openai", "azure", "anthropic"
	WireAPI     string            `json:"wireApi,omitempty"` // "completions" or "responses"
	BaseURL     string            `json:"baseUrl,omitempty"`
	APIKey      string            `json:"apiKey,omitempty"`
	BearerToken string            `json:"bearerToken,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"`
	Azure       *AzureOptions     `json:"azure,omitempty"`
	// Extra holds any other provider field (model limits, newer options),
	// sent as given. It cannot override the fields above.
	Extra map[string]any `json:"-"`

	// BearerTokenSource answers the runtime's token requests for this
	// provider. It is never serialized; its presence sets the wire flags.
	// A *actors.Credential shares one token cache among many sessions.
	BearerTokenSource tokens.Source `json:"-"`
	// BearerTokenScope is passed to the source and forwarded verbatim to
	// the runtime; unset means absent, never a default.
	BearerTokenScope string `json:"bearerTokenScope,omitempty"`
}

// AzureOptions are the Azure OpenAI specific settings.
type AzureOptions struct {
	APIVersion string `json:"apiVersion,omitempty"`
}

// NamedProviderConfig is one of a session's named providers.
type NamedProviderConfig struct {
	Name string
	ProviderConfig
}

// ModelConfig maps a model id of the session to a named provider.
type ModelConfig struct {
	ID        string         `json:"id"`
	Provider  string         `json:"provider,omitempty"`
	WireModel string         `json:"wireModel,omitempty"`
	Extra     map[string]any `json:"-"`
}

// SessionConfig is what session.create and session.resume carry.
type SessionConfig struct {
	// SessionID is chosen by the client so that the session's token
	// routing is open before the runtime can ask; empty: a random one.
	SessionID string
	// Model is the selected model: "<provider>/<id>" in the named form.
	Model     string
	Models    []ModelConfig
	Provider  *ProviderConfig       // the whole-session provider, asked for as "default"
	Providers []NamedProviderConfig // named providers
	// Extra holds every other session field (systemMessage, tools,
	// streaming, requestPermission...), sent untouched.
	Extra map[string]any
}

// Wire flags. 1.0.102 honours only hasBearerTokenProvider and ignores
// unknown fields, so sending both serves both dialects.
const (
	flagAcquire  = "bearerTokenProvider"
	flagGetToken = "hasBearerTokenProvider"
)

// MarshalJSON writes the provider for the wire: typed fields, Extra, and
// when a source is set, both token flags and the scope.
func (p ProviderConfig) MarshalJSON() ([]byte, error) {
	type plain ProviderConfig // drops this method
	return mergeJSON(plain(p), p.Extra, func(m map[string]any) {
		if p.BearerTokenSource != nil {
			m[flagAcquire] = true
			m[flagGetToken] = true
		}
	})
}

// MarshalJSON writes the named provider: its name, then the provider.
func (n NamedProviderConfig) MarshalJSON() ([]byte, error) {
	raw, err := n.ProviderConfig.MarshalJSON()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	m["name"] = n.Name
	return json.Marshal(m)
}

// MarshalJSON writes the model with its Extra fields.
func (c ModelConfig) MarshalJSON() ([]byte, error) {
	type plain ModelConfig
	return mergeJSON(plain(c), c.Extra, nil)
}

// mergeJSON marshals v as an object, adds extra fields that v does not set,
// then lets edit add the fields that must win.
func mergeJSON(v any, extra map[string]any, edit func(map[string]any)) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(extra) == 0 && edit == nil {
		return raw, nil
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	for k, v := range extra {
		if _, set := m[k]; !set {
			m[k] = v
		}
	}
	if edit != nil {
		edit(m)
	}
	return json.Marshal(m)
}

// Configuration mistakes WireParams, Open and the runtime client refuse
// before anything is sent; the error wrapping one names the provider and
// the field at fault. ErrNoCredential and ErrScopeRequired are the values
// actors and tokens use for the same mistakes (a nil Source, a Credential
// without the scope its Source needs), so one errors.Is test covers every
// way in.
var (
	ErrNoCredential    = actors.ErrNoCredential
	ErrScopeNoSource   = errors.New("BearerTokenScope is set but BearerTokenSource is nil")
	ErrTwoCredentials  = errors.New("BearerTokenSource is set together with APIKey or BearerToken")
	ErrScopeRequired   = tokens.ErrScopeRequired
	ErrProviderAndList = errors.New("Provider cannot be combined with Providers or Models (the runtime rejects it)")
)

// Params is a session.create or session.resume request body, ready for the
// wire.
type Params struct {
	SessionID string
	Body      json.RawMessage

	providers []actors.Provider // whose tokens this side answers, for Open
}

// WireParams checks cfg, then rewrites it for the wire: callbacks removed,
// both token flags and the scope added on every provider that has a source,
// every other field untouched. A provider whose source is a shared
// *actors.Credential and that sets no scope gets the credential's.
func WireParams(cfg SessionConfig) (Params, error) {
	if cfg.Provider != nil && (len(cfg.Providers) > 0 || len(cfg.Models) > 0) {
		return Params{}, fmt.Errorf("sessions: %w", ErrProviderAndList)
	}
	if cfg.SessionID == "" {
		cfg.SessionID = newSessionID()
	}
	var ps []actors.Provider
	add := func(name string, p *ProviderConfig) error {
		if strings.Contains(name, "/") {
			return fmt.Errorf("sessions: provider name %q contains '/', which the runtime rejects", name)
		}
		if err := p.check(); err != nil {
			return fmt.Errorf("sessions: provider %q: %w", name, err)
		}
		if p.BearerTokenSource == nil {
			return nil
		}
		for _, q := range ps {
			if q.Name == name {
				return fmt.Errorf("sessions: provider %q declared twice", name)
			}
		}
		ps = append(ps, actors.Provider{Name: name, Scope: p.BearerTokenScope, Source: p.BearerTokenSource})
		return nil
	}
	body := maps.Clone(cfg.Extra)
	if body == nil {
		body = map[string]any{}
	}
	body["sessionId"] = cfg.SessionID
	if cfg.Model != "" {
		body["model"] = cfg.Model
	}
	if len(cfg.Models) > 0 {
		body["models"] = cfg.Models
	}
	if cfg.Provider != nil {
		p := cfg.Provider.withCredentialScope()
		if err := add(DefaultProviderName, &p); err != nil {
			return Params{}, err
		}
		body["provider"] = p
	}
	if len(cfg.Providers) > 0 {
		named := make([]NamedProviderConfig, len(cfg.Providers)) // the caller's slice stays untouched
		for i, np := range cfg.Providers {
			if np.Name == "" {
				return Params{}, errors.New("sessions: named provider without a name")
			}
			named[i] = NamedProviderConfig{Name: np.Name, ProviderConfig: np.withCredentialScope()}
			if err := add(np.Name, &named[i].ProviderConfig); err != nil {
				return Params{}, err
			}
		}
		body["providers"] = named
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return Params{}, fmt.Errorf("sessions: encoding session params: %w", err)
	}
	return Params{SessionID: cfg.SessionID, Body: raw, providers: ps}, nil
}

// withCredentialScope returns p with a shared credential's scope when p sets
// none, so the scope is written once, on the credential, and still reaches
// the wire.
func (p ProviderConfig) withCredentialScope() ProviderConfig {
	if cred, ok := p.BearerTokenSource.(*actors.Credential); ok && cred != nil && p.BearerTokenScope == "" {
		p.BearerTokenScope = cred.Scope()
	}
	return p
}

// check refuses the provider mistakes the runtime would only report at the
// first turn, or never.
func (p *ProviderConfig) check() error {
	static := p.APIKey != "" || p.BearerToken != ""
	switch {
	case p.BearerTokenSource == nil && p.BearerTokenScope != "":
		return ErrScopeNoSource
	case p.BearerTokenSource == nil && !static:
		return fmt.Errorf("%w: set BearerTokenSource, APIKey or BearerToken", ErrNoCredential)
	case p.BearerTokenSource != nil && static:
		return ErrTwoCredentials
	}
	if r, ok := p.BearerTokenSource.(tokens.ScopeRequirer); ok && r.RequiresScope() && p.BearerTokenScope == "" {
		return fmt.Errorf("%w: set BearerTokenScope", ErrScopeRequired)
	}
	return nil
}

// Open rewrites cfg (see WireParams) and opens the session's token routing
// on router, the Router of the connection the params will be sent on. Send
// Params.Body as session.create or session.resume next; call
// router.CloseSession(Params.SessionID) if that request fails or when the
// session ends.
func Open(router *actors.Router, cfg SessionConfig) (Params, error) {
	p, err := WireParams(cfg)
	if err != nil {
		return Params{}, err
	}
	// The whole-session provider is registered under DefaultProviderName.
	if err := router.Open(p.SessionID, p.providers); err != nil {
		return Params{}, err
	}
	return p, nil
}

func newSessionID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return "tb-" + hex.EncodeToString(b[:])
}
