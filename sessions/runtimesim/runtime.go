package runtimesim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// protocolVersion is the protocol version reported by connect and ping, the
// one the Copilot CLI 1.0.102 reports.
const protocolVersion = 3

// How often a model request that got a 401, or a 429, 5xx or transport
// error, is retried (each retry asks for a token again), and how long before
// its expiry a cached acquire-dialect token is refetched. 1.0.102 also
// retries a 401 twice, but a 5xx five times, with back-off.
const (
	authRetries   = 2
	serverRetries = 2
	refreshBefore = 30 * time.Second
)

// Dialect selects which token request the simulator sends (see
// docs/PROTOCOL.md). The zero value is GetToken, the real CLI's.
type Dialect int

const (
	// GetToken sends providerToken.getToken {providerName, sessionId} before
	// every HTTP attempt, honours hasBearerTokenProvider, caches nothing and
	// accepts only {"token": "<non-empty string>"}, like Copilot CLI 1.0.102.
	GetToken Dialect = iota
	// Acquire sends providerToken.acquire {sessionId, providerName, scope},
	// honours bearerTokenProvider, and caches a result that carries
	// expiresOnTimestamp until 30 s before it.
	Acquire
)

// DefaultDialect is the zero Dialect, the one Options{} and the programs
// (cmd/runtimesim, cmd/tokenload) play unless told otherwise: the real
// CLI's, in which every model request asks for a token, so the client's
// cache does the work.
const DefaultDialect = GetToken

// String returns the name used by the -dialect flag.
func (d Dialect) String() string {
	if d == Acquire {
		return "acquire"
	}
	return "getToken"
}

// ParseDialect parses "acquire" or "getToken".
func ParseDialect(s string) (Dialect, error) {
	switch s {
	case "acquire":
		return Acquire, nil
	case "getToken":
		return GetToken, nil
	}
	return DefaultDialect, fmt.Errorf("runtimesim: unknown dialect %q (want acquire or getToken)", s)
}

func (d Dialect) method() string {
	if d == Acquire {
		return "providerToken.acquire"
	}
	return "providerToken.getToken"
}

// Options configures a Runtime. The zero value plays DefaultDialect with
// fast-test defaults.
type Options struct {
	// Dialect is the token request the runtime sends. Zero: GetToken.
	Dialect Dialect
	// HTTPClient calls the model providers. Default: a client with its own
	// transport that dials loopback addresses only and ignores proxy
	// environment variables, with a 60 s timeout.
	HTTPClient *http.Client
	// TokenTimeout bounds each token request. The real CLI waits forever; a
	// simulator that did would hang tests. A timeout counts as a failed
	// request (retried per TokenRetries). Default 60 s.
	TokenTimeout time.Duration
	// TokenRetries is how often a failed token request (JSON-RPC error or
	// timeout) is retried before the turn ends with session.error. The real
	// CLI retries 5 times about 1 s apart. Default 0, for fast tests.
	TokenRetries int
	// RetryDelay is the pause before every retry. Default 0.
	RetryDelay time.Duration
	// TurnRequests is the number of model exchanges per turn, each a model
	// request plus one more per tool round the scripted answers ask for;
	// set it to load the client with a CLI-like request count without
	// scripting tool calls (the real CLI makes 2 requests in a turn with
	// one tool call). Default 1.
	TurnRequests int
	// Logger receives debug logs (token fingerprints only, never tokens).
	// Nil means silent.
	Logger *slog.Logger
}

// Stats counts what a Runtime did since New, over all its connections.
type Stats struct {
	Connections    int // connections served
	Calls          int // requests received from the client (connect, session.create, ...)
	Sessions       int // sessions created (by create, or by resume of an unknown id)
	Turns          int // turns started by session.send
	TurnErrors     int // turns that ended with session.error
	TokenRequests  int // token requests sent to the client
	TokenErrors    int // JSON-RPC error replies and timeouts
	TokenInvalid   int // results rejected as malformed
	TokenCacheHits int // model requests served from the acquire-dialect cache
	ModelRequests  int // HTTP requests sent to providers
	ToolCalls      int // tool calls played (approved, rejected or denied; none is executed)
}

// TokenRequest records one token request sent to the client.
type TokenRequest struct {
	Method       string // providerToken.acquire or providerToken.getToken
	SessionID    string
	ProviderName string
	Scope        string // acquire dialect only
	// Fingerprint identifies the token received: the first 8 hex digits of
	// its SHA-256 (tokens.Fingerprint's rule); "" when none was accepted.
	Fingerprint string
	// ExpiresOn is the acquire result's expiry; zero when absent.
	ExpiresOn time.Time
	// Err is the failure: the client's error message, "no reply within ...",
	// or why the result was rejected.
	Err string
}

// ModelRequest records one HTTP request sent to a provider.
type ModelRequest struct {
	SessionID    string
	ProviderName string
	// Fingerprint identifies the credential sent (token, bearerToken or
	// apiKey); "" when the request carried none.
	Fingerprint string
	Status      int // 0 when no response arrived
}

// maxRecords bounds each record log so a long load run does not grow without
// limit; the oldest half is dropped when it fills.
const maxRecords = 10000

// Runtime plays the runtime's side of docs/PROTOCOL.md. One Runtime may
// serve any number of connections at once; each connection has its own
// sessions, as each real runtime process serves one client.
type Runtime struct {
	opts   Options
	log    *slog.Logger
	client *http.Client

	mu     sync.Mutex
	stats  Stats
	tokens []TokenRequest
	models []ModelRequest
}

// New returns a Runtime with opts' defaults filled in.
func New(opts Options) *Runtime {
	if opts.TokenTimeout == 0 {
		opts.TokenTimeout = 60 * time.Second
	}
	if opts.TurnRequests <= 0 {
		opts.TurnRequests = 1
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	client := opts.HTTPClient
	if client == nil {
		client = loopbackClient()
	}
	return &Runtime{opts: opts, log: log, client: client}
}

// loopbackClient refuses to dial anything but loopback addresses, so a
// misconfigured baseUrl in a test can never send a token off the machine.
func loopbackClient() *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, Control: loopbackOnly}
	return &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 64},
	}
}

// loopbackOnly is a net.Dialer Control hook: it runs after name resolution
// and before the connection is attempted.
func loopbackOnly(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("runtimesim: refusing to dial non-loopback address %s", address)
	}
	return nil
}

// Version is the version string connect reports: "sim-acquire" or
// "sim-getToken".
func (r *Runtime) Version() string { return "sim-" + r.opts.Dialect.String() }

// Stats returns a snapshot of the counters.
func (r *Runtime) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// TokenRequests returns the most recent token requests, oldest first.
func (r *Runtime) TokenRequests() []TokenRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]TokenRequest(nil), r.tokens...)
}

// ModelRequests returns the most recent model requests, oldest first.
func (r *Runtime) ModelRequests() []ModelRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ModelRequest(nil), r.models...)
}

func (r *Runtime) count(f func(*Stats)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.stats)
}

func (r *Runtime) recordToken(t TokenRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.TokenRequests++
	r.tokens = appendCapped(r.tokens, t)
}

func (r *Runtime) recordModel(m ModelRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.ModelRequests++
	r.models = appendCapped(r.models, m)
}

func appendCapped[T any](s []T, v T) []T {
	if len(s) >= maxRecords {
		s = append(s[:0], s[len(s)-maxRecords/2:]...)
	}
	return append(s, v)
}

// Serve speaks JSON-RPC with Content-Length framing on rwc until the peer
// closes it (then it returns nil) or ctx ends (then it returns ctx.Err()).
// It closes rwc and waits for its handlers and turns before returning.
func (r *Runtime) Serve(ctx context.Context, rwc io.ReadWriteCloser) error {
	connCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := &conn{rt: r, ctx: connCtx, sessions: map[string]*session{}}
	r.count(func(s *Stats) { s.Connections++ })
	// AsyncHandler: the runtime calls its peer (token requests) while the
	// peer may be calling it; a serial handler would deadlock.
	jc := jsonrpc2.NewConn(connCtx,
		jsonrpc2.NewBufferedStream(rwc, jsonrpc2.VSCodeObjectCodec{}),
		jsonrpc2.AsyncHandler(c),
		jsonrpc2.SetLogger(rpcLogger{r.log}))
	select {
	case <-jc.DisconnectNotify():
	case <-ctx.Done():
	}
	_ = jc.Close() // ErrClosed when the peer went first
	cancel()       // ends running turns and pending token requests
	c.shutdown()
	return ctx.Err()
}

// rpcLogger routes jsonrpc2's own messages (protocol errors, stray
// responses; never message contents) to the debug log.
type rpcLogger struct{ l *slog.Logger }

func (l rpcLogger) Printf(format string, v ...any) {
	l.l.Debug(fmt.Sprintf(format, v...))
}

// newID returns a random UUIDv4 string, the shape of the real runtime's ids.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// fingerprint is tokens.Fingerprint, except that no secret records "" (the
// records' documented "none").
func fingerprint(secret string) string {
	if secret == "" {
		return ""
	}
	return tokens.Fingerprint(secret)
}
