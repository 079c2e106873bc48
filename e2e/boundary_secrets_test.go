package e2e

import (
	"context"
	"fmt"
	"net/http"
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

// A managed identity endpoint that, after serving a token, fails with
// bodies quoting it (OAuth2 error_description, App Service message) or
// another opaque token (access_token=): through azuresource and the broker,
// no value reaches a reply to the runtime, a log record, a span or a
// metric, and the errors still say what failed.
func TestBoundaryIdentityErrorsQuotingTokens(t *testing.T) {
	hardLeakCheck(t)
	testenv.ClearAzure(t)
	msi := azuretest.NewManagedIdentity(azuretest.Options{})
	defer msi.Close()
	useIdentity(t, msi)
	policy := tokens.DefaultPolicy()
	policy.RefreshTimeout = 20 * time.Second
	w := newHardWorld(t, actors.Options{RequestTimeout: 20 * time.Second, Policy: &policy})
	w.remember("identity header", msi.Env()["IDENTITY_HEADER"])
	mi, err := azidentity.NewManagedIdentityCredential(msi.ManagedIdentityCredentialOptions())
	if err != nil {
		t.Fatal(err)
	}
	src := azuresource.New(mi)
	resource := "api://" + hardUnique("boundary-")
	cases := []struct{ provider, body, says string }{
		{"description", `{"error":"invalid_request","error_description":"token %s was revoked"}`, "was revoked"},
		{"message", `{"statusCode":400,"message":"Managed identity token %s is not valid"}`, "is not valid"},
		{"key-value", `{"statusCode":400,"message":"request rejected: access_token=%s resource=x"}`, "request rejected"},
	}
	providers := []actors.Provider{{Name: "ok", Scope: resource + "/.default", Source: src}}
	for _, c := range cases {
		// A scope each: azidentity answers a scope it has cached itself.
		providers = append(providers, actors.Provider{Name: c.provider, Scope: resource + "-" + c.provider + "/.default", Source: src})
	}
	rt := w.dial("pipe")
	rt.open("quoting", providers...)
	ctx := context.Background()
	ok := rt.ask(ctx, transport.MethodGetToken, "quoting", "ok") // remembered as a secret
	if hardCode(ok) != 0 {
		t.Fatal(ok)
	}
	opaque := w.secret("opaque-")
	for _, c := range cases {
		quoted := ok.token
		if c.provider == "key-value" {
			quoted = opaque // never served: the key alone must give it away
		}
		msi.Fail(http.StatusBadRequest, fmt.Sprintf(c.body, quoted))
		hardUseful(t, rt.ask(ctx, transport.MethodGetToken, "quoting", c.provider), transport.CodeCredential, "quoting", c.provider, "400", c.says)
	}
	w.assertNoSecrets()
}
