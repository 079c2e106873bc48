package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/testenv"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource/azuretest"
	"github.com/tokenbroker/tokenbroker/transport"
)

// Real azidentity credentials (managed identity against a fake App Service
// endpoint, client secret against a fake Entra endpoint) serve sessions on
// two connections, then fail (wrong secret, endpoint errors). Neither the
// tokens, the client secret nor the identity header appear in any log
// record (Debug and up), span, metric or error the runtime receives; the
// errors say which session, which provider and what failed.
func TestSecretsAzureIdentityFlows(t *testing.T) {
	hardLeakCheck(t)
	testenv.ClearAzure(t)
	msi := azuretest.NewManagedIdentity(azuretest.Options{})
	defer msi.Close()
	useIdentity(t, msi)
	clientSecret := hardUnique("client-secret-")
	entra := azuretest.NewEntra(azuretest.Options{ClientSecret: clientSecret})
	defer entra.Close()

	policy := tokens.DefaultPolicy()
	policy.RefreshTimeout = 20 * time.Second // azidentity without a deadline can take a minute
	w := newHardWorld(t, actors.Options{RequestTimeout: 20 * time.Second, Policy: &policy})
	w.remember("identity header", msi.Env()["IDENTITY_HEADER"])
	w.remember("client secret", clientSecret)

	resource := "api://" + hardUnique("tokenbroker-secrets-")
	scope := resource + "/.default"
	mi, err := azidentity.NewManagedIdentityCredential(msi.ManagedIdentityCredentialOptions())
	if err != nil {
		t.Fatal(err)
	}
	tenant := hardUnique("tenant-")
	cs, err := azidentity.NewClientSecretCredential(tenant, hardUnique("app-"), clientSecret, entra.ClientSecretCredentialOptions())
	if err != nil {
		t.Fatal(err)
	}
	wrongSecret := hardUnique("wrong-secret-")
	w.remember("wrong client secret", wrongSecret)
	wrong, err := azidentity.NewClientSecretCredential(tenant, hardUnique("app-"), wrongSecret, entra.ClientSecretCredentialOptions())
	if err != nil {
		t.Fatal(err)
	}
	sharedMI := w.credential("mi", scope, azuresource.New(mi))
	defer sharedMI.Close()

	a, b := w.dial("pipe"), w.dial("tcp")
	for i, rt := range []*hardRuntime{a, b} {
		for j := range 3 {
			rt.open(fmt.Sprintf("t%d-s%d", i, j),
				actors.Provider{Name: "mi", Scope: scope, Source: sharedMI},
				actors.Provider{Name: "entra", Scope: "api://entra-" + tenant + "/.default", Source: azuresource.New(cs)},
				actors.Provider{Name: "wrong", Scope: "api://entra-" + tenant + "/.default", Source: azuresource.New(wrong)},
			)
		}
	}
	ctx := context.Background()
	for i, rt := range []*hardRuntime{a, b} {
		for j := range 3 {
			id := fmt.Sprintf("t%d-s%d", i, j)
			for _, method := range []string{transport.MethodGetToken, transport.MethodAcquire} {
				for _, p := range []string{"mi", "entra"} {
					if ans := rt.ask(ctx, method, id, p); hardCode(ans) != 0 {
						t.Fatalf("%s %s/%s: %s", method, id, p, ans)
					}
				}
				ans := rt.ask(ctx, method, id, "wrong")
				hardUseful(t, ans, transport.CodeCredential, id, "wrong", "401", "invalid_client")
			}
		}
	}
	// The identity endpoint breaks: a fresh provider on it reports the
	// failure, naming its session and provider.
	msi.Fail(400, `{"statusCode":400,"message":"resource not found for this identity"}`)
	brokenRes := "api://" + hardUnique("tokenbroker-broken-")
	mi2, err := azidentity.NewManagedIdentityCredential(msi.ManagedIdentityCredentialOptions())
	if err != nil {
		t.Fatal(err)
	}
	a.open("broken", actors.Provider{Name: "mi-broken", Scope: brokenRes + "/.default", Source: azuresource.New(mi2)})
	hardUseful(t, a.ask(ctx, transport.MethodGetToken, "broken", "mi-broken"), transport.CodeCredential, "broken", "mi-broken", "400")

	if issued := msi.Issued() + entra.Issued(); issued < 2 {
		t.Fatalf("identity endpoints issued %d tokens", issued)
	}
	w.assertNoSecrets()
}

// hardUseful checks a refusal: its code, that it names the session and the
// provider, and that it says what failed.
func hardUseful(t *testing.T, a hardAnswer, code int64, session, provider string, says ...string) {
	t.Helper()
	if hardCode(a) != code {
		t.Fatalf("%s/%s: %s, want code %d", session, provider, a, code)
	}
	if !hardSaysWhere(a, session, provider) {
		t.Errorf("%s/%s: error does not name its session and provider: %s", session, provider, a)
	}
	for _, s := range says {
		if !strings.Contains(a.rpcErr.Message, s) {
			t.Errorf("%s/%s: error does not say %q: %s", session, provider, s, a)
		}
	}
}

// A careless credential puts secrets in its errors and panics, or hands
// out a token with the scheme still on it. None of it reaches the runtime
// or the telemetry; the errors still say what went wrong and where, and
// the service's log has a panic's value, secrets cut out, and its stack.
func TestSecretsCarelessCredential(t *testing.T) {
	hardLeakCheck(t)
	w := newHardWorld(t, actors.Options{RequestTimeout: 10 * time.Second})
	rt := w.dial("pipe")
	jwt := "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + w.secret("claims") + "." + w.secret("signature")
	w.remember("jwt", jwt)
	bearer := w.secret("opaque-")
	panicValue := w.secret("panic-")
	w.remember("jwt in a panic", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."+panicValue+".c2ln")
	prefixed := w.secret("prefixed-")
	src := func(f func() (tokens.Token, error)) tokens.Source {
		return tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) { return f() })
	}
	rt.open("careless",
		actors.Provider{Name: "jwt-in-error", Source: src(func() (tokens.Token, error) {
			return tokens.Token{}, fmt.Errorf("refresh failed, last token was %s", jwt)
		})},
		actors.Provider{Name: "bearer-in-error", Source: src(func() (tokens.Token, error) {
			return tokens.Token{}, errors.New("upstream rejected Authorization: Bearer " + bearer)
		})},
		actors.Provider{Name: "panics", Source: src(func() (tokens.Token, error) {
			panic("holding eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + panicValue + ".c2ln")
		})},
		actors.Provider{Name: "panics-error", Source: src(func() (tokens.Token, error) { panic(errors.New("holding access_token=" + panicValue)) })},
		actors.Provider{Name: "prefixed", Source: src(func() (tokens.Token, error) {
			return tokens.Token{Value: "Bearer " + prefixed, ExpiresOn: time.Now().Add(time.Hour)}, nil
		})},
	)
	ctx := context.Background()
	hardUseful(t, rt.ask(ctx, transport.MethodGetToken, "careless", "jwt-in-error"), transport.CodeCredential, "careless", "jwt-in-error", "credential failed", "refresh failed")
	hardUseful(t, rt.ask(ctx, transport.MethodAcquire, "careless", "bearer-in-error"), transport.CodeCredential, "careless", "bearer-in-error", "credential failed", "upstream rejected")
	hardUseful(t, rt.ask(ctx, transport.MethodGetToken, "careless", "panics"), transport.CodeCredential, "careless", "panics", "panicked")
	hardUseful(t, rt.ask(ctx, transport.MethodGetToken, "careless", "panics-error"), transport.CodeCredential, "careless", "panics-error", "panicked")
	hardUseful(t, rt.ask(ctx, transport.MethodAcquire, "careless", "prefixed"), transport.CodeInvalidToken, "careless", "prefixed", "Bearer")
	for _, want := range []string{"holding " + tokens.Redacted, "holding access_token=" + tokens.Redacted, "secrets_test.go"} {
		if !strings.Contains(w.cap.Logs(), want) {
			t.Errorf("the service's log does not show the panic (%q)", want)
		}
	}
	w.assertNoSecrets()
}

// A credential call that finishes after its session closed has a token
// and no one to give it to: the token must not surface anywhere (the actor
// system logs undeliverable messages).
func TestSecretsLateTokenOfClosedSession(t *testing.T) {
	hardLeakCheck(t)
	w := newHardWorld(t, actors.Options{RequestTimeout: time.Hour})
	late := make(chan struct{})
	src := w.source("tok-late-")
	src.behave = func(context.Context, int64) (tokens.Token, error) {
		<-late // ignores cancellation, then answers anyway
		return src.issue(), nil
	}
	rt := w.dial("pipe")
	for i := range 5 {
		id := fmt.Sprint("closing-", i)
		rt.open(id, actors.Provider{Name: "p", Source: src}, actors.Provider{Name: "bare", Source: src})
		pending := hardInflight(rt, 2, transport.MethodGetToken, id, "p")
		hardWait(t, "credential called", src.started)
		if err := rt.client.Router().CloseSession(id); err != nil {
			t.Fatal(err)
		}
		for _, a := range hardCollect(t, "closed session", pending, 2) {
			if hardCode(a) != transport.CodeClosed && hardCode(a) != transport.CodeUnknownSession {
				t.Fatalf("request of a closed session: %s", a)
			}
		}
	}
	close(late) // the calls now return tokens to stopped actors
	w.eventually("late calls returning", func() bool { return src.active.Load() == 0 })
	// Let the actor system deliver (and log) what it cannot deliver.
	rt.open("after", actors.Provider{Name: "p", Source: w.source("tok-after-")})
	if a := rt.ask(context.Background(), transport.MethodGetToken, "after", "p"); hardCode(a) != 0 {
		t.Fatal(a)
	}
	w.eventually("dead letters logged", func() bool { return strings.Contains(w.cap.Logs(), "DeadLetter") })
	w.assertNoSecrets()
}
