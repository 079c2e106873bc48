// Package runtimesim plays the runtime's side of PROTOCOL.md (JSON-RPC 2.0
// with Content-Length framing) so that a service embedding tokenbroker can
// test its integration without the Copilot CLI, the way net/http/httptest
// tests an http.Handler. Turns call a real HTTP model endpoint (fakemodel)
// with the bearer token the client returned.
//
// In a test, NewServer starts a Runtime and a fake model endpoint in this
// process; Dial gives an in-memory connection to hand to the runtime client
// (client.Connect) or to the service's own JSON-RPC code:
//
//	srv, err := runtimesim.NewServer(runtimesim.Options{Dialect: runtimesim.GetToken},
//		fakemodel.Options{Respond: func(r fakemodel.Request) fakemodel.Response {
//			return fakemodel.Response{Text: "hi", Delay: 50 * time.Millisecond} // or Status: 401
//		}})
//	defer srv.Close()
//	c, err := client.Connect(ctx, broker, srv.Dial(), client.Options{})
//	// sessions' providers use BaseURL: srv.Model.URL()
//
// Afterwards the test reads what the runtime received: srv.TokenRequests()
// (each token request, with the fingerprint of the token it got),
// srv.ModelRequests() (each model request, with the fingerprint of its
// Authorization header and the status), srv.Stats(), and srv.Model.Requests()
// (the model endpoint's view). Acquire and GetToken select the dialect.
//
// Tool calls a scripted answer asks for (fakemodel.Response.ToolCalls) are
// simulated the way 1.0.102 plays them, and nothing is executed: each call
// gets tool.execution_start; in a session created with
// "requestPermission": true, permission.requested follows and the call
// waits for the client's session.permissions.handlePendingPermissionRequest
// (approve-once or reject), without it the runtime denies the call itself;
// then tool.execution_complete. The model's next request (a token is asked
// for before it, as before every request) carries each call's result:
// "simulated: <tool> ran" when approved, "The user rejected this tool call.
// User feedback: <feedback>" when rejected, 1.0.102's "Permission denied and
// could not request permission from user. ..." when denied by the runtime.
// A turn ends when the model answers without tool calls, or with
// session.error after 8 tool rounds; a reject without feedback stops it
// (abort event, then session.idle), as in 1.0.102; session.abort and
// session.destroy end a turn waiting for a decision.
//
// cmd/runtimesim serves the same Runtime on stdio or TCP.
package runtimesim

// The wire shapes below were checked against Copilot CLI 1.0.102 (protocol
// version 3) in headless stdio mode:
//
//   - connect → {"ok":true,"protocolVersion":3,"version":"1.0.102","taskKinds":[...]};
//     ping → {"message":"pong","timestamp":"...","protocolVersion":3} (no "ok").
//     The simulator reports version "sim-acquire" or "sim-getToken".
//   - session.create / session.resume → {"sessionId","nativeSessionId",
//     "startTime","isRemote":false,"mode":"interactive","modelState":{"modelId"},
//     "workspacePath","capabilities"} (the simulator omits the last two).
//     A session.lifecycle notification {"type":"session.created"|"session.updated",
//     "sessionId","metadata":{"startTime","modifiedTime"}} arrives before the
//     reply (the CLI sends session.created twice and many session.updated).
//   - session.send → {"messageId"}; session.abort → {"success":true};
//     session.destroy → {"success":true}, or {"success":false} for an unknown id.
//   - Events: method session.event, params {"sessionId","event":{"type","data",
//     "ephemeral"?,"id","timestamp","parentId"}}. Of the CLI's ~25 event types
//     the simulator sends session.start, user.message, assistant.message
//     ({"messageId","originatingMessageId","model","content","toolRequests":[],
//     "turnId"}), session.error ({"errorType","message","originatingMessageId",
//     "statusCode"?}) and session.idle ({"mode":"interactive"}, ephemeral).
//   - Token request: {"jsonrpc":"2.0","id":N,"method":"providerToken.getToken",
//     "params":{"providerName":"default","sessionId":"..."}}, ids from 1.
//   - Failed methods answer code -32603 with "Request <method> failed with
//     message: <reason>"; unknown methods -32601 "Unhandled method <m>".
//   - A tool call: assistant.message lists it in "toolRequests"
//     ([{"toolCallId","name","arguments","type":"function"}], content "");
//     tool.execution_start {"toolCallId","toolName","arguments","turnId"};
//     with requestPermission, permission.requested {"requestId",
//     "permissionRequest":{"kind","toolCallId",...}} (the CLI also sends
//     agentMode, permissionMode, promptRequest...), answered by
//     session.permissions.handlePendingPermissionRequest {"sessionId",
//     "requestId","result":{"kind":"approve-once"}|{"kind":"reject",
//     "feedback"}} → {"success":true}, then permission.completed
//     {"requestId","toolCallId","result":{"kind":"approved"}|{"kind":
//     "denied-interactively-by-user","feedback"}}; tool.execution_complete
//     {"toolCallId","success","result":{"content"}} or
//     {..., "error":{"code","message"}}, code "denied", or "rejected" for
//     a reject without feedback, after which 1.0.102 ends the turn with
//     abort {"reason":"user_initiated"} and a session.idle without
//     "aborted". The bash tool is asked
//     for as kind "shell" with fullCommandText and intention (its command
//     and description), view as kind "read" with path.
//
// Where 1.0.102 differs from PROTOCOL.md, the simulator follows 1.0.102:
//   - A token error reply is retried 5 times 1 s apart, then session.error has
//     errorType "query" (not "authentication") and the message "Failed to get
//     response from the AI model; retried 5 times (total retry wait time: 5.00
//     seconds) Last error: Provider token request failed: <client message>".
//   - An invalid result fails at once with errorType "query", e.g. "Provider
//     token response was invalid: unknown field `expiresOnTimestamp`, expected
//     `token`" (serde wording, backquotes).
//   - A 401 is retried twice (three attempts, each with a fresh token), then
//     errorType "authentication", statusCode 401. 5xx: 5 retries with back-off.
//   - A named-form model without "/" or that does not resolve is accepted by
//     session.create; the turn then fails with "Execution failed: InvalidArg,
//     No GitHub OAuth token or Copilot HMAC key provided".
//   - provider together with providers/models is rejected.
//   - session.resume of an id the process does not know fails in 1.0.102; the
//     simulator creates it, as a restarted runtime with the same state would.
//
// Deliberate departures, for tests: token requests time out (TokenTimeout),
// an empty token is rejected, string results are never echoed in errors,
// retries are fewer and immediate by default, and session.abort cancels a
// pending token request instead of waiting for it. Tools are never run; a
// tool name other than bash and view is asked for as a "custom-tool" with
// its args (1.0.102 answers that such a tool does not exist), the calls of
// one answer are played one after the other, only approve-once and reject
// are accepted as decisions, and an answer to a request that is no longer
// pending gets {"success":false}.
