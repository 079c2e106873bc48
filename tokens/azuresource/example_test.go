package azuresource_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource/azuretest"
)

// An azidentity credential shared by many sessions through one tokenbroker
// Credential: 100 concurrent token requests make one request to the
// identity endpoint (here a fake Entra endpoint on 127.0.0.1; in production
// ManagedIdentityCredential or DefaultAzureCredential). The scope is written
// once, on the Credential; without one the configuration is refused before
// any session opens.
func Example() {
	entra := azuretest.NewEntra(azuretest.Options{ClientSecret: "s3cret"})
	defer entra.Close()
	cred, err := azidentity.NewClientSecretCredential("tenant-a", "app-id", "s3cret", entra.ClientSecretCredentialOptions())
	if err != nil {
		panic(err)
	}

	broker := actors.NewBroker(actors.Options{})
	defer broker.Close()
	const scope = "https://cognitiveservices.azure.com/.default"
	foundry, err := broker.NewCredential("foundry", scope, azuresource.New(cred))
	if err != nil {
		panic(err)
	}
	// Every session's provider takes the same Credential; the scope reaches
	// the runtime from it.
	provider := sessions.ProviderConfig{Type: "openai", BaseURL: "https://example.openai.azure.com/openai/v1", BearerTokenSource: foundry}
	p, err := sessions.WireParams(sessions.SessionConfig{Model: "gpt-4o", Provider: &provider})
	if err != nil {
		panic(err)
	}
	var wire struct {
		Provider struct {
			Scope string `json:"bearerTokenScope"`
		} `json:"provider"`
	}
	if err := json.Unmarshal(p.Body, &wire); err != nil {
		panic(err)
	}
	fmt.Println("scope on the wire:", wire.Provider.Scope)

	var wg sync.WaitGroup
	seen := sync.Map{}
	for range 100 {
		wg.Go(func() {
			tok, err := foundry.Token(context.Background(), tokens.Request{})
			if err != nil {
				panic(err)
			}
			seen.Store(tok.Value, true)
		})
	}
	wg.Wait()
	distinct := 0
	seen.Range(func(any, any) bool { distinct++; return true })
	fmt.Println("identity endpoint requests:", entra.Issued(), "distinct tokens:", distinct)

	_, err = sessions.WireParams(sessions.SessionConfig{Model: "gpt-4o", Provider: &sessions.ProviderConfig{
		BaseURL: "https://example.openai.azure.com/openai/v1", BearerTokenSource: azuresource.New(cred),
	}})
	fmt.Println(err)
	// Output:
	// scope on the wire: https://cognitiveservices.azure.com/.default
	// identity endpoint requests: 1 distinct tokens: 1
	// sessions: provider "default": tokens: the Source needs a scope: set BearerTokenScope
}
