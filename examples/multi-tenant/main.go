// Command multi-tenant shows three tenants sharing one Copilot runtime
// connection through tokenbroker, each tenant with its own shared
// Credential: many sessions per tenant, one token request per tenant to its
// identity provider, and no session ever sent another tenant's token.
//
// It runs offline. Two tenants authenticate as their own Entra app: a real
// azidentity.ClientSecretCredential talking to a fake Microsoft Entra token
// endpoint (TLS on 127.0.0.1). The third uses a user-assigned managed
// identity of the host: a real azidentity.ManagedIdentityCredential talking
// to a fake App Service identity endpoint, found, as in App Service, through
// the IDENTITY_ENDPOINT and IDENTITY_HEADER variables, which this program
// sets for itself. Both fakes are tokens/azuresource/azuretest. The runtime
// is the embedded simulator; the model endpoint is a fake that accepts only
// tokens the fakes issued. Tokens are printed as fingerprints only.
//
//	go run ./examples/multi-tenant
//	go run ./examples/multi-tenant -sessions 50 -turns 5
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource/azuretest"
)

const scope = "https://cognitiveservices.azure.com/.default"

func main() {
	n := flag.Int("sessions", 20, "sessions per tenant")
	turns := flag.Int("turns", 3, "turns per session")
	dialect := flag.String("dialect", "getToken", "simulator dialect: getToken or acquire")
	flag.Parse()
	if *n < 1 || *turns < 1 {
		fmt.Fprintln(os.Stderr, "multi-tenant: -sessions and -turns must be at least 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout, *n, *turns, *dialect); err != nil {
		fmt.Fprintln(os.Stderr, "multi-tenant:", err)
		os.Exit(1)
	}
}

// tenant is one customer of the service: its own identity (an Entra app
// registration, or a managed identity of the host) and shared Credential.
type tenant struct {
	name     string
	identity string // the Entra tenant id, or the managed identity's client id
	issuer   *azuretest.Server
	cred     *actors.Credential
	calls    atomic.Int64 // credential calls reaching azidentity
	sessions []string
	failed   atomic.Int64
}

// identityOf says which identity a token request to s was for.
func identityOf(s *azuretest.Server, r azuretest.Request) string {
	if r.Tenant != "" {
		return r.Tenant
	}
	return r.ClientID
}

func run(ctx context.Context, out io.Writer, perTenant, turns int, dialectName string) error {
	p := &printer{w: out}
	entra := azuretest.NewEntra(azuretest.Options{Lifetime: time.Hour, Latency: 20 * time.Millisecond})
	defer entra.Close()
	mi := azuretest.NewManagedIdentity(azuretest.Options{Lifetime: time.Hour, Latency: 20 * time.Millisecond})
	defer mi.Close()
	// App Service sets these for the process; here the fake stands in.
	for k, v := range mi.Env() {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	issuers := []*azuretest.Server{entra, mi}
	issuedTo := func(fp string) string { // token fingerprint -> identity
		for _, s := range issuers {
			for _, r := range s.Requests() {
				if r.Fingerprint == fp {
					return identityOf(s, r)
				}
			}
		}
		return ""
	}
	model, err := fakemodel.Start(fakemodel.Options{RequireToken: func(auth string) bool {
		tok, ok := strings.CutPrefix(auth, "Bearer ")
		return ok && issuedTo(tokens.Fingerprint(tok)) != ""
	}})
	if err != nil {
		return err
	}
	defer model.Close()

	broker := actors.NewBroker(actors.Options{})
	defer broker.Close()

	tenants := []*tenant{{name: "contoso", issuer: entra}, {name: "fabrikam", issuer: entra}, {name: "northwind", issuer: mi}}
	for _, tn := range tenants {
		var az tokens.Source
		if tn.issuer == entra {
			tn.identity = randomHex(8) + "-" + tn.name
			// The options trust the fake's certificate, dial 127.0.0.1
			// only and name the fake as the authority host.
			cred, err := azidentity.NewClientSecretCredential(tn.identity, "app-"+tn.name, "secret-of-"+tn.name, entra.ClientSecretCredentialOptions())
			if err != nil {
				return err
			}
			az = azuresource.New(cred)
		} else {
			// A user-assigned identity of the host: the options name its
			// client id.
			opts := mi.ManagedIdentityCredentialOptions()
			cred, err := azidentity.NewManagedIdentityCredential(opts)
			if err != nil {
				return err
			}
			tn.identity = fmt.Sprint(opts.ID)
			az = azuresource.New(cred)
		}
		// One Credential per tenant, shared by all of that tenant's
		// sessions. Never one Credential for two tenants.
		tn.cred, err = broker.NewCredential("foundry", scope, tokens.Func(func(ctx context.Context, req tokens.Request) (tokens.Token, error) {
			tn.calls.Add(1)
			return az.Token(ctx, req)
		}))
		if err != nil {
			return err
		}
	}

	d, err := runtimesim.ParseDialect(dialectName)
	if err != nil {
		return err
	}
	sim := runtimesim.New(runtimesim.Options{Dialect: d})
	clientEnd, runtimeEnd := net.Pipe()
	go sim.Serve(context.WithoutCancel(ctx), runtimeEnd)
	client, err := client.Connect(ctx, broker, clientEnd, client.Options{})
	if err != nil {
		return err
	}
	defer client.Close()

	p.printf("tokenbroker multi-tenant example (offline)\n")
	p.printf("  identity providers fake Microsoft Entra, %s (contoso, fabrikam: an app each)\n", entra.URL)
	p.printf("                     fake App Service managed identity, %s (northwind: a user-assigned identity)\n", mi.URL)
	p.printf("  credentials        azidentity.ClientSecretCredential or ManagedIdentityCredential per tenant\n")
	p.printf("                     -> one shared tokenbroker Credential per tenant\n")
	p.printf("  runtime            embedded simulator, %s dialect, one connection for all tenants\n", d)
	p.printf("  model endpoint     fake, %s\n\n", model.URL())
	p.printf("%d tenants × %d sessions × %d turns, all at once, interleaved on one runtime connection\n", len(tenants), perTenant, turns)

	start := time.Now()
	var wg sync.WaitGroup
	for _, tn := range tenants {
		for i := range perTenant {
			id := fmt.Sprintf("%s-%03d-%s", tn.name, i+1, randomHex(3))
			tn.sessions = append(tn.sessions, id)
			wg.Go(func() {
				if err := runSession(ctx, client, model.URL(), tn.cred, id, turns); err != nil {
					tn.failed.Add(1)
					p.printf("  session %s failed: %v\n", id, err)
				}
			})
		}
	}
	wg.Wait()
	p.printf("  done in %s\n\n", time.Since(start).Round(time.Millisecond))

	// Proof of isolation: the runtime recorded which token each session's
	// model requests carried; the fake identity endpoints recorded which
	// identity each token was issued to.
	tenantOf := map[string]*tenant{} // session id -> tenant
	for _, tn := range tenants {
		for _, id := range tn.sessions {
			tenantOf[id] = tn
		}
	}
	type tally struct {
		tokenRequests, modelRequests, crossTenant int
		tokens                                    map[string]bool
	}
	tallies := map[*tenant]*tally{}
	for _, tn := range tenants {
		tallies[tn] = &tally{tokens: map[string]bool{}}
	}
	for _, r := range sim.TokenRequests() {
		if tn := tenantOf[r.SessionID]; tn != nil {
			tallies[tn].tokenRequests++
		}
	}
	for _, r := range sim.ModelRequests() {
		tn := tenantOf[r.SessionID]
		if tn == nil {
			continue
		}
		t := tallies[tn]
		t.modelRequests++
		t.tokens[r.Fingerprint] = true
		if issuedTo(r.Fingerprint) != tn.identity {
			t.crossTenant++
		}
	}
	endpoint := map[string]int{} // identity -> tokens issued
	for _, s := range issuers {
		for _, r := range s.Requests() {
			if r.Status == 200 {
				endpoint[identityOf(s, r)]++
			}
		}
	}

	p.printf("  %-9s %8s %6s %14s %16s %17s %15s %12s\n", "tenant", "sessions", "turns", "token requests", "credential calls", "identity requests", "model requests", "cross-tenant")
	var problems []string
	for _, tn := range tenants {
		t := tallies[tn]
		p.printf("  %-9s %8d %6d %14d %16d %17d %15d %12d\n", tn.name, len(tn.sessions), len(tn.sessions)*turns,
			t.tokenRequests, tn.calls.Load(), endpoint[tn.identity], t.modelRequests, t.crossTenant)
		if tn.failed.Load() > 0 {
			problems = append(problems, fmt.Sprintf("%s: %d sessions failed", tn.name, tn.failed.Load()))
		}
		if tn.calls.Load() != 1 || endpoint[tn.identity] != 1 {
			problems = append(problems, fmt.Sprintf("%s: %d credential calls, %d identity requests (want 1 and 1)", tn.name, tn.calls.Load(), endpoint[tn.identity]))
		}
		if t.crossTenant != 0 {
			problems = append(problems, fmt.Sprintf("%s: %d model requests carried another tenant's token", tn.name, t.crossTenant))
		}
	}
	p.printf("\n")
	for _, tn := range tenants {
		p.printf("  %-9s sessions sent token(s) %s, all issued to identity %s\n", tn.name, keys(tallies[tn].tokens), tn.identity)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	p.printf("\nisolation holds: every model request of every session carried its own tenant's token\n")
	return nil
}

func runSession(ctx context.Context, client *client.Client, baseURL string, cred *actors.Credential, id string, turns int) error {
	s, err := client.CreateSession(ctx, sessions.SessionConfig{
		SessionID: id,
		Model:     "gpt-4o",
		Provider: &sessions.ProviderConfig{
			Type: "openai", BaseURL: baseURL,
			BearerTokenSource: cred, BearerTokenScope: scope,
		},
	})
	if err != nil {
		return err
	}
	defer s.Destroy(context.WithoutCancel(ctx))
	for turn := 1; turn <= turns; turn++ {
		tctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := s.SendAndWait(tctx, fmt.Sprintf("Hello from %s, turn %d", id, turn))
		cancel()
		if err != nil {
			return fmt.Errorf("turn %d: %w", turn, err)
		}
	}
	return nil
}

func keys(m map[string]bool) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// printer serialises output from concurrent sessions.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}
