package actors_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// A broker answers token requests for the sessions opened on a connection's
// Router: the first from the callback, the next from the cache.
func ExampleRouter_Acquire() {
	broker := actors.NewBroker(actors.Options{})
	defer broker.Close()
	router := broker.NewRouter() // one per runtime connection

	src := tokens.Func(func(ctx context.Context, req tokens.Request) (tokens.Token, error) {
		return tokens.Token{Value: "token-for-" + req.SessionID, ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
	if err := router.Open("tenant-a-1", []actors.Provider{{Name: "default", Source: src}}); err != nil {
		panic(err)
	}
	for range 2 {
		g, err := router.Acquire(context.Background(), tokens.Request{SessionID: "tenant-a-1", ProviderName: "default"})
		fmt.Println(g.Outcome, g.Token.Value == "token-for-tenant-a-1", err)
	}
	_, err := router.Acquire(context.Background(), tokens.Request{SessionID: "tenant-b-1", ProviderName: "default"})
	fmt.Println(err)
	// Output:
	// refreshed true <nil>
	// hit true <nil>
	// provider "default": session "tenant-b-1" is not registered on this connection
}

// A Credential shares one cache among many sessions: here 100 sessions
// cause one credential call.
func ExampleBroker_NewCredential() {
	broker := actors.NewBroker(actors.Options{})
	defer broker.Close()
	var calls atomic.Int32
	mi, err := broker.NewCredential("tenant-a-mi", "https://cognitiveservices.azure.com/.default",
		tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
			calls.Add(1)
			return tokens.Token{Value: "shared", ExpiresOn: time.Now().Add(time.Hour)}, nil
		}))
	if err != nil {
		panic(err)
	}
	router := broker.NewRouter()
	for i := range 100 {
		id := fmt.Sprint("tenant-a-", i)
		if err := router.Open(id, []actors.Provider{{Name: "mi", Source: mi}}); err != nil {
			panic(err)
		}
		if _, err := router.Acquire(context.Background(), tokens.Request{SessionID: id, ProviderName: "mi"}); err != nil {
			panic(err)
		}
	}
	fmt.Println("credential calls:", calls.Load())
	// Output: credential calls: 1
}

// The official copilot-sdk Go client asks for a token through its
// ProviderConfig.BearerTokenProvider callback before every model request.
// Credential.BearerToken has that callback's shape, so the whole
// integration is one line:
//
//	BearerTokenProvider: func(a copilot.ProviderTokenArgs) (string, error) {
//		return cred.BearerToken(a.SessionID, a.ProviderName)
//	}
//
// Here the SDK is played by concurrent calls of such a closure: 50 model
// requests across 10 sessions make one credential call.
func ExampleCredential_BearerToken() {
	broker := actors.NewBroker(actors.Options{})
	defer broker.Close()
	var calls atomic.Int32
	cred, err := broker.NewCredential("foundry", "https://cognitiveservices.azure.com/.default",
		tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
			calls.Add(1)
			return tokens.Token{Value: "entra-token", ExpiresOn: time.Now().Add(time.Hour)}, nil
		}))
	if err != nil {
		panic(err)
	}
	type providerTokenArgs struct{ ProviderName, SessionID string } // the SDK's ProviderTokenArgs
	bearerTokenProvider := func(a providerTokenArgs) (string, error) {
		return cred.BearerToken(a.SessionID, a.ProviderName)
	}

	var wg sync.WaitGroup
	var served atomic.Int32
	for i := range 50 {
		wg.Go(func() {
			tok, err := bearerTokenProvider(providerTokenArgs{ProviderName: "foundry", SessionID: fmt.Sprint("session-", i%10)})
			if err == nil && tok == "entra-token" {
				served.Add(1)
			}
		})
	}
	wg.Wait()
	fmt.Println("tokens served:", served.Load(), "credential calls:", calls.Load())
	// Output: tokens served: 50 credential calls: 1
}
