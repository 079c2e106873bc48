// Package runtimesim stands in for the Copilot runtime in tests, the way
// net/http/httptest stands in for a server: it speaks the runtime's side of
// docs/PROTOCOL.md, asks its client for bearer tokens as the runtime does,
// and sends each model request, with the token it got, to a real HTTP
// endpoint (fakemodel). A service embedding tokenbroker tests its
// integration with it, without the Copilot CLI.
//
// NewServer starts a Runtime and a fake model endpoint in the test's
// process; Dial returns an in-memory connection for the runtime client or
// the service's own JSON-RPC code:
//
//	srv, err := runtimesim.NewServer(runtimesim.Options{}, fakemodel.Options{
//		Respond: func(r fakemodel.Request) fakemodel.Response {
//			return fakemodel.Response{Text: "hi"} // or Status: 401, ToolCalls, Delay
//		}})
//	defer srv.Close()
//	c, err := client.Connect(ctx, broker, srv.Dial(), client.Options{})
//	// the sessions' providers use BaseURL: srv.Model.URL()
//
// Afterwards TokenRequests and ModelRequests list what the runtime asked
// and sent, each token by fingerprint, Stats counts it, and
// srv.Model.Requests shows what the endpoint received.
//
// The zero Options play DefaultDialect, GetToken: a providerToken.getToken
// request before every model request, as Copilot CLI 1.0.102 does. Acquire
// plays providerToken.acquire, with a scope, and caches a token until its
// expiry. Tool calls the script asks for go through the CLI's events and
// permission requests; nothing is executed, and an approved call's result
// is "simulated: <tool> ran". docs/PROTOCOL.md says where the simulator
// departs from the CLI.
//
// cmd/runtimesim serves a Runtime on stdio or TCP.
package runtimesim
