package runtimesim

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// defaultModel is what 1.0.102 selects when session.create has no model.
const defaultModel = "claude-sonnet-4"

// wholeSession is the provider name of the whole-session `provider`.
const wholeSession = "default"

// providerConfig is the part of a provider object the simulator uses.
type providerConfig struct {
	name        string
	typ         string
	baseURL     string
	wireAPI     string
	apiKey      string // secret
	bearerToken string // secret
	scope       string
	// askClient: the dialect's flag is set, so tokens come from the client.
	askClient bool
}

// sessionConfig is a session's model selection.
type sessionConfig struct {
	modelID   string          // as the client gave it (modelState.modelId)
	provider  *providerConfig // nil: no BYOK provider resolves (GitHub-hosted fallback)
	wireModel string
	// The named form's registry, kept so session.model.switchTo can
	// select another model.
	models json.RawMessage
	byName map[string]*providerConfig
}

// switchTo selects another model of the named registry.
func (c *sessionConfig) switchTo(model string) error {
	if c.byName == nil {
		return errors.New("the session has no provider registry to switch models in")
	}
	prov, wire, err := resolveModel(c.models, c.byName, model)
	if err != nil {
		return err
	}
	c.modelID, c.provider, c.wireModel = model, prov, wire
	return nil
}

type openParams struct {
	id           string
	cfg          sessionConfig
	hasProviders bool // provider or providers was given
	// requestPermission: tools wait for the client's permission decision.
	requestPermission bool
}

// parseOpen validates session.create / session.resume params the way 1.0.102
// does (messages copied from it, with serde's wording). Like the real
// runtime it accepts a named-form model that does not resolve (no "/", an
// unknown provider or id): such a session falls back to GitHub-hosted models
// and its turns fail.
func parseOpen(method string, raw *json.RawMessage, d Dialect) (openParams, error) {
	var p openParams
	var fields map[string]json.RawMessage
	if raw == nil || json.Unmarshal(*raw, &fields) != nil || fields == nil {
		return p, errors.New("session lifecycle params must be an object")
	}
	if v, ok := present(fields, "sessionId"); ok {
		if json.Unmarshal(v, &p.id) != nil {
			return p, fmt.Errorf("%s sessionId must be a string", method)
		}
	}
	if err := boolField(fields, "requestPermission", &p.requestPermission); err != nil {
		return p, fmt.Errorf("%s requestPermission: %w", method, err)
	}
	p.cfg.modelID = defaultModel
	if v, ok := present(fields, "model"); ok {
		if json.Unmarshal(v, &p.cfg.modelID) != nil {
			return p, fmt.Errorf("%s model must be a string", method)
		}
	}
	single, hasSingle := present(fields, "provider")
	providers, hasNamed := present(fields, "providers")
	models, hasModels := present(fields, "models")
	if hasSingle && (hasNamed || hasModels) {
		return p, errors.New("Cannot combine the legacy singular `provider` option with the `providers`/`models` registry.")
	}
	p.hasProviders = hasSingle || hasNamed
	switch {
	case hasSingle:
		pc, err := parseProvider(single, false, d)
		if err != nil {
			return p, fmt.Errorf("Invalid provider configuration: %w", err)
		}
		p.cfg.provider, p.cfg.wireModel = pc, p.cfg.modelID
	case hasNamed || hasModels:
		byName, err := parseNamed(providers, d)
		if err != nil {
			return p, err
		}
		p.cfg.provider, p.cfg.wireModel, err = resolveModel(models, byName, p.cfg.modelID)
		if err != nil {
			return p, err
		}
		p.cfg.models, p.cfg.byName = models, byName
	}
	return p, nil
}

// present returns a field unless it is absent or null (serde's None).
func present(fields map[string]json.RawMessage, key string) (json.RawMessage, bool) {
	v, ok := fields[key]
	if !ok || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		return nil, false
	}
	return v, true
}

func parseNamed(raw json.RawMessage, d Dialect) (map[string]*providerConfig, error) {
	var list []json.RawMessage
	if raw != nil && json.Unmarshal(raw, &list) != nil {
		return nil, fmt.Errorf("Invalid named provider configuration: invalid type: %s, expected a sequence", describe(raw, false))
	}
	byName := map[string]*providerConfig{}
	for _, item := range list {
		pc, err := parseProvider(item, true, d)
		if err != nil {
			return nil, fmt.Errorf("Invalid named provider configuration: %w", err)
		}
		if strings.Contains(pc.name, "/") {
			return nil, fmt.Errorf("BYOK provider name %q must not contain \"/\".", pc.name)
		}
		if byName[pc.name] != nil {
			return nil, fmt.Errorf("Duplicate BYOK provider name %q.", pc.name)
		}
		byName[pc.name] = pc
	}
	return byName, nil
}

// resolveModel checks the models registry and resolves "<provider>/<id>".
func resolveModel(raw json.RawMessage, byName map[string]*providerConfig, model string) (*providerConfig, string, error) {
	var list []json.RawMessage
	if raw != nil && json.Unmarshal(raw, &list) != nil {
		return nil, "", fmt.Errorf("Invalid provider model configuration: invalid type: %s, expected a sequence", describe(raw, false))
	}
	provName, id, _ := strings.Cut(model, "/")
	var selected *providerConfig
	wire := ""
	for _, item := range list {
		f, err := object(item)
		if err != nil {
			return nil, "", fmt.Errorf("Invalid provider model configuration: %w", err)
		}
		var mID, mProv, mWire string
		for _, sf := range []struct {
			key      string
			dst      *string
			required bool
		}{{"id", &mID, true}, {"provider", &mProv, true}, {"wireModel", &mWire, false}} {
			if err := stringField(f, sf.key, sf.dst, sf.required, false); err != nil {
				return nil, "", fmt.Errorf("Invalid provider model configuration: %w", err)
			}
		}
		if byName[mProv] == nil {
			return nil, "", fmt.Errorf("BYOK model %q references unknown provider %q.", mID, mProv)
		}
		if mProv == provName && mID == id {
			selected, wire = byName[mProv], cmp.Or(mWire, mID)
		}
	}
	return selected, wire, nil
}

// parseProvider reads one provider object. Unknown fields are ignored, as
// 1.0.102 does (so a client may send both dialects' flags at once).
func parseProvider(raw json.RawMessage, named bool, d Dialect) (*providerConfig, error) {
	f, err := object(raw)
	if err != nil {
		return nil, err
	}
	pc := &providerConfig{name: wholeSession}
	strs := []struct {
		key      string
		dst      *string
		required bool
		secret   bool
	}{
		{"name", &pc.name, named, false},
		{"type", &pc.typ, false, false},
		{"baseUrl", &pc.baseURL, true, false},
		{"wireApi", &pc.wireAPI, false, false},
		{"apiKey", &pc.apiKey, false, true},
		{"bearerToken", &pc.bearerToken, false, true},
		{"bearerTokenScope", &pc.scope, false, false},
	}
	for _, s := range strs {
		if s.key == "name" && !named {
			continue
		}
		if err := stringField(f, s.key, s.dst, s.required, s.secret); err != nil {
			return nil, err
		}
	}
	var hasFlag, acquireFlag bool
	if err := boolField(f, "hasBearerTokenProvider", &hasFlag); err != nil {
		return nil, err
	}
	if err := boolField(f, "bearerTokenProvider", &acquireFlag); err != nil {
		return nil, err
	}
	// Each dialect honours only its own flag: 1.0.102 ignores
	// bearerTokenProvider and then sends no Authorization header at all.
	pc.askClient = hasFlag
	if d == Acquire {
		pc.askClient = acquireFlag
	}
	return pc, nil
}

func object(raw json.RawMessage) (map[string]json.RawMessage, error) {
	var f map[string]json.RawMessage
	if json.Unmarshal(raw, &f) != nil || f == nil {
		return nil, fmt.Errorf("invalid type: %s, expected a map", describe(raw, false))
	}
	return f, nil
}

func stringField(f map[string]json.RawMessage, key string, dst *string, required, secret bool) error {
	v, ok := present(f, key)
	if !ok {
		if required {
			return fmt.Errorf("missing field `%s`", key)
		}
		return nil
	}
	if json.Unmarshal(v, dst) != nil {
		return fmt.Errorf("invalid type: %s, expected a string", describe(v, secret))
	}
	return nil
}

func boolField(f map[string]json.RawMessage, key string, dst *bool) error {
	v, ok := present(f, key)
	if !ok {
		return nil
	}
	if json.Unmarshal(v, dst) != nil {
		return fmt.Errorf("invalid type: %s, expected a boolean", describe(v, false))
	}
	return nil
}

// describe names a JSON value's type the way serde does in its messages
// ("string \"yes\"", "integer `42`", "null", "a map"...). String contents
// are left out when secret.
func describe(raw json.RawMessage, secret bool) string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return "invalid JSON"
	}
	return describeValue(v, secret)
}

func describeValue(v any, secret bool) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		if secret {
			return "string"
		}
		return fmt.Sprintf("string %q", v)
	case json.Number:
		if _, err := v.Int64(); err == nil {
			return fmt.Sprintf("integer `%s`", v)
		}
		return fmt.Sprintf("floating point `%s`", v)
	case bool:
		return fmt.Sprintf("boolean `%t`", v)
	case []any:
		return "sequence"
	default:
		return "map"
	}
}

// checkGetToken accepts exactly {"token": "<non-empty string>"}. Messages
// follow 1.0.102 ("unknown field `x`, expected `token`"); it is stricter in
// one way: 1.0.102 accepts an empty token and sends "Authorization: Bearer ".
// A string result's value is never echoed (1.0.102 echoes it).
func checkGetToken(raw json.RawMessage) (string, error) {
	obj, err := resultObject(raw)
	if err != nil {
		return "", err
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) { // sorted: the same field is named every time
		if k != "token" {
			return "", fmt.Errorf("unknown field `%s`, expected `token`", k)
		}
	}
	return tokenField(obj)
}

// checkAcquire accepts {"token": "<non-empty string>", "expiresOnTimestamp"?:
// <ms since epoch>}, ignoring other fields. It returns the expiry in ms, 0
// when absent.
func checkAcquire(raw json.RawMessage) (string, int64, error) {
	obj, err := resultObject(raw)
	if err != nil {
		return "", 0, err
	}
	tok, err := tokenField(obj)
	if err != nil {
		return "", 0, err
	}
	switch exp := obj["expiresOnTimestamp"].(type) {
	case nil:
		return tok, 0, nil
	case json.Number:
		if ms, err := exp.Float64(); err == nil {
			return tok, int64(ms), nil
		}
	}
	return "", 0, fmt.Errorf("invalid type: %s, expected a number (expiresOnTimestamp)", describeValue(obj["expiresOnTimestamp"], false))
}

func resultObject(raw json.RawMessage) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, errors.New("result is not JSON")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("invalid type: %s, expected struct ProviderTokenAcquireResult", describeValue(v, true))
	}
	return obj, nil
}

func tokenField(obj map[string]any) (string, error) {
	t, ok := obj["token"]
	if !ok {
		return "", errors.New("missing field `token`")
	}
	tok, ok := t.(string)
	if !ok {
		return "", fmt.Errorf("invalid type: %s, expected a string", describeValue(t, true))
	}
	if tok == "" {
		return "", errors.New("empty token")
	}
	return tok, nil
}
