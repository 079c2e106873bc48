package main

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/jsonrpc2"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/copilotcli"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/transport"
)

// secretMarker starts every token the fake credentials issue, so the run
// can check that none reaches its telemetry.
const secretMarker = "tokenload-secret-"

// fakeCredential is a credential with configurable latency, lifetime and
// failure rate, and the run's outage. A zero lifetime issues bare,
// single-use tokens.
type fakeCredential struct{ cfg *config }

var errInjected = errors.New("tokenload: injected credential failure")

func (f fakeCredential) Token(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
	if err := f.cfg.Outage.apply(ctx); err != nil {
		return tokens.Token{}, err
	}
	if f.cfg.CredLatency > 0 {
		t := time.NewTimer(f.cfg.CredLatency)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return tokens.Token{}, ctx.Err()
		}
	}
	if f.cfg.FailureRate > 0 && rand.Float64() < f.cfg.FailureRate {
		return tokens.Token{}, errInjected
	}
	var b [12]byte
	_, _ = crand.Read(b[:]) // never fails (crypto/rand)
	tok := tokens.Token{Value: secretMarker + hex.EncodeToString(b[:])}
	if f.cfg.Lifetime > 0 {
		tok.ExpiresOn = time.Now().Add(f.cfg.Lifetime)
	}
	return tok, nil
}

// credentials hands out the providers' sources, each counted: the fake
// credential, or azidentity in front of the embedded identity endpoint
// (one per provider name); shared through one Credential per provider
// name across sessions, or a cache per session.
type credentials struct {
	cfg      *config
	col      *collector
	identity *identity       // -credential identity
	sources  []tokens.Source // by provider, for identity
	shared   []*actors.Credential
}

func newCredentials(cfg *config, broker *actors.Broker, col *collector) (*credentials, error) {
	c := &credentials{cfg: cfg, col: col}
	if cfg.Credential == credIdentity {
		id, err := startIdentity(cfg)
		if err != nil {
			return nil, err
		}
		c.identity = id
		for j := range cfg.Providers {
			src, err := id.source(j)
			if err != nil {
				c.close()
				return nil, err
			}
			c.sources = append(c.sources, src)
		}
	}
	if cfg.Shared {
		for j := range cfg.Providers {
			cred, err := broker.NewCredential(providerName(j), c.scope(), c.fresh(j))
			if err != nil {
				c.close()
				return nil, err
			}
			c.shared = append(c.shared, cred)
		}
	}
	return c, nil
}

// scope is what the providers are configured with: azidentity needs one.
func (c *credentials) scope() string {
	if c.identity != nil {
		return identityScope
	}
	return ""
}

func (c *credentials) fresh(j int) tokens.Source {
	if c.identity != nil {
		return counted{src: c.sources[j], j: j, col: c.col}
	}
	return counted{src: fakeCredential{cfg: c.cfg}, j: j, col: c.col}
}

func (c *credentials) source(j int) tokens.Source {
	if c.cfg.Shared {
		return c.shared[j]
	}
	return c.fresh(j)
}

// close stops the identity endpoint, after the broker has ended its calls.
func (c *credentials) close() {
	if c.identity != nil {
		c.identity.close()
	}
}

// invalidate drops the cached token of every session's providers on
// router, or of the shared credentials.
func (c *credentials) invalidate(router *actors.Router) {
	if c.cfg.Shared {
		for _, cred := range c.shared {
			cred.Invalidate()
		}
		return
	}
	for i := range c.cfg.Sessions {
		for j := range c.cfg.Providers {
			// An error means the provider has not started (no request
			// yet): it has no token to drop.
			_ = router.Invalidate(sessionName(i), providerName(j))
		}
	}
}

func providerName(j int) string { return fmt.Sprintf("p%d", j) }
func sessionName(i int) string  { return fmt.Sprintf("load-%06d", i) }

// slot identifies one operation: the worker, its own iteration count and
// the run's global count.
type slot struct{ worker, iter, global int }

// driver is a way of producing token requests.
type driver interface {
	// label describes the runtime for the report.
	label() string
	// turns reports whether op is a turn (else a bare token request).
	turns() bool
	// mapping says how sessions and requests map to providers.
	mapping() string
	// open creates the sessions.
	open(ctx context.Context) error
	// session names the session operation s uses.
	session(s slot) string
	// op performs one unit of load.
	op(ctx context.Context, s slot) error
	// invalidate drops every cached token.
	invalidate()
	// close ends the runtime connection (the broker is closed by the caller).
	close() error
	// extra is driver-specific data for the report.
	extra() map[string]any
}

// directDriver plays the runtime itself: a jsonrpc2 client on the far end of
// an in-memory pipe sending token requests as fast as the load allows,
// with no model calls in between. It measures the broker and the
// transport, nothing else.
type directDriver struct {
	cfg    *config
	creds  *credentials
	conn   *transport.Conn
	rt     *jsonrpc2.Conn
	method string
}

func newDirect(ctx context.Context, cfg *config, broker *actors.Broker, creds *credentials, opts transport.ConnOptions) *directDriver {
	client, runtime := net.Pipe()
	conn := transport.NewConn(ctx, broker, client, nil, opts)
	rt := jsonrpc2.NewConn(ctx, jsonrpc2.NewBufferedStream(runtime, jsonrpc2.VSCodeObjectCodec{}), jsonrpc2.HandlerWithError(
		func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request) (any, error) { return nil, nil }),
		// Replies to calls cut short by the end of the run are expected.
		jsonrpc2.SetLogger(log.New(io.Discard, "", 0)))
	method := transport.MethodGetToken
	if cfg.Dialect == "acquire" {
		method = transport.MethodAcquire
	}
	return &directDriver{cfg: cfg, creds: creds, conn: conn, rt: rt, method: method}
}

func (d *directDriver) label() string {
	return fmt.Sprintf("direct: token requests over an in-memory pipe (%s)", d.method)
}
func (d *directDriver) turns() bool { return false }

func (d *directDriver) mapping() string {
	if d.cfg.Providers == 1 {
		return "request k asks session k mod N for p0"
	}
	return "request k asks session k mod N for provider p((k div N) mod M): every session uses every provider"
}

func (d *directDriver) open(context.Context) error {
	for i := range d.cfg.Sessions {
		ps := make([]actors.Provider, d.cfg.Providers)
		for j := range ps {
			ps[j] = actors.Provider{Name: providerName(j), Scope: d.creds.scope(), Source: d.creds.source(j)}
		}
		if err := d.conn.Router().Open(sessionName(i), ps); err != nil {
			return err
		}
	}
	return nil
}

// tokenParams is a token request; Meta carries the W3C trace context of
// tokenload's span, which the broker continues (the MCP convention).
type tokenParams struct {
	SessionID    string                 `json:"sessionId"`
	ProviderName string                 `json:"providerName"`
	Meta         propagation.MapCarrier `json:"_meta,omitempty"`
}

func (d *directDriver) session(s slot) string { return sessionName(s.global % d.cfg.Sessions) }

func (d *directDriver) op(ctx context.Context, s slot) error {
	p := tokenParams{SessionID: d.session(s), ProviderName: providerName(s.global / d.cfg.Sessions % d.cfg.Providers)}
	if trace.SpanContextFromContext(ctx).IsValid() {
		p.Meta = propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, p.Meta)
	}
	var res struct {
		Token string `json:"token"`
	}
	return d.rt.Call(ctx, d.method, p, &res)
}

func (d *directDriver) invalidate() { d.creds.invalidate(d.conn.Router()) }

func (d *directDriver) close() error {
	err := d.rt.Close()
	<-d.conn.Done()
	if errors.Is(err, jsonrpc2.ErrClosed) {
		err = nil
	}
	return err
}

func (d *directDriver) extra() map[string]any { return nil }

// turnDriver drives a runtime through client.Client: session.create for
// every session, then session.send turns; each turn makes the runtime ask
// for a token and call a fake model endpoint with it.
type turnDriver struct {
	cfg      *config
	creds    *credentials
	client   *client.Client
	model    *fakemodel.Server
	modelURL string
	sim      *runtimesim.Runtime
	simDone  chan struct{}
	desc     string

	sessions []*client.Session
}

func newTurnDriver(ctx context.Context, cfg *config, broker *actors.Broker, creds *credentials, opts transport.ConnOptions) (*turnDriver, error) {
	d := &turnDriver{cfg: cfg, creds: creds, modelURL: cfg.ModelURL}
	if d.modelURL == "" {
		model, err := fakemodel.Start(fakemodel.Options{PathPrefix: "/v1", Reply: func(fakemodel.Request) string { return "ok" }})
		if err != nil {
			return nil, err
		}
		d.model, d.modelURL = model, model.URL()
	}
	copts := client.Options{Conn: opts, EventBuffer: -1}
	var err error
	switch cfg.Runtime {
	case "sim":
		dialect, _ := runtimesim.ParseDialect(cfg.Dialect) // checked by parseFlags
		d.sim = runtimesim.New(runtimesim.Options{Dialect: dialect})
		clientEnd, runtimeEnd := net.Pipe()
		d.simDone = make(chan struct{})
		go func() {
			defer close(d.simDone)
			_ = d.sim.Serve(context.WithoutCancel(ctx), runtimeEnd) // ends when the client closes its end
		}()
		d.client, err = client.Connect(ctx, broker, clientEnd, copts)
		d.desc = fmt.Sprintf("embedded simulator (%s dialect)", dialect)
	case "tcp":
		var conn net.Conn
		var dialer net.Dialer
		conn, err = dialer.DialContext(ctx, "tcp", cfg.Addr)
		if err == nil {
			d.client, err = client.Connect(ctx, broker, conn, copts)
		}
		d.desc = "runtime at " + cfg.Addr
	case "copilot":
		copts.CLIPath = cfg.CLIPath
		if copts.CLIPath == "" {
			if copts.CLIPath, err = copilotcli.Find(); err != nil {
				err = fmt.Errorf("no Copilot CLI (%w): run `make cli`, set COPILOT_CLI_PATH or pass -cli", err)
				break
			}
		}
		d.client, err = client.Start(ctx, broker, copts)
		if err == nil {
			d.desc = fmt.Sprintf("Copilot CLI %s, pid %d", d.client.Info().Version, d.client.Pid())
		}
	default:
		err = fmt.Errorf("unknown runtime %q", cfg.Runtime)
	}
	if err != nil {
		d.closeModel()
		return nil, err
	}
	return d, nil
}

func (d *turnDriver) label() string { return d.desc }
func (d *turnDriver) turns() bool   { return true }

func (d *turnDriver) mapping() string {
	m := d.cfg.Providers
	if m == 1 {
		return "every session has provider p0"
	}
	n, each := d.cfg.Sessions, ""
	if n%m == 0 {
		each = strconv.Itoa(n / m)
	} else {
		each = fmt.Sprintf("%d-%d", n/m, n/m+1)
	}
	return fmt.Sprintf("every session has p0..p%d; session i's model uses p(i mod %d), %s sessions each", m-1, m, each)
}

// sessionConfig: every session names all providers; session i selects
// provider i mod M's model, so the load spreads over the providers.
func (d *turnDriver) sessionConfig(i int) sessions.SessionConfig {
	cfg := sessions.SessionConfig{SessionID: sessionName(i)}
	for j := range d.cfg.Providers {
		name := providerName(j)
		cfg.Providers = append(cfg.Providers, sessions.NamedProviderConfig{Name: name, ProviderConfig: sessions.ProviderConfig{
			Type: "openai", BaseURL: d.modelURL, BearerTokenSource: d.creds.source(j), BearerTokenScope: d.creds.scope(),
		}})
		cfg.Models = append(cfg.Models, sessions.ModelConfig{ID: "m" + name, Provider: name, WireModel: "gpt-4o"})
	}
	j := i % d.cfg.Providers
	cfg.Model = providerName(j) + "/m" + providerName(j)
	return cfg
}

func (d *turnDriver) open(ctx context.Context) error {
	d.sessions = make([]*client.Session, d.cfg.Sessions)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for range min(d.cfg.Concurrency, 16, d.cfg.Sessions) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= d.cfg.Sessions || ctx.Err() != nil {
					return
				}
				s, err := d.client.CreateSession(ctx, d.sessionConfig(i))
				if err != nil {
					select {
					case errs <- fmt.Errorf("creating session %d: %w", i, err):
					default:
					}
					return
				}
				d.sessions[i] = s
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return ctx.Err()
	}
}

// sessionIndex: worker w takes sessions w, w+C, w+2C...: with C <= N no
// two workers share a session.
func (d *turnDriver) sessionIndex(s slot) int {
	return (s.worker + s.iter*d.cfg.Concurrency) % d.cfg.Sessions
}

func (d *turnDriver) session(s slot) string { return sessionName(d.sessionIndex(s)) }

// op runs one turn.
func (d *turnDriver) op(ctx context.Context, s slot) error {
	_, err := d.sessions[d.sessionIndex(s)].SendAndWait(ctx, "load test turn")
	return err
}

func (d *turnDriver) invalidate() { d.creds.invalidate(d.client.Router()) }

func (d *turnDriver) close() error {
	err := d.client.Close()
	if d.simDone != nil {
		<-d.simDone
	}
	d.closeModel()
	return err
}

func (d *turnDriver) closeModel() {
	if d.model != nil {
		_ = d.model.Close()
	}
}

func (d *turnDriver) extra() map[string]any {
	out := map[string]any{}
	if d.sim != nil {
		out["simulator"] = d.sim.Stats()
	}
	if d.model != nil {
		out["model_requests"] = d.model.Count()
	}
	return out
}
