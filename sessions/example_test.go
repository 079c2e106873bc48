package sessions_test

import (
	"context"
	"fmt"
	"time"

	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// WireParams shows what session.create carries: no callback, both token
// flags and the scope verbatim. Open returns the same and also opens the
// session's token routing on a connection's Router.
func ExampleWireParams() {
	src := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
		return tokens.Token{Value: "t", ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
	p, err := sessions.WireParams(sessions.SessionConfig{
		SessionID: "tenant-a-7f3c",
		Model:     "gpt-4o",
		Provider: &sessions.ProviderConfig{
			Type:              "openai",
			BaseURL:           "https://example.openai.azure.com/openai/v1",
			BearerTokenSource: src,
			BearerTokenScope:  "https://cognitiveservices.azure.com/.default",
		},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(string(p.Body))
	// Output:
	// {"model":"gpt-4o","provider":{"baseUrl":"https://example.openai.azure.com/openai/v1","bearerTokenProvider":true,"bearerTokenScope":"https://cognitiveservices.azure.com/.default","hasBearerTokenProvider":true,"type":"openai"},"sessionId":"tenant-a-7f3c"}
}
