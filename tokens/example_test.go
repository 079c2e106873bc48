package tokens_test

import (
	"context"
	"fmt"
	"time"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// A callback that says how long its token is valid: the broker caches it
// and refreshes it ahead of expiry.
func ExampleFunc() {
	src := tokens.Func(func(ctx context.Context, req tokens.Request) (tokens.Token, error) {
		// Ask your identity provider for req.Scope here.
		return tokens.Token{Value: "eyJ0eXAi-example", ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
	tok, err := src.Token(context.Background(), tokens.Request{ProviderName: "mi", Scope: "https://cognitiveservices.azure.com/.default"})
	fmt.Println(err, tok.Bare(), tok.Validate())
	// Output: <nil> false <nil>
}

// A callback that returns a plain string: every token is single use, and
// the callback runs for every request.
func ExampleBareFunc() {
	src := tokens.BareFunc(func(context.Context, tokens.Request) (string, error) {
		return "one-time-token", nil
	})
	tok, _ := src.Token(context.Background(), tokens.Request{})
	fmt.Println(tok.Bare())
	// Printing a token shows a fingerprint, never the value.
	fmt.Println(tok)
	// Output:
	// true
	// token(6384b5b0, bare)
}

// When the default policy refreshes tokens of a few lifetimes (without
// jitter, r = 0).
func ExamplePolicy_RefreshAt() {
	p := tokens.DefaultPolicy()
	obtained := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, life := range []time.Duration{10 * time.Minute, time.Hour, 24 * time.Hour} {
		tok := tokens.Token{Value: "x", ExpiresOn: obtained.Add(life)}
		fmt.Printf("%v token: refresh after %v, never served after %v\n",
			life, p.RefreshAt(tok, obtained, 0).Sub(obtained), p.StaleAt(tok).Sub(obtained))
	}
	// Output:
	// 10m0s token: refresh after 5m0s, never served after 9m0s
	// 1h0m0s token: refresh after 45m0s, never served after 59m0s
	// 24h0m0s token: refresh after 12h0m0s, never served after 23h59m0s
}
