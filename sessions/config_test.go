package sessions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
)

var update = flag.Bool("update", false, "rewrite golden files")

func staticSource(v string) tokens.Source { return tokens.Static(tokens.Token{Value: v}) }

// goldenConfig uses every field kind of the named form: providers with and
// without a source, static credentials, Extra fields at each level, and one
// provider with no scope. (The whole-session form cannot be combined with
// it; see TestWireParamsWholeSession.)
func goldenConfig() SessionConfig {
	return SessionConfig{
		SessionID: "tenant-a-7f3c",
		Model:     "mi/default",
		Models: []ModelConfig{
			{ID: "default", Provider: "mi", WireModel: "gpt-4o"},
			{ID: "small", Provider: "oauth", WireModel: "gpt-4o-mini", Extra: map[string]any{"maxOutputTokens": 512}},
		},
		Providers: []NamedProviderConfig{
			{Name: "mi", ProviderConfig: ProviderConfig{
				Type: "openai", WireAPI: "completions",
				BaseURL:           "https://example.openai.azure.com/openai/v1",
				Headers:           map[string]string{"x-ms-tenant": "a"},
				Azure:             &AzureOptions{APIVersion: "2025-04-01-preview"},
				Extra:             map[string]any{"maxPromptTokens": 64000, "type": "must-not-override"},
				BearerTokenSource: staticSource("mi"),
				BearerTokenScope:  "https://cognitiveservices.azure.com/.default",
			}},
			{Name: "oauth", ProviderConfig: ProviderConfig{
				Type: "openai", BaseURL: "http://127.0.0.1:2/v1",
				BearerTokenSource: staticSource("oauth"),
			}},
			{Name: "static", ProviderConfig: ProviderConfig{
				Type: "openai", BaseURL: "http://127.0.0.1:3/v1", APIKey: "sk-static",
			}},
		},
		Extra: map[string]any{"streaming": true, "systemMessage": map[string]any{"content": "be brief"}},
	}
}

func TestWireParamsGolden(t *testing.T) {
	p, err := WireParams(goldenConfig())
	if err != nil {
		t.Fatal(err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, p.Body, "", "  "); err != nil {
		t.Fatal(err)
	}
	pretty.WriteByte('\n')
	golden := filepath.Join("testdata", "create_params.golden.json")
	if *update {
		if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pretty.Bytes(), want) {
		t.Errorf("wire params differ from %s (run with -update after checking):\n%s", golden, pretty.String())
	}

	// The providers to register: named ones by name with their scopes, and
	// none for the static-key provider.
	got := map[string]string{}
	for _, pv := range p.providers {
		got[pv.Name] = pv.Scope
	}
	want2 := map[string]string{"mi": "https://cognitiveservices.azure.com/.default", "oauth": ""}
	if len(got) != len(want2) {
		t.Fatalf("providers %v, want %v", got, want2)
	}
	for k, v := range want2 {
		if s, ok := got[k]; !ok || s != v {
			t.Fatalf("providers %v, want %v", got, want2)
		}
	}
}

// The rules the golden file encodes, stated separately so a regenerated
// golden file cannot quietly break them.
func TestWireParamsRules(t *testing.T) {
	p, err := WireParams(goldenConfig())
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		SessionID string           `json:"sessionId"`
		Provider  map[string]any   `json:"provider"`
		Providers []map[string]any `json:"providers"`
		Streaming bool             `json:"streaming"`
	}
	if err := json.Unmarshal(p.Body, &body); err != nil {
		t.Fatal(err)
	}
	if body.SessionID != "tenant-a-7f3c" || !body.Streaming {
		t.Fatalf("session id or extra field lost: %s", p.Body)
	}
	check := func(name string, m map[string]any, wantFlags bool, scope any) {
		t.Helper()
		for _, f := range []string{"bearerTokenProvider", "hasBearerTokenProvider"} {
			if v, ok := m[f]; ok != wantFlags || (ok && v != true) {
				t.Errorf("%s: %s = %v (present %v), want present=%v", name, f, v, ok, wantFlags)
			}
		}
		if got, ok := m["bearerTokenScope"]; (scope == nil) == ok || (ok && got != scope) {
			t.Errorf("%s: bearerTokenScope = %v (present %v), want %v", name, got, ok, scope)
		}
		for _, f := range []string{"BearerTokenSource", "bearerTokenSource", "Extra"} {
			if _, ok := m[f]; ok {
				t.Errorf("%s: %s leaked onto the wire", name, f)
			}
		}
	}
	if body.Provider != nil {
		t.Errorf("a whole-session provider appeared: %v", body.Provider)
	}
	check("mi", body.Providers[0], true, "https://cognitiveservices.azure.com/.default")
	check("oauth", body.Providers[1], true, nil)
	check("static", body.Providers[2], false, nil)
	if body.Providers[0]["type"] != "openai" || body.Providers[0]["maxPromptTokens"] != float64(64000) {
		t.Errorf("typed field overridden or extra field lost: %v", body.Providers[0])
	}
	if body.Providers[2]["apiKey"] != "sk-static" {
		t.Errorf("static api key not forwarded: %v", body.Providers[2])
	}
}

func TestWireParamsErrors(t *testing.T) {
	src := staticSource("x")
	for name, cfg := range map[string]SessionConfig{
		"slash in name": {Providers: []NamedProviderConfig{{Name: "a/b", ProviderConfig: ProviderConfig{BearerTokenSource: src}}}},
		"no name":       {Providers: []NamedProviderConfig{{ProviderConfig: ProviderConfig{BearerTokenSource: src}}}},
		"duplicate": {Providers: []NamedProviderConfig{
			{Name: "a", ProviderConfig: ProviderConfig{BearerTokenSource: src}},
			{Name: "a", ProviderConfig: ProviderConfig{BearerTokenSource: src}},
		}},
	} {
		if _, err := WireParams(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	p, err := WireParams(SessionConfig{})
	if err != nil || p.SessionID == "" {
		t.Fatalf("a session id must be generated: %q, %v", p.SessionID, err)
	}
}

// A provider on a shared Credential writes no scope of its own: the
// credential's reaches the wire and the registration, and the caller's
// config is left as it was.
func TestWireParamsCredentialScope(t *testing.T) {
	b := actors.NewBroker(actors.Options{})
	defer b.Close()
	const scope = "https://cognitiveservices.azure.com/.default"
	cred, err := b.NewCredential("mi", scope, staticSource("shared"))
	if err != nil {
		t.Fatal(err)
	}
	whole := &ProviderConfig{Type: "openai", BaseURL: "http://127.0.0.1:1/v1", BearerTokenSource: cred}
	named := []NamedProviderConfig{{Name: "mi", ProviderConfig: *whole}}
	for name, cfg := range map[string]SessionConfig{
		"whole-session": {SessionID: "s", Provider: whole},
		"named":         {SessionID: "s", Model: "mi/m", Models: []ModelConfig{{ID: "m", Provider: "mi"}}, Providers: named},
	} {
		p, err := WireParams(cfg)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var body struct {
			Provider  map[string]any   `json:"provider"`
			Providers []map[string]any `json:"providers"`
		}
		if err := json.Unmarshal(p.Body, &body); err != nil {
			t.Fatal(err)
		}
		wire := body.Provider
		if wire == nil {
			wire = body.Providers[0]
		}
		if wire["bearerTokenScope"] != scope || p.providers[0].Scope != scope {
			t.Errorf("%s: wire scope %v, registered scope %q; want the credential's %q", name, wire["bearerTokenScope"], p.providers[0].Scope, scope)
		}
	}
	if whole.BearerTokenScope != "" || named[0].BearerTokenScope != "" {
		t.Errorf("WireParams changed the caller's config")
	}
}

func TestOpenRegistersBeforeSend(t *testing.T) {
	b := actors.NewBroker(actors.Options{})
	defer b.Close()
	r := b.NewRouter()
	cfg := SessionConfig{SessionID: "s", Provider: &ProviderConfig{BaseURL: "http://127.0.0.1:1/v1", BearerTokenSource: staticSource("whole")}}
	p, err := Open(r, cfg)
	if err != nil {
		t.Fatal(err)
	}
	g, err := r.Acquire(context.Background(), tokens.Request{SessionID: p.SessionID, ProviderName: "default"})
	if err != nil || g.Token.Value != "whole" {
		t.Fatalf("whole-session provider not registered as default: %v, %v", g.Token, err)
	}
	if _, err := Open(r, cfg); !errors.Is(err, actors.ErrSessionExists) {
		t.Fatalf("second Open: %v, want ErrSessionExists", err)
	}
	g2, err := Open(r, goldenConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Acquire(context.Background(), tokens.Request{SessionID: g2.SessionID, ProviderName: "static"}); !errors.Is(err, actors.ErrUnknownProvider) {
		t.Fatalf("a provider without a source must not be routed: %v", err)
	}
}
