package e2e

// End-to-end tests against the real Copilot CLI (see internal/clitest for
// how it is found), fully offline: every provider is a fake
// OpenAI-compatible endpoint on 127.0.0.1 (sessions/runtimesim/fakemodel).

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/clitest"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/transport"
)

const testScope = "api://tokenbroker-e2e/.default"

// TestCopilotCLI runs the real-CLI scenarios, two at a time (go test's
// default -parallel on two cores), then checks nothing leaked.
func TestCopilotCLI(t *testing.T) {
	cli := clitest.Path(t)
	leaks := goleak.IgnoreCurrent()
	t.Run("scenarios", func(t *testing.T) {
		for _, sc := range []struct {
			name string
			run  func(*testing.T, string)
		}{
			// The slowest first, so they overlap the others.
			{"HangingCredential", testHangingCredential},
			{"FailingCredentialRecovers", testFailingCredentialRecovers},
			{"WholeSessionProvider", testWholeSessionProvider},
			{"NamedProviders", testNamedProviders},
			{"CachedUntilExpiry", testCachedUntilExpiry},
			{"ResumeOnFreshProcess", testResumeOnFreshProcess},
			{"TenantIsolation", testTenantIsolation},
			{"Abort", testAbort},
		} {
			t.Run(sc.name, func(t *testing.T) {
				t.Parallel()
				sc.run(t, cli)
			})
		}
	})
	goleak.VerifyNone(t, append(protoactorThrottle, leaks)...)
}

// (a) A whole-session provider's token reaches the model endpoint, the CLI
// asks for it as "default" with our session id, and session.destroy ends
// the session and its routing.
func testWholeSessionProvider(t *testing.T, cli string) {
	ctx := testContext(t)
	b := newBroker(t, actors.Options{})
	c := startCLI(t, cli, b, client.Options{})
	model := newModel(t, "whole-session answer")
	cred := newCredential("whole")
	p := provider(model, cred, testScope)
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{
		SessionID: "e2e-whole-1",
		Model:     "gpt-4o",
		Provider:  &p,
		Extra:     map[string]any{"streaming": true},
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ans, err := sess.SendAndWait(ctx, "Say hello")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first turn took %s", time.Since(start).Round(time.Millisecond))
	if ans != "whole-session answer" {
		t.Fatalf("answer %q", ans)
	}
	reqs := model.Requests()
	if len(reqs) == 0 {
		t.Fatal("the model endpoint got no request")
	}
	if fps, ok := onlyToken(model, cred.value(1)); !ok {
		t.Fatalf("endpoint got tokens %v, want only %s", fps, tokens.Fingerprint(cred.value(1)))
	}
	t.Logf("model requests: %d, streaming: %t", len(reqs), reqs[0].Stream)
	if got := cred.requests(); len(got) != 1 || got[0] != (tokens.Request{SessionID: "e2e-whole-1", ProviderName: "default", Scope: testScope}) {
		t.Fatalf("credential requests %+v", got)
	}

	if err := sess.Destroy(ctx); err != nil {
		t.Fatalf("session.destroy: %v", err)
	}
	if c.Router().Len() != 0 {
		t.Error("routing still open after Destroy")
	}
	// The runtime forgot the session: sending to it is refused.
	var res struct{}
	if err := c.Call(ctx, "session.send", map[string]any{"sessionId": "e2e-whole-1", "prompt": "x"}, &res); err == nil {
		t.Error("the runtime still accepts messages for a destroyed session")
	}
}

// (b) Two named providers: each turn is authenticated with its own
// provider's token, and the CLI asks with that provider's name.
func testNamedProviders(t *testing.T, cli string) {
	ctx := testContext(t)
	spans := tracetest.NewSpanRecorder()
	b := newBroker(t, actors.Options{})
	c := startCLI(t, cli, b, client.Options{Conn: transport.ConnOptions{
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)),
	}})
	alphaModel, betaModel := newModel(t, "from alpha"), newModel(t, "from beta")
	alpha, beta := newCredential("alpha"), newCredential("beta")
	alpha.bare, beta.bare = true, true // a fresh token per request
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{
		SessionID: "e2e-named-1",
		Model:     "alpha/m1",
		Models: []sessions.ModelConfig{
			{ID: "m1", Provider: "alpha", WireModel: "gpt-4o"},
			{ID: "m2", Provider: "beta", WireModel: "gpt-4o-mini"},
		},
		Providers: []sessions.NamedProviderConfig{
			{Name: "alpha", ProviderConfig: provider(alphaModel, alpha, testScope)},
			{Name: "beta", ProviderConfig: provider(betaModel, beta, "")},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ans, err := sess.SendAndWait(ctx, "first"); err != nil || ans != "from alpha" {
		t.Fatalf("alpha turn: %q, %v", ans, err)
	}
	if err := sess.SwitchModel(ctx, "beta/m2"); err != nil {
		t.Fatal(err)
	}
	if ans, err := sess.SendAndWait(ctx, "second"); err != nil || ans != "from beta" {
		t.Fatalf("beta turn: %q, %v", ans, err)
	}

	for _, x := range []struct {
		name  string
		model interface{ Count() int }
		cred  *credential
		scope string
	}{{"alpha", alphaModel, alpha, testScope}, {"beta", betaModel, beta, ""}} {
		if x.model.Count() == 0 {
			t.Errorf("%s: endpoint got no request", x.name)
		}
		if x.cred.calls() != x.model.Count() {
			t.Errorf("%s: %d credential calls for %d model requests (bare tokens: one each)", x.name, x.cred.calls(), x.model.Count())
		}
		for _, r := range x.cred.requests() {
			if r.ProviderName != x.name || r.SessionID != "e2e-named-1" || r.Scope != x.scope {
				t.Errorf("%s: credential asked %+v", x.name, r)
			}
		}
	}
	for i, r := range alphaModel.Requests() {
		if r.BearerToken() != alpha.value(i+1) {
			t.Errorf("alpha request %d: token %s, want %s", i, tokens.Fingerprint(r.BearerToken()), tokens.Fingerprint(alpha.value(i+1)))
		}
	}
	for i, r := range betaModel.Requests() {
		if r.BearerToken() != beta.value(i+1) {
			t.Errorf("beta request %d: token %s, want %s", i, tokens.Fingerprint(r.BearerToken()), tokens.Fingerprint(beta.value(i+1)))
		}
	}
	// The provider names on the wire, in order: alpha's turn, then beta's.
	var asked []string
	for _, s := range spans.Ended() {
		if s.Name() == transport.MethodGetToken {
			for _, kv := range s.Attributes() {
				if kv.Key == tracing.ProviderName {
					asked = append(asked, kv.Value.AsString())
				}
			}
		}
	}
	if len(asked) < 2 || asked[0] != "alpha" || asked[len(asked)-1] != "beta" {
		t.Fatalf("the CLI asked with provider names %v", asked)
	}
}

// (c) Several turns: the CLI asks before every model request, the
// credential is called once while its token is valid, and again once it
// has expired. Time is a fake clock, so expiry takes no waiting.
func testCachedUntilExpiry(t *testing.T, cli string) {
	ctx := testContext(t)
	clock := &fakeClock{now: time.Now()}
	spans := tracetest.NewSpanRecorder()
	b := newBroker(t, actors.Options{Clock: clock})
	c := startCLI(t, cli, b, client.Options{Conn: transport.ConnOptions{
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)),
	}})
	model := newModel(t, "cached answer")
	cred := newCredential("cached")
	cred.clock = clock
	p := provider(model, cred, testScope)
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "e2e-cache-1", Model: "gpt-4o", Provider: &p})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := sess.SendAndWait(ctx, fmt.Sprintf("turn %d", i+1)); err != nil {
			t.Fatalf("turn %d: %v", i+1, err)
		}
	}
	if n := cred.calls(); n != 1 {
		t.Fatalf("credential called %d times in three turns with a valid token, want 1", n)
	}
	clock.Advance(2 * time.Hour) // the one-hour token is now expired
	if _, err := sess.SendAndWait(ctx, "turn 4"); err != nil {
		t.Fatalf("turn 4: %v", err)
	}
	if n := cred.calls(); n != 2 {
		t.Fatalf("credential called %d times after expiry, want 2", n)
	}

	var outcomes []string
	for _, s := range spans.Ended() {
		if s.Name() != transport.MethodGetToken {
			continue
		}
		for _, kv := range s.Attributes() {
			if kv.Key == tracing.Outcome {
				outcomes = append(outcomes, kv.Value.AsString())
			}
		}
	}
	want := []string{tracing.OutcomeRefreshed, tracing.OutcomeHit, tracing.OutcomeHit, tracing.OutcomeRefreshed}
	if !slices.Equal(outcomes, want) {
		t.Fatalf("token requests answered %v, want one per turn: %v", outcomes, want)
	}
	reqs := model.Requests()
	if len(reqs) != 4 {
		t.Fatalf("%d model requests, want 4", len(reqs))
	}
	for i, r := range reqs {
		want := cred.value(1)
		if i == 3 {
			want = cred.value(2)
		}
		if r.BearerToken() != want {
			t.Errorf("model request %d: token %s, want %s", i+1, tokens.Fingerprint(r.BearerToken()), tokens.Fingerprint(want))
		}
	}
}

// (d) A failing credential ends the turn with session.error carrying the
// credential's message; once the credential recovers the session works.
func testFailingCredentialRecovers(t *testing.T, cli string) {
	ctx := testContext(t)
	// Short back-off: the CLI's own retries (about 1 s apart) must reach the
	// credential again, and the recovery must not wait out a long back-off.
	policy := tokens.DefaultPolicy()
	policy.BackoffBase, policy.BackoffMax = 50*time.Millisecond, 100*time.Millisecond
	b := newBroker(t, actors.Options{Policy: &policy})
	c := startCLI(t, cli, b, client.Options{})
	model := newModel(t, "recovered")
	cred := newCredential("flaky")
	const failure = "identity endpoint unavailable (HTTP 503)"
	cred.setFail(errors.New(failure))
	p := provider(model, cred, testScope)
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "e2e-fail-1", Model: "gpt-4o", Provider: &p})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = sess.SendAndWait(ctx, "hello")
	var se *client.SessionError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want a session.error", err)
	}
	t.Logf("failed turn ended after %s with errorType %q: %s", time.Since(start).Round(time.Millisecond), se.Type, se.Message)
	if !strings.Contains(se.Message, failure) {
		t.Errorf("session.error message does not carry the credential's error")
	}
	if model.Count() != 0 {
		t.Errorf("the model was called %d times without a token", model.Count())
	}
	failedCalls := cred.calls()
	if failedCalls < 2 {
		t.Errorf("credential called %d times: the CLI's retries did not reach it", failedCalls)
	}

	cred.setFail(nil)
	ans, err := sess.SendAndWait(ctx, "again")
	if err != nil || ans != "recovered" {
		t.Fatalf("after recovery: %q, %v", ans, err)
	}
	if fps, ok := onlyToken(model, cred.value(failedCalls+1)); !ok {
		t.Fatalf("endpoint got tokens %v", fps)
	}
}

// (e) session.resume on a fresh CLI process sharing the COPILOT_HOME
// re-registers the providers (with a new credential) and works.
func testResumeOnFreshProcess(t *testing.T, cli string) {
	ctx := testContext(t)
	home := t.TempDir()
	b := newBroker(t, actors.Options{})
	model := newModel(t, "resumed answer")
	first := newCredential("first")
	cfg := func(cred *credential) sessions.SessionConfig {
		p := provider(model, cred, testScope)
		return sessions.SessionConfig{SessionID: "e2e-resume-1", Model: "gpt-4o", Provider: &p}
	}

	c1 := startCLI(t, cli, b, client.Options{Home: home})
	s1, err := c1.CreateSession(ctx, cfg(first))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s1.SendAndWait(ctx, "before the restart"); err != nil {
		t.Fatal(err)
	}
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	<-s1.Done()
	model.Reset()

	second := newCredential("second")
	c2 := startCLI(t, cli, b, client.Options{Home: home})
	s2, err := c2.ResumeSession(ctx, cfg(second))
	if err != nil {
		t.Fatalf("session.resume: %v", err)
	}
	ans, err := s2.SendAndWait(ctx, "after the restart")
	if err != nil || ans != "resumed answer" {
		t.Fatalf("resumed turn: %q, %v", ans, err)
	}
	if fps, ok := onlyToken(model, second.value(1)); !ok || len(fps) == 0 {
		t.Fatalf("endpoint got tokens %v, want only the resumed credential's %s", fps, tokens.Fingerprint(second.value(1)))
	}
	if first.calls() != 1 || second.calls() != 1 {
		t.Errorf("credential calls: first %d, second %d", first.calls(), second.calls())
	}
}

// (f) Two tenants' sessions on one CLI, turns running at the same time:
// neither tenant's token ever reaches the other's endpoint.
func testTenantIsolation(t *testing.T, cli string) {
	ctx := testContext(t)
	b := newBroker(t, actors.Options{})
	c := startCLI(t, cli, b, client.Options{})
	type tenant struct {
		name  string
		model interface {
			Count() int
		}
		cred *credential
		sess *client.Session
	}
	var tenants []*tenant
	models := map[string]func() []string{}
	for _, name := range []string{"tenant-a", "tenant-b"} {
		m := newModel(t, "answer for "+name)
		cred := newCredential(name)
		p := provider(m, cred, "api://"+name+"/.default")
		sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "e2e-" + name, Model: "gpt-4o", Provider: &p})
		if err != nil {
			t.Fatal(err)
		}
		tenants = append(tenants, &tenant{name, m, cred, sess})
		models[name] = func() []string {
			var got []string
			for _, r := range m.Requests() {
				got = append(got, r.BearerToken())
			}
			return got
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, tn := range tenants {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2 {
				ans, err := tn.sess.SendAndWait(ctx, fmt.Sprintf("%s turn %d", tn.name, i))
				if err != nil {
					errs <- fmt.Errorf("%s: %w", tn.name, err)
					return
				}
				if ans != "answer for "+tn.name {
					errs <- fmt.Errorf("%s got the answer %q", tn.name, ans)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, tn := range tenants {
		got := models[tn.name]()
		if len(got) != 2 {
			t.Errorf("%s: %d model requests, want 2", tn.name, len(got))
		}
		for _, tok := range got {
			if tok != tn.cred.value(1) {
				t.Errorf("%s's endpoint got token %s, want its own %s", tn.name, tokens.Fingerprint(tok), tokens.Fingerprint(tn.cred.value(1)))
			}
		}
		for _, r := range tn.cred.requests() {
			if r.SessionID != "e2e-"+tn.name {
				t.Errorf("%s's credential asked for session %q", tn.name, r.SessionID)
			}
		}
	}
}

// (g) A credential that never answers: every token request gets an error
// reply at the broker's deadline, and the turn ends instead of hanging.
func testHangingCredential(t *testing.T, cli string) {
	ctx := testContext(t)
	const deadline = time.Second
	b := newBroker(t, actors.Options{RequestTimeout: deadline})
	c := startCLI(t, cli, b, client.Options{})
	model := newModel(t, "never")
	cred := newCredential("hang")
	cred.block = true
	p := provider(model, cred, testScope)
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "e2e-hang-1", Model: "gpt-4o", Provider: &p})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = sess.SendAndWait(ctx, "hello")
	took := time.Since(start)
	var se *client.SessionError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v after %s, want a session.error", err, took)
	}
	t.Logf("turn with a hanging credential ended after %s (%d credential calls): %s", took.Round(time.Millisecond), cred.calls(), se.Message)
	// The broker's reply, carried into the CLI's message: "provider
	// \"default\": credential did not answer within 1s".
	m := regexp.MustCompile(`credential did not answer within ([0-9.]+m?s)`).FindStringSubmatch(se.Message)
	if m == nil {
		t.Fatal("session.error does not carry the broker's timeout reply")
	}
	if d, err := time.ParseDuration(m[1]); err != nil || d < deadline || d > 10*deadline {
		t.Errorf("token request answered after %s, want about %s", m[1], deadline)
	}
	if model.Count() != 0 {
		t.Errorf("the model was called %d times", model.Count())
	}
}

// Abort ends a turn whose model call is in progress; the session stays
// usable.
func testAbort(t *testing.T, cli string) {
	ctx := testContext(t)
	b := newBroker(t, actors.Options{})
	c := startCLI(t, cli, b, client.Options{})
	release, called := make(chan struct{}), make(chan struct{})
	var once, calledOnce sync.Once
	free := func() { once.Do(func() { close(release) }) }
	model, err := fakemodel.Start(fakemodel.Options{Reply: func(r fakemodel.Request) string {
		// The CLI prefixes the user's text with context of its own
		// (<current_datetime>…</current_datetime>).
		if strings.HasSuffix(r.Prompt, "slow") {
			calledOnce.Do(func() { close(called) })
			<-release
		}
		return "quick"
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = model.Close() })
	t.Cleanup(free) // runs first: the blocked reply must end before Close
	cred := newCredential("abort")
	p := provider(model, cred, testScope)
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: "e2e-abort-1", Model: "gpt-4o", Provider: &p})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := sess.SendAndWait(ctx, "slow")
		errc <- err
	}()
	select { // wait until the model call is in progress
	case <-called:
	case err := <-errc:
		t.Fatalf("turn ended before the model was called: %v", err)
	}
	if err := sess.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, client.ErrAborted) {
		t.Fatalf("aborted turn: err = %v, want ErrAborted", err)
	}
	free()
	if ans, err := sess.SendAndWait(ctx, "fast"); err != nil || ans != "quick" {
		t.Fatalf("turn after abort: %q, %v", ans, err)
	}
}
