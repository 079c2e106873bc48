package e2e

// Helpers of the hardening tests (chaos, connection faults, isolation,
// secrets, leaks). Names carry a "hard" prefix: other e2e files share the
// package.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"
	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/capture"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/transport"
)

// hardSettle bounds waits for things that must happen "at all"; generous so
// that a slow shared machine never fails a correct build.
const hardSettle = 10 * time.Second

// hardLeakCheck fails t if goroutines started during it are still running
// at its end (after its other cleanups, which run first).
func hardLeakCheck(t *testing.T) {
	t.Helper()
	opts := append([]goleak.Option{goleak.IgnoreCurrent()}, protoactorThrottle...)
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}

// hardWorld is a broker whose logs, spans and metrics are all captured.
type hardWorld struct {
	t      *testing.T
	cap    *capture.Capture
	broker *actors.Broker

	mu      sync.Mutex
	secrets map[string]string // label -> value, scanned for at the end
}

// newHardWorld starts a broker with capture. The broker closes at cleanup,
// and Close must report no error.
func newHardWorld(t *testing.T, opts actors.Options) *hardWorld {
	t.Helper()
	w := &hardWorld{t: t, cap: capture.New(), secrets: map[string]string{}}
	opts.Logger = w.cap.Logger
	opts.TracerProvider = w.cap.TracerProvider
	opts.MeterProvider = w.cap.MeterProvider
	w.broker = actors.NewBroker(opts)
	t.Cleanup(func() {
		// Bounded, so that a Close that hangs fails this test instead of
		// the whole run's timeout.
		closed := make(chan error, 1)
		go func() { closed <- w.broker.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Errorf("broker Close: %v", err)
			}
		case <-time.After(hardSettle):
			t.Errorf("broker Close did not return within %s", hardSettle)
		}
		_ = w.cap.Close()
	})
	return w
}

// secret returns a fresh random value with the given prefix and remembers
// it, to be looked for in everything captured.
func (w *hardWorld) secret(prefix string) string {
	v := hardUnique(prefix)
	w.remember(prefix+tokens.Fingerprint(v), v)
	return v
}

// hardUnique returns prefix followed by random hex, unique to this run.
func hardUnique(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// credential makes a shared Credential on the world's broker. It is not
// closed at cleanup: the tests close it where its end is part of what they
// check, and the broker's Close stops the rest.
func (w *hardWorld) credential(name, scope string, src tokens.Source) *actors.Credential {
	w.t.Helper()
	c, err := w.broker.NewCredential(name, scope, src)
	if err != nil {
		w.t.Fatalf("NewCredential %q: %v", name, err)
	}
	return c
}

func (w *hardWorld) remember(label, v string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.secrets[label] = v
}

// assertNoSecrets fails if any remembered secret appears in the logs,
// spans, metrics or any text added to the capture.
func (w *hardWorld) assertNoSecrets() {
	w.t.Helper()
	w.mu.Lock()
	secrets := make(map[string]string, len(w.secrets))
	for k, v := range w.secrets {
		secrets[k] = v
	}
	w.mu.Unlock()
	found, err := w.cap.Find(context.Background(), secrets)
	if err != nil {
		w.t.Fatal(err)
	}
	for _, f := range found {
		w.t.Errorf("secret leaked: %s", f)
	}
	w.t.Logf("scanned %d log records, %d spans and the metrics for %d secrets: %d found",
		w.cap.Records(), len(w.cap.Spans.Started()), len(secrets), len(found))
}

// gauge reads one of the broker's up-down counters.
func (w *hardWorld) gauge(name string) int64 {
	w.t.Helper()
	n, _, err := w.cap.Int64Sum(context.Background(), name)
	if err != nil {
		w.t.Fatal(err)
	}
	return n
}

// eventually polls cond until it holds, or fails after hardSettle.
func (w *hardWorld) eventually(what string, cond func() bool) {
	w.t.Helper()
	hardEventually(w.t, what, cond)
}

func hardEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hardSettle)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, hardSettle)
		}
		time.Sleep(time.Millisecond)
	}
}

// hardRuntime plays the runtime: a jsonrpc2 connection whose peer is a
// transport.Conn of the broker, over a pipe or loopback TCP.
type hardRuntime struct {
	w      *hardWorld
	rpc    *jsonrpc2.Conn
	client *transport.Conn
	raw    io.Closer // the runtime's end of the link
	tokens sync.Map  // token value -> struct{}: every token received
}

// dial connects a runtime to a new client connection. over is "pipe" or
// "tcp"; on TCP the runtime listens and the client dials, as with a
// runtime started with a port.
func (w *hardWorld) dial(over string) *hardRuntime {
	w.t.Helper()
	var clientEnd, runtimeEnd io.ReadWriteCloser
	switch over {
	case "pipe":
		clientEnd, runtimeEnd = net.Pipe()
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			w.t.Fatal(err)
		}
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}()
		c, err := (&net.Dialer{}).DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			w.t.Fatal(err)
		}
		rc, ok := <-accepted
		_ = ln.Close()
		if !ok {
			w.t.Fatal("accept failed")
		}
		clientEnd, runtimeEnd = c, rc
	default:
		w.t.Fatalf("unknown link %q", over)
	}
	ctx := context.Background()
	client := transport.NewConn(ctx, w.broker, clientEnd, nil, transport.ConnOptions{
		Logger: w.cap.Logger, TracerProvider: w.cap.TracerProvider, MeterProvider: w.cap.MeterProvider,
	})
	rpc := jsonrpc2.NewConn(ctx, jsonrpc2.NewBufferedStream(runtimeEnd, jsonrpc2.VSCodeObjectCodec{}), jsonrpc2.HandlerWithError(
		func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request) (any, error) {
			return nil, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: "the test runtime serves nothing"}
		}))
	rt := &hardRuntime{w: w, rpc: rpc, client: client, raw: runtimeEnd}
	w.t.Cleanup(rt.hangUp)
	return rt
}

// hangUp closes the runtime's end and waits until both sides saw it.
func (rt *hardRuntime) hangUp() {
	_ = rt.rpc.Close()
	_ = rt.raw.Close()
	<-rt.rpc.DisconnectNotify()
	<-rt.client.Done()
}

// hardAnswer is what the runtime got for one token request.
type hardAnswer struct {
	token   string
	expires int64 // expiresOnTimestamp, acquire dialect only
	rpcErr  *jsonrpc2.Error
	err     error // the call itself failed: no answer (deadline, closed)
	took    time.Duration
}

func (a hardAnswer) String() string {
	switch {
	case a.err != nil:
		return "no answer: " + a.err.Error()
	case a.rpcErr != nil:
		return fmt.Sprintf("error %d: %s", a.rpcErr.Code, a.rpcErr.Message)
	}
	return "token " + tokens.Fingerprint(a.token)
}

// ask sends one token request in the given dialect, bounded by ctx.
func (rt *hardRuntime) ask(ctx context.Context, method, session, provider string) hardAnswer {
	params := map[string]string{"sessionId": session, "providerName": provider}
	start := time.Now()
	var res struct {
		Token   string `json:"token"`
		Expires int64  `json:"expiresOnTimestamp"`
	}
	var raw json.RawMessage
	err := rt.rpc.Call(ctx, method, params, &raw)
	a := hardAnswer{took: time.Since(start)}
	var rpcErr *jsonrpc2.Error
	switch {
	case errors.As(err, &rpcErr):
		a.rpcErr = rpcErr
		rt.noteError(rpcErr)
	case err != nil:
		a.err = err
	default:
		if err := json.Unmarshal(raw, &res); err != nil {
			a.err = fmt.Errorf("result %d bytes: %w", len(raw), err)
			break
		}
		if method == transport.MethodGetToken && strings.Contains(string(raw), "expiresOnTimestamp") {
			a.err = errors.New("getToken result carries an expiry")
			break
		}
		a.token, a.expires = res.Token, res.Expires
		rt.tokens.Store(res.Token, struct{}{})
		rt.w.remember("served token "+tokens.Fingerprint(res.Token), res.Token)
	}
	return a
}

// call sends one request with arbitrary params, so that malformed shapes
// can be tried, and returns its result or its JSON-RPC error; no answer at
// all fails t.
func (rt *hardRuntime) call(t *testing.T, method string, params any) (map[string]any, *jsonrpc2.Error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hardSettle)
	defer cancel()
	var res map[string]any
	err := rt.rpc.Call(ctx, method, params, &res)
	if err == nil {
		return res, nil
	}
	var rpcErr *jsonrpc2.Error
	if !errors.As(err, &rpcErr) {
		t.Fatalf("%s: no JSON-RPC answer: %v", method, err)
	}
	rt.noteError(rpcErr)
	return nil, rpcErr
}

// noteError adds an error the runtime received to the capture: errors
// reach the user, so they are scanned for secrets too.
func (rt *hardRuntime) noteError(e *jsonrpc2.Error) {
	rt.w.cap.Add("error returned to the runtime", e.Message)
	if e.Data != nil {
		rt.w.cap.Add("error data returned to the runtime", string(*e.Data))
	}
}

// open registers a session on the runtime's client connection.
func (rt *hardRuntime) open(id string, providers ...actors.Provider) {
	rt.w.t.Helper()
	if err := rt.client.Router().Open(id, providers); err != nil {
		rt.w.t.Fatalf("Open %q: %v", id, err)
	}
}

// hardSource is a scripted credential: every token it issues starts with
// its prefix (so a token can be traced back to the credential that made
// it) and is remembered as a secret.
type hardSource struct {
	w      *hardWorld
	prefix string
	bare   bool
	life   time.Duration

	calls   atomic.Int64
	active  atomic.Int64 // calls in progress
	started chan struct{}
	ended   chan error // each call's end: nil, or its context's error
	gate    chan struct{}
	// behave, when set, replaces issuing: it may block, fail or panic.
	behave func(ctx context.Context, n int64) (tokens.Token, error)
}

func (w *hardWorld) source(prefix string) *hardSource {
	return &hardSource{w: w, prefix: prefix, life: time.Hour, started: make(chan struct{}, 1024), ended: make(chan error, 1024)}
}

// gated makes every call wait until release (or its context ends).
func (s *hardSource) gated() *hardSource {
	s.gate = make(chan struct{})
	return s
}

func (s *hardSource) release() { close(s.gate) }

func (s *hardSource) issue() tokens.Token {
	v := s.w.secret(s.prefix)
	if s.bare {
		return tokens.Token{Value: v}
	}
	return tokens.Token{Value: v, ExpiresOn: time.Now().Add(s.life)}
}

func (s *hardSource) Token(ctx context.Context, _ tokens.Request) (tok tokens.Token, err error) {
	n := s.calls.Add(1)
	s.active.Add(1)
	defer s.active.Add(-1)
	select {
	case s.started <- struct{}{}:
	default:
	}
	defer func() {
		select {
		case s.ended <- ctx.Err():
		default:
		}
	}()
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return tokens.Token{}, ctx.Err()
		}
	}
	if s.behave != nil {
		return s.behave(ctx, n)
	}
	return s.issue(), nil
}

// owns reports whether v was issued by s.
func (s *hardSource) owns(v string) bool { return strings.HasPrefix(v, s.prefix) }

func hardWait(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(hardSettle):
		t.Fatalf("%s: not within %s", what, hardSettle)
	}
}

// hardWaitCancelled waits for the end of a credential call (a hardSource's
// ended) and fails unless its context was cancelled.
func hardWaitCancelled(t *testing.T, what string, ended <-chan error) {
	t.Helper()
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s ended with %v, want its context cancelled", what, err)
		}
	case <-time.After(hardSettle):
		t.Fatalf("%s was not cancelled within %s", what, hardSettle)
	}
}

// hardCode is the error code of an answer, 0 for a token, -1 for none.
func hardCode(a hardAnswer) int64 {
	switch {
	case a.err != nil:
		return -1
	case a.rpcErr != nil:
		return a.rpcErr.Code
	}
	return 0
}

var (
	hardActiveSessions  = tracing.MetricActiveSessions
	hardActiveProviders = tracing.MetricActiveProviders
)
