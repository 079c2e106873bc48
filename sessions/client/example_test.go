package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// The runtime client against the public runtime simulator, the way a
// service tests its integration without the Copilot CLI: the simulator's
// model endpoint rejects the first token, the turn fails saying the token
// was invalidated, and the next turn succeeds with a fresh one. The records
// show what the runtime received, by fingerprint.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	srv, err := runtimesim.NewServer(runtimesim.Options{Dialect: runtimesim.GetToken}, fakemodel.Options{
		Respond: func(r fakemodel.Request) fakemodel.Response {
			if r.BearerToken() == "token-1" {
				return fakemodel.Response{Status: 401} // a revoked token
			}
			return fakemodel.Response{Text: "Hello, " + r.Prompt}
		},
	})
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	broker := actors.NewBroker(actors.Options{})
	defer broker.Close()
	c, err := client.Connect(ctx, broker, srv.Dial(), client.Options{})
	if err != nil {
		panic(err)
	}
	defer c.Close()

	var issued atomic.Int64
	session, err := c.CreateSession(ctx, sessions.SessionConfig{
		Model: "gpt-4o",
		Provider: &sessions.ProviderConfig{
			Type:    "openai",
			BaseURL: srv.Model.URL(),
			BearerTokenSource: tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
				return tokens.Token{Value: fmt.Sprint("token-", issued.Add(1)), ExpiresOn: time.Now().Add(time.Hour)}, nil
			}),
		},
	})
	if err != nil {
		panic(err)
	}

	for _, prompt := range []string{"Ada", "Grace"} {
		answer, err := session.SendAndWait(ctx, prompt)
		fmt.Printf("turn %q: answer %q, token rejected: %t\n", prompt, answer, errors.Is(err, client.ErrTokenRejected))
	}
	for _, m := range srv.ModelRequests() {
		fmt.Printf("model request with token %s: %d\n", m.Fingerprint, m.Status)
	}
	fmt.Println("token-1 is", tokens.Fingerprint("token-1"), "and token-2 is", tokens.Fingerprint("token-2"))
	// Output:
	// turn "Ada": answer "", token rejected: true
	// turn "Grace": answer "Hello, Grace", token rejected: false
	// model request with token 3f08aace: 401
	// model request with token 3f08aace: 401
	// model request with token 3f08aace: 401
	// model request with token 0f6bffa9: 200
	// token-1 is 3f08aace and token-2 is 0f6bffa9
}
