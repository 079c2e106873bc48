// Package fakemodel is a fake OpenAI-compatible model endpoint for tests.
//
// It listens on 127.0.0.1 only, answers POST <base>/chat/completions (JSON or
// SSE when "stream" is true) and POST <base>/responses, and records every
// request, including its raw Authorization header, so tests can check which
// bearer token reached the model. The recorded header is never printed: a
// Request formats and logs a fingerprint of the token instead.
//
// A test scripts each answer the way it would write an http.Handler for
// httptest: Options.Respond sees the request (prompt, token, the tool results
// it carries back) and returns a Response: text, tool calls, an HTTP status,
// a delay.
package fakemodel

import "time"

// DefaultReply is the assistant text returned when Options.Reply is nil.
const DefaultReply = "Hello from the fake model"

// Options configures a Server. The zero value is ready to use.
type Options struct {
	// PathPrefix is the base path, e.g. "/openai/v1" (the default) or "/v1".
	// Use "/" to serve at the root.
	PathPrefix string
	// Respond scripts the answer to each model request; it takes precedence
	// over Reply. It runs on the server's goroutines and must be safe for
	// concurrent use.
	Respond func(Request) Response
	// Reply returns the assistant text for a request; nil (and no Respond)
	// means DefaultReply. Same contract as Respond.
	Reply func(Request) string
	// RequireToken, when set, is given the raw Authorization header value
	// ("" when absent); a false result answers 401 like a provider rejecting
	// an expired or wrong token, before Respond is asked.
	RequireToken func(authorization string) bool
}

// Response is the scripted answer to one model request.
type Response struct {
	// Text is the assistant message text (may be "" when ToolCalls is set).
	Text string
	// ToolCalls, when set, ends the turn with finish_reason "tool_calls"
	// (chat completions) or function_call output items (responses): the
	// runtime runs the tools and sends their results in its next request.
	ToolCalls []ToolCall
	// Status other than 0 or 200 answers that HTTP status with an
	// OpenAI-style error body instead, e.g. 401, 429, 500.
	Status int
	// Delay holds the answer back this long (or until the client gives up).
	Delay time.Duration
}

// ToolCall asks the runtime to run one tool.
type ToolCall struct {
	// ID links the call to its result; "" gets a unique "call_fake<n>".
	ID string
	// Name is a tool the runtime offers, e.g. "bash" or "view".
	Name string
	// Arguments is the JSON object of arguments, e.g. {"command":"env"}.
	Arguments string
}

// ToolResult is a tool's output as the runtime sent it back to the model.
type ToolResult struct {
	CallID  string
	Content string
}
