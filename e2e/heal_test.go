package e2e

import (
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/clitest"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// With the real CLI, a token the model endpoint rejects heals: the CLI
// retries the 401 with the same (cached) token and fails the turn with
// errorType "authentication"; the client invalidates the session's token,
// says so in the error, and the next turn succeeds with a fresh token.
func TestCopilotCLIRejectedTokenHeals(t *testing.T) {
	cli := clitest.Path(t)
	leaks := goleak.IgnoreCurrent()
	for _, shared := range []bool{true, false} {
		name := "per-session source"
		if shared {
			name = "shared credential"
		}
		t.Run(name, func(t *testing.T) { testRejectedTokenHeals(t, cli, shared) })
	}
	goleak.VerifyNone(t, append(protoactorThrottle, leaks)...)
}

func testRejectedTokenHeals(t *testing.T, cli string, shared bool) {
	ctx := testContext(t)
	b := newBroker(t, actors.Options{})
	c := startCLI(t, cli, b, client.Options{})
	src := newCredential("heal")
	rejected := src.value(1)
	model, err := fakemodel.Start(fakemodel.Options{
		Reply:        func(fakemodel.Request) string { return "healed" },
		RequireToken: func(auth string) bool { return auth != "Bearer "+rejected },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = model.Close() })
	p := provider(model, src, testScope)
	if shared {
		cred, err := b.NewCredential("mi", testScope, src)
		if err != nil {
			t.Fatal(err)
		}
		p = provider(model, cred, "")
	}
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{Model: "gpt-4o", Provider: &p})
	if err != nil {
		t.Fatal(err)
	}

	_, err = sess.SendAndWait(ctx, "first")
	var se *client.SessionError
	if !errors.Is(err, client.ErrTokenRejected) || !errors.As(err, &se) || se.Type != "authentication" {
		t.Fatalf("first turn: %v, want ErrTokenRejected wrapping the CLI's authentication error", err)
	}
	if !strings.Contains(err.Error(), "invalidated") {
		t.Errorf("first turn's error does not say the token was invalidated: %v", err)
	}
	t.Logf("first turn: %v", err)
	firstTurn := model.Requests()
	for _, r := range firstTurn {
		if r.BearerToken() != rejected || r.Status != 401 {
			t.Errorf("first turn model request %s status %d, want the rejected token and 401", tokens.Fingerprint(r.BearerToken()), r.Status)
		}
	}

	ans, err := sess.SendAndWait(ctx, "second")
	if err != nil || ans != "healed" {
		t.Fatalf("second turn: %q, %v", ans, err)
	}
	reqs := model.Requests()
	last := reqs[len(reqs)-1]
	if last.BearerToken() != src.value(2) || last.Status != 200 {
		t.Errorf("second turn sent %s (status %d), want the fresh token %s", tokens.Fingerprint(last.BearerToken()), last.Status, tokens.Fingerprint(src.value(2)))
	}
	t.Logf("model requests: %d on the first turn with %s, then %s; credential calls %d",
		len(firstTurn), tokens.Fingerprint(rejected), tokens.Fingerprint(last.BearerToken()), src.calls())
	if src.calls() != 2 {
		t.Errorf("credential called %d times, want 2", src.calls())
	}
}
