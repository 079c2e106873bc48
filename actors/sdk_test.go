package actors_test

// The official copilot-sdk Go client's token callback, played by a
// stand-in: it calls the closure concurrently, once per model request,
// with no context, exactly as the SDK's BearerTokenProvider is called.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sourcegraph/jsonrpc2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/metrictest"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/transport"
)

// providerTokenArgs and bearerTokenProvider mirror the SDK's
// ProviderTokenArgs and ProviderConfig.BearerTokenProvider.
type providerTokenArgs struct{ ProviderName, SessionID string }

type bearerTokenProvider func(providerTokenArgs) (string, error)

// sdkModelRequests plays n model requests of session, all at once, each
// calling the provider first, and returns the tokens and errors.
func sdkModelRequests(provider bearerTokenProvider, session string, n int) ([]string, []error) {
	toks, errs := make([]string, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { toks[i], errs[i] = provider(providerTokenArgs{ProviderName: "default", SessionID: session}) })
	}
	wg.Wait()
	return toks, errs
}

// 100 concurrent callback calls on a cold shared credential make one
// Source call, and all get its token; later calls are cache hits.
func TestBearerTokenColdStampede(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, actors.Options{})
		defer closeBroker(t, b)
		src := &fakeSource{fn: func(_ context.Context, n int64, _ tokens.Request) (tokens.Token, error) {
			time.Sleep(100 * time.Millisecond) // the identity endpoint's latency
			return tokens.Token{Value: value("t", int(n)), ExpiresOn: time.Now().Add(time.Hour)}, nil
		}}
		cred := credential(t, b, "mi", "api://x/.default", src)
		provider := func(a providerTokenArgs) (string, error) { return cred.BearerToken(a.SessionID, a.ProviderName) }
		toks, errs := sdkModelRequests(provider, "s1", 100)
		for i := range toks {
			if errs[i] != nil || toks[i] != value("t", 1) {
				t.Fatalf("call %d: %s, %v", i, fp(toks[i]), errs[i])
			}
		}
		toks, errs = sdkModelRequests(provider, "s2", 100)
		if errs[0] != nil || toks[99] != value("t", 1) {
			t.Fatalf("warm: %s, %v", fp(toks[99]), errs[0])
		}
		if n := src.calls.Load(); n != 1 {
			t.Fatalf("200 callback calls made %d Source calls, want 1", n)
		}
	})
}

// A hung Source: every callback call returns an error within
// RequestTimeout (the only deadline the callback gets); those in the
// back-off after the call's deadline return at once.
func TestBearerTokenHungSource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = 5 * time.Second
		b := newBroker(t, actors.Options{RequestTimeout: timeout})
		defer closeBroker(t, b)
		src := &fakeSource{fn: func(ctx context.Context, _ int64, _ tokens.Request) (tokens.Token, error) {
			<-ctx.Done()
			return tokens.Token{}, ctx.Err()
		}}
		cred := credential(t, b, "mi", "", src)
		provider := func(a providerTokenArgs) (string, error) { return cred.BearerToken(a.SessionID, a.ProviderName) }
		for turn := range 8 { // one model request every 5 s
			start := time.Now()
			toks, errs := sdkModelRequests(provider, "s", 3)
			for i, err := range errs {
				if !errors.Is(err, actors.ErrTimeout) || toks[i] != "" {
					t.Fatalf("turn %d call %d: %q, %v; want a timeout", turn, i, toks[i], err)
				}
			}
			if took := time.Since(start); took > timeout {
				t.Fatalf("turn %d: calls returned after %s, RequestTimeout %s", turn, took, timeout)
			}
			t.Logf("+%s: %v", elapsed(), errs[0])
			time.Sleep(timeout)
		}
		if n := src.calls.Load(); n < 1 || n > 2 {
			t.Fatalf("%d Source calls in 80 s of a hung Source (30 s deadline, then back-off)", n)
		}
	})
}

// A callback request is recorded as a request over the transport is: the
// same span attributes (but the JSON-RPC ones), the same metrics (but the
// dialect), for a token and for an error.
func TestBearerTokenTelemetryMatchesTransport(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer tp.Shutdown(context.Background())
	defer mp.Shutdown(context.Background())
	b := actors.NewBroker(actors.Options{TracerProvider: tp, MeterProvider: mp})
	defer b.Close()
	// The same credentials behind each door, each its own cache.
	creds := func(door string) (good, bad *actors.Credential) {
		good = credential(t, b, "good", "", tokens.Static(tokens.Token{Value: "tok-telemetry-" + door, ExpiresOn: time.Now().Add(time.Hour)}))
		bad = credential(t, b, "bad", "", tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
			return tokens.Token{}, errors.New("identity endpoint answered 500")
		}))
		return good, bad
	}
	good, bad := creds("transport")
	// Over the transport: a pipe, a bare jsonrpc2 peer playing the runtime.
	clientEnd, runtimeEnd := net.Pipe()
	conn := transport.NewConn(context.Background(), b, clientEnd, nil, transport.ConnOptions{})
	defer conn.Close()
	if err := conn.Router().Open("s", []actors.Provider{{Name: "good", Source: good}, {Name: "bad", Source: bad}}); err != nil {
		t.Fatal(err)
	}
	runtime := jsonrpc2.NewConn(context.Background(), jsonrpc2.NewBufferedStream(runtimeEnd, jsonrpc2.VSCodeObjectCodec{}),
		jsonrpc2.HandlerWithError(func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request) (any, error) { return nil, nil }))
	defer runtime.Close()
	for _, p := range []string{"good", "good", "bad"} {
		var res map[string]any
		_ = runtime.Call(context.Background(), transport.MethodGetToken, map[string]string{"sessionId": "s", "providerName": p}, &res)
	}
	// A request's span and metrics are recorded after its reply is sent;
	// Close returns once every request handler has.
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	// Through the callback, the same three requests.
	good, bad = creds("callback")
	for _, c := range []*actors.Credential{good, good, bad} {
		_, _ = c.BearerToken("s", c.Name())
	}

	byDialect := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range spans.Ended() {
		if s.Name() == tracing.SpanRefresh {
			continue
		}
		d := "callback"
		if s.Name() != tracing.SpanCallback {
			d = "transport"
		}
		byDialect[d] = append(byDialect[d], s)
	}
	for _, ss := range byDialect { // in the order the requests were made, not ended
		sort.Slice(ss, func(i, j int) bool { return ss[i].StartTime().Before(ss[j].StartTime()) })
	}
	if len(byDialect["transport"]) != 3 || len(byDialect["callback"]) != 3 {
		t.Fatalf("request spans: %d over the transport, %d through the callback", len(byDialect["transport"]), len(byDialect["callback"]))
	}
	for i := range 3 {
		tr, cb := byDialect["transport"][i], byDialect["callback"][i]
		if got, want := tokenbrokerAttrs(cb), tokenbrokerAttrs(tr); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("request %d: callback span attributes %v, transport %v", i, got, want)
		}
		if (cb.Status().Code == codes.Error) != (tr.Status().Code == codes.Error) {
			t.Errorf("request %d: callback status %v, transport %v", i, cb.Status(), tr.Status())
		}
	}
	if d := byDialect["callback"][2].Status().Description; d != `session "s": provider "bad": shared credential "bad": credential failed: identity endpoint answered 500` {
		t.Errorf("callback error status %q", d)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	counts := metrictest.Sums(&rm, tracing.MetricRequests, tracing.Dialect, tracing.Outcome)
	for _, o := range []string{"refreshed", "hit", "error"} {
		if counts[tracing.DialectGetToken+"/"+o] != 1 || counts[tracing.DialectCallback+"/"+o] != 1 {
			t.Errorf("%s: %d over the transport, %d through the callback (all: %v)", o, counts[tracing.DialectGetToken+"/"+o], counts[tracing.DialectCallback+"/"+o], counts)
		}
	}
}

// tokenbrokerAttrs are a span's tokenbroker.* attribute keys, with values
// for those that do not vary between two requests (not remaining_s).
func tokenbrokerAttrs(s sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, kv := range s.Attributes() {
		k := string(kv.Key)
		if len(k) < 12 || k[:12] != "tokenbroker." {
			continue
		}
		if kv.Key == tracing.RemainingSeconds {
			out = append(out, k)
			continue
		}
		if kv.Key == tracing.ProviderName || kv.Value.Type() != attribute.STRING {
			out = append(out, k+"="+kv.Value.String())
			continue
		}
		out = append(out, k+"="+kv.Value.AsString())
	}
	sort.Strings(out)
	return out
}
