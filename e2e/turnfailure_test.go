package e2e

// What a user sees when the identity endpoint breaks, against the real
// Copilot CLI 1.0.102 with default broker settings: ten sessions on one
// shared azidentity ManagedIdentityCredential. The CLI retries a failed
// token request (6 requests about 1 s apart) before failing the turn with
// session.error. After a timeout the broker's back-off floor answers those
// retries at once; after a fast failure its window is about a second, so a
// retry may call the credential again (an endpoint back within the turn
// saves it), but never more than once per request of the CLI.

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/clitest"
	"github.com/tokenbroker/tokenbroker/internal/testenv"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource/azuretest"
)

// The subtests run one after the other: azidentity reads the identity
// endpoint from the environment at each call, so two fakes cannot be
// served in parallel in one process.
func TestTurnFailsWithinOneDeadline(t *testing.T) {
	cli := clitest.Path(t)
	for _, tc := range []struct {
		name     string
		breaks   func(*azuretest.Server)
		within   time.Duration // the turn's error arrives within this
		says     []string
		requests int // the most the identity endpoint may see
	}{
		// azuresource lets azidentity retry once inside a call: two
		// requests per credential call.
		{"identity endpoint hangs", (*azuretest.Server).Hang, 45 * time.Second,
			[]string{`shared credential "mi": timed out: credential did not answer within 30s; next try in `}, 2},
		// The turn lasts the CLI's own 5 s of waits between its requests
		// plus, for each of its 6 requests at most, one credential call:
		// one retry 400-650 ms after the first 500 (azuresource's
		// default). That is 5.5-9 s on an idle machine and was 10.1 s on
		// a busy one; 20 s leaves room for a busy machine and still
		// fails a call that waits out azidentity's own retry chain
		// (3 retries, 7-11 s a call). Which of the CLI's requests call
		// the credential depends on when they come, so its last one, the
		// error the turn reports, may be the back-off's repetition of a
		// failure ("; next try in ...") or a failure of its own.
		{"identity endpoint answers 500", func(f *azuretest.Server) {
			f.Fail(500, `{"statusCode":500,"message":"identity service unavailable"}`)
		}, 20 * time.Second,
			[]string{`shared credential "mi": credential failed: `, "HTTP 500", "identity service unavailable"}, 2 * 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			fake := azuretest.NewManagedIdentity(azuretest.Options{})
			t.Cleanup(fake.Close)
			tc.breaks(fake)
			mi := managedIdentityAt(t, fake)
			b := newBroker(t, actors.Options{})
			c := startCLI(t, cli, b, client.Options{})
			model := newModel(t, "never")
			scope := "api://tokenbroker-e2e-turnfailure/.default"
			cred, err := b.NewCredential("mi", scope, azuresource.New(mi))
			if err != nil {
				t.Fatal(err)
			}
			p := provider(model, cred, scope)
			const sessionCount = 10
			var wg sync.WaitGroup
			errs := make([]error, sessionCount)
			took := make([]time.Duration, sessionCount)
			for i := range sessionCount {
				sess, err := c.CreateSession(ctx, sessions.SessionConfig{SessionID: fmt.Sprintf("e2e-turnfail-%d", i), Model: "gpt-4o", Provider: &p})
				if err != nil {
					t.Fatal(err)
				}
				wg.Go(func() {
					start := time.Now()
					_, errs[i] = sess.SendAndWait(ctx, "hello")
					took[i] = time.Since(start)
				})
			}
			wg.Wait()
			for i, err := range errs {
				var se *client.SessionError
				if !errors.As(err, &se) {
					t.Fatalf("session %d: %v after %s, want a session.error", i, err, took[i])
				}
				if i == 0 {
					t.Logf("turn failed after %s: %s", took[i].Round(time.Millisecond), se.Message)
				}
				if took[i] > tc.within {
					t.Errorf("session %d: the turn failed after %s, want within %s", i, took[i].Round(time.Millisecond), tc.within)
				}
				for _, s := range tc.says {
					if !strings.Contains(se.Message, s) {
						t.Errorf("session %d: session.error does not say %q: %s", i, s, se.Message)
					}
				}
			}
			if model.Count() != 0 {
				t.Errorf("the model was called %d times without a token", model.Count())
			}
			if n := fake.Received(); n > tc.requests {
				t.Errorf("the identity endpoint got %d requests, want at most %d", n, tc.requests)
			}
			t.Logf("identity endpoint requests: %d", fake.Received())
		})
	}
}

// managedIdentityAt is a ManagedIdentityCredential for the App Service
// identity endpoint fake, with a client id of its own (azidentity's token
// cache is process-wide).
func managedIdentityAt(t *testing.T, fake *azuretest.Server) azcore.TokenCredential {
	t.Helper()
	useIdentity(t, fake)
	mi, err := azidentity.NewManagedIdentityCredential(fake.ManagedIdentityCredentialOptions())
	if err != nil {
		t.Fatal(err)
	}
	return mi
}

// useIdentity clears the Azure environment and points
// ManagedIdentityCredential at fake until the end of t.
func useIdentity(t *testing.T, fake *azuretest.Server) {
	t.Helper()
	testenv.ClearAzure(t)
	for k, v := range fake.Env() {
		t.Setenv(k, v)
	}
}
