// Command managed-identity shows one Azure managed identity serving the
// bearer tokens of many Copilot runtime sessions through tokenbroker: one
// shared Credential, one token from the identity endpoint, however many
// sessions and turns.
//
// By default it runs offline: an embedded fake App Service identity
// endpoint on 127.0.0.1 (the real azidentity.ManagedIdentityCredential
// talks to it), the embedded runtime simulator, and a fake model endpoint
// that only accepts tokens the identity endpoint issued.
//
//	go run ./examples/managed-identity
//	go run ./examples/managed-identity -sessions 20 -turns 5 -dialect acquire
//
// With real Azure settings it uses azidentity.DefaultAzureCredential (a
// managed identity on Azure, workload identity on AKS, AZURE_CLIENT_ID /
// AZURE_TENANT_ID / AZURE_CLIENT_SECRET, or `az login` on a workstation)
// against a real Azure AI Foundry / Azure OpenAI endpoint:
//
//	TOKENBROKER_FOUNDRY_BASE_URL  the provider's OpenAI-compatible base URL,
//	                              e.g. https://<resource>.openai.azure.com/openai/v1
//	TOKENBROKER_FOUNDRY_MODEL     the deployment (model) name; default gpt-4o
//	TOKENBROKER_SCOPE             the token scope; default
//	                              https://cognitiveservices.azure.com/.default
//	plus the usual azidentity variables (AZURE_*, IDENTITY_*, MSI_*).
//
// Add -runtime copilot to drive the real Copilot CLI (COPILOT_CLI_PATH, or
// `make cli`) instead of the simulator. Tokens are printed as fingerprints
// only.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/copilotcli"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource/azuretest"
)

const defaultScope = "https://cognitiveservices.azure.com/.default"

type config struct {
	sessions, turns int
	dialect         string
	runtime         string
	// Real mode, from the environment; empty baseURL: offline.
	baseURL, model, scope string
	// setenv points azidentity at the fake identity endpoint (os.Setenv,
	// or t.Setenv in the test).
	setenv func(key, value string) error
}

func main() {
	cfg := config{setenv: os.Setenv}
	flag.IntVar(&cfg.sessions, "sessions", 8, "concurrent sessions")
	flag.IntVar(&cfg.turns, "turns", 3, "turns per session")
	flag.StringVar(&cfg.dialect, "dialect", "getToken", "simulator dialect: getToken (Copilot CLI 1.0.102: asks before every model request) or acquire")
	flag.StringVar(&cfg.runtime, "runtime", "simulator", "runtime to drive: simulator or copilot")
	flag.Parse()
	cfg.baseURL = os.Getenv("TOKENBROKER_FOUNDRY_BASE_URL")
	cfg.model = envOr("TOKENBROKER_FOUNDRY_MODEL", "gpt-4o")
	cfg.scope = envOr("TOKENBROKER_SCOPE", defaultScope)
	if cfg.sessions < 1 || cfg.turns < 1 {
		fmt.Fprintln(os.Stderr, "managed-identity: -sessions and -turns must be at least 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "managed-identity:", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// offline is the embedded stand-in for Azure: the identity endpoint and
// the model endpoint.
type offline struct {
	identity *azuretest.Server
	model    *fakemodel.Server
}

func run(ctx context.Context, out io.Writer, cfg config) error {
	p := &printer{w: out}
	real := cfg.baseURL != ""

	var (
		cred     azcore.TokenCredential
		credName string
		fake     *offline
		err      error
	)
	if real {
		cred, err = azidentity.NewDefaultAzureCredential(nil)
		credName = "azidentity.DefaultAzureCredential"
	} else {
		fake, err = startOffline(cfg)
		if err != nil {
			return err
		}
		defer fake.close()
		cfg.baseURL, cfg.model = fake.model.URL(), "gpt-4o"
		cred, err = fake.credential()
		credName = "azidentity.ManagedIdentityCredential (user-assigned)"
	}
	if err != nil {
		return fmt.Errorf("credential: %w", err)
	}

	broker := actors.NewBroker(actors.Options{})
	defer broker.Close()

	// The whole point: one Credential shared by every session, so one
	// refresh serves them all and the identity endpoint sees one request
	// per token lifetime. Count the calls that reach azidentity.
	var credCalls atomic.Int64
	az := azuresource.New(cred)
	counted := tokens.Func(func(ctx context.Context, req tokens.Request) (tokens.Token, error) {
		credCalls.Add(1)
		tok, err := az.Token(ctx, req)
		if err == nil {
			p.printf("  credential call   %s -> token %s, expires in %s\n", credName, tokens.Fingerprint(tok.Value), hours(time.Until(tok.ExpiresOn)))
		}
		return tok, err
	})
	shared, err := broker.NewCredential("foundry", cfg.scope, counted)
	if err != nil {
		return err
	}

	sim, client, runtimeLabel, err := connect(ctx, broker, cfg, real)
	if err != nil {
		return err
	}
	defer client.Close()

	p.printf("tokenbroker managed-identity example (%s)\n", map[bool]string{true: "real Azure", false: "offline"}[real])
	if fake != nil {
		p.printf("  identity endpoint  fake App Service managed identity (azuretest), %s\n", fake.identity.Env()["IDENTITY_ENDPOINT"])
	}
	p.printf("  credential         %s -> tokens/azuresource -> one shared tokenbroker Credential\n", credName)
	p.printf("  scope              %s\n", cfg.scope)
	p.printf("  runtime            %s\n", runtimeLabel)
	if fake != nil {
		p.printf("  model endpoint     fake, %s (accepts only tokens the identity endpoint issued)\n", cfg.baseURL)
	} else {
		p.printf("  model endpoint     %s, model %s\n", cfg.baseURL, cfg.model)
	}
	p.printf("\n%d sessions × %d turns, all sessions at once\n", cfg.sessions, cfg.turns)

	start := time.Now()
	results := make([]sessionResult, cfg.sessions)
	var wg sync.WaitGroup
	for i := range cfg.sessions {
		wg.Go(func() { results[i] = runSession(ctx, client, cfg, shared, i) })
	}
	wg.Wait()
	elapsed := time.Since(start)

	var failed []string
	for _, r := range results {
		status := fmt.Sprintf("%d turns ok", r.turns)
		if r.err != nil {
			status = "failed: " + r.err.Error()
			failed = append(failed, r.id)
		}
		p.printf("  session %-28s %s, last answer %q\n", r.id, status, r.answer)
	}

	p.printf("\nsummary (%s)\n", elapsed.Round(time.Millisecond))
	if sim != nil {
		p.printf("  token requests from the runtime   %d\n", sim.Stats().TokenRequests)
	}
	p.printf("  credential calls (azidentity)     %d\n", credCalls.Load())
	if fake != nil {
		issued := fake.identity.Issued()
		p.printf("  requests to the identity endpoint %d\n", issued)
		fps := map[string]int{}
		for _, r := range fake.model.Requests() {
			fps[tokens.Fingerprint(r.BearerToken())]++
		}
		p.printf("  model requests                    %d, tokens seen: %s\n", fake.model.Count(), summarize(fps))
		if issued != 1 {
			return fmt.Errorf("the identity endpoint got %d requests, want 1", issued)
		}
		if err := fake.whyShare(ctx, p, cfg); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d sessions failed: %s", len(failed), strings.Join(failed, ", "))
	}
	return nil
}

type sessionResult struct {
	id     string
	turns  int
	answer string
	err    error
}

func runSession(ctx context.Context, client *client.Client, cfg config, shared *actors.Credential, i int) sessionResult {
	res := sessionResult{id: fmt.Sprintf("mi-%02d-%s", i+1, randomID("s")[2:8])}
	s, err := client.CreateSession(ctx, sessions.SessionConfig{
		SessionID: res.id,
		Model:     cfg.model,
		Provider: &sessions.ProviderConfig{
			Type:              "openai",
			BaseURL:           cfg.baseURL,
			BearerTokenSource: shared,
			BearerTokenScope:  cfg.scope,
		},
	})
	if err != nil {
		res.err = err
		return res
	}
	defer s.Destroy(context.WithoutCancel(ctx))
	for turn := 1; turn <= cfg.turns; turn++ {
		tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		res.answer, res.err = s.SendAndWait(tctx, fmt.Sprintf("Say hello in five words (turn %d)", turn))
		cancel()
		if res.err != nil {
			return res
		}
		res.turns++
	}
	return res
}

// connect starts the runtime: the simulator on an in-memory pipe, or the
// Copilot CLI as a child process.
func connect(ctx context.Context, broker *actors.Broker, cfg config, real bool) (*runtimesim.Runtime, *client.Client, string, error) {
	switch cfg.runtime {
	case "simulator":
		d, err := runtimesim.ParseDialect(cfg.dialect)
		if err != nil {
			return nil, nil, "", err
		}
		opts := runtimesim.Options{Dialect: d}
		if real {
			// The simulator's default client dials loopback only.
			opts.HTTPClient = &http.Client{Timeout: 2 * time.Minute}
		}
		sim := runtimesim.New(opts)
		clientEnd, runtimeEnd := net.Pipe()
		go sim.Serve(context.WithoutCancel(ctx), runtimeEnd) // ends when the client closes its end
		c, err := client.Connect(ctx, broker, clientEnd, client.Options{})
		label := fmt.Sprintf("embedded simulator, %s dialect", d)
		if d == runtimesim.GetToken {
			label += " (asks for a token before every model request, like Copilot CLI 1.0.102)"
		}
		return sim, c, label, err
	case "copilot":
		path, err := copilotcli.Find()
		if err != nil {
			return nil, nil, "", fmt.Errorf("no Copilot CLI (%w): run `make cli` or set COPILOT_CLI_PATH", err)
		}
		c, err := client.Start(ctx, broker, client.Options{CLIPath: path})
		if err != nil {
			return nil, nil, "", err
		}
		return nil, c, fmt.Sprintf("Copilot CLI %s, pid %d", c.Info().Version, c.Pid()), nil
	}
	return nil, nil, "", fmt.Errorf("unknown -runtime %q: want simulator or copilot", cfg.runtime)
}

func startOffline(cfg config) (*offline, error) {
	// Nothing may reach a real identity endpoint: drop every variable
	// azidentity reads, then point it at the fake.
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AZURE_") || strings.HasPrefix(k, "IDENTITY_") || strings.HasPrefix(k, "MSI_") || k == "IMDS_ENDPOINT" {
			if err := cfg.setenv(k, ""); err != nil {
				return nil, err
			}
		}
	}
	// 24 h tokens with a 12 h refresh hint, answered in 50 ms: App Service's shape.
	id := azuretest.NewManagedIdentity(azuretest.Options{Lifetime: 24 * time.Hour, RefreshIn: 12 * time.Hour, Latency: 50 * time.Millisecond})
	for k, v := range id.Env() {
		if err := cfg.setenv(k, v); err != nil {
			id.Close()
			return nil, err
		}
	}
	issuedHere := func(auth string) bool {
		tok, ok := strings.CutPrefix(auth, "Bearer ")
		if !ok {
			return false
		}
		fp := tokens.Fingerprint(tok)
		for _, r := range id.Requests() {
			if r.Fingerprint == fp {
				return true
			}
		}
		return false
	}
	model, err := fakemodel.Start(fakemodel.Options{RequireToken: issuedHere})
	if err != nil {
		id.Close()
		return nil, err
	}
	return &offline{identity: id, model: model}, nil
}

// credential is the real ManagedIdentityCredential, its transport limited
// to the fake endpoint on 127.0.0.1, with a user-assigned identity of its
// own (azidentity's token cache is process-wide, by identity and
// resource: a new identity starts cold).
func (o *offline) credential() (azcore.TokenCredential, error) {
	return azidentity.NewManagedIdentityCredential(o.identity.ManagedIdentityCredentialOptions())
}

// whyShare shows what the shared Credential saves: the same credential
// type, asked directly by concurrent cold callers, sends one request each
// to the identity endpoint (azidentity does not coalesce them).
func (o *offline) whyShare(ctx context.Context, p *printer, cfg config) error {
	cred, err := o.credential()
	if err != nil {
		return err
	}
	before := o.identity.Issued()
	az := azuresource.New(cred)
	callers := cfg.sessions * 2
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			_, _ = az.Token(cctx, tokens.Request{Scope: cfg.scope})
		})
	}
	wg.Wait()
	p.printf("\nwithout tokenbroker\n  %d concurrent cold calls to a fresh ManagedIdentityCredential sent %d requests to the identity endpoint\n",
		callers, o.identity.Issued()-before)
	return nil
}

func (o *offline) close() {
	o.model.Close()
	o.identity.Close()
}

func hours(d time.Duration) string {
	d = d.Round(time.Minute)
	return strings.TrimSuffix(strings.TrimSuffix(d.String(), "0s"), "0m")
}

func summarize(fps map[string]int) string {
	if len(fps) == 0 {
		return "none"
	}
	var parts []string
	for fp, n := range fps {
		parts = append(parts, fmt.Sprintf("%s ×%d", fp, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func randomID(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// printer serialises output from concurrent sessions and callbacks.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}
