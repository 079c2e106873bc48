package azuretest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource/azuretest"
)

const scope = "https://cognitiveservices.azure.com/.default"

// A real ManagedIdentityCredential against the fake App Service endpoint:
// 100 token requests through azuresource, one request to the identity
// endpoint (azidentity's cache answers the other 99 here; concurrent cold
// callers would each reach the endpoint unless they share one tokenbroker
// Credential, actors.Broker.NewCredential).
func ExampleNewManagedIdentity() {
	mi := azuretest.NewManagedIdentity(azuretest.Options{Lifetime: 24 * time.Hour, RefreshIn: 12 * time.Hour})
	defer mi.Close()
	for k, v := range mi.Env() {
		os.Setenv(k, v) // in a test: t.Setenv(k, v)
		defer os.Unsetenv(k)
	}
	cred, err := azidentity.NewManagedIdentityCredential(mi.ManagedIdentityCredentialOptions())
	if err != nil {
		panic(err)
	}
	src := azuresource.New(cred)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 100 {
		if _, err := src.Token(ctx, tokens.Request{Scope: scope}); err != nil {
			panic(err)
		}
	}
	r := mi.Requests()[0]
	fmt.Println("identity requests:", mi.Received(), "tokens issued:", mi.Issued())
	fmt.Println("resource:", r.Resource, "status:", r.Status)
	// Output:
	// identity requests: 1 tokens issued: 1
	// resource: https://cognitiveservices.azure.com status: 200
}

// A real ClientSecretCredential against the fake Entra endpoint, which
// sees the tenant, the client id and the scope, and reports the token it
// issued by fingerprint.
func ExampleNewEntra() {
	entra := azuretest.NewEntra(azuretest.Options{ClientSecret: "s3cret"})
	defer entra.Close()
	cred, err := azidentity.NewClientSecretCredential("tenant-a", "app-a", "s3cret", entra.ClientSecretCredentialOptions())
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := azuresource.New(cred).Token(ctx, tokens.Request{Scope: scope})
	if err != nil {
		panic(err)
	}
	r := entra.Requests()[0]
	fmt.Println(r.Tenant, r.ClientID, r.Scope, r.Status)
	fmt.Println("issued this token:", r.Fingerprint == tokens.Fingerprint(tok.Value))
	// Output:
	// tenant-a app-a https://cognitiveservices.azure.com/.default 200
	// issued this token: true
}

// An identity endpoint that fails, then recovers.
func ExampleServer_Fail() {
	entra := azuretest.NewEntra(azuretest.Options{})
	defer entra.Close()
	cred, err := azidentity.NewClientSecretCredential("tenant-b", "app-b", "any", entra.ClientSecretCredentialOptions())
	if err != nil {
		panic(err)
	}
	// No retry inside a call: azcore rewinds a POST's body to retry it
	// while net/http may still be reading it, which the race detector
	// reports when a fake answers a failure at once.
	src := azuresource.New(cred, azuresource.WithRetry(&policy.RetryOptions{MaxRetries: -1}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	entra.Fail(503, "") // Entra's usual error body for 503
	_, err = src.Token(ctx, tokens.Request{Scope: scope})
	var e *azuresource.Error
	if errors.As(err, &e) {
		fmt.Println("failed:", e.StatusCode, e.Code)
	}
	entra.Fail(0, "")
	_, err = src.Token(ctx, tokens.Request{Scope: scope})
	fmt.Println("recovered:", err == nil, "tokens issued:", entra.Issued())
	// Output:
	// failed: 503 temporarily_unavailable
	// recovered: true tokens issued: 1
}
