package fakemodel

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// Request is one recorded HTTP request.
type Request struct {
	Path  string
	Model string
	// Prompt is the text of the last user message (chat completions) or the
	// input (responses).
	Prompt string
	Stream bool
	// ToolResults are the tool outputs the request carries (chat "tool"
	// messages, responses "function_call_output" items): the whole
	// conversation's, oldest first. They are what a tool printed, so a
	// test reads them like a model would.
	ToolResults []ToolResult
	// HasAuthorization tells an absent header from an empty one.
	HasAuthorization bool
	// Authorization is the raw header value, secret: never printed by
	// String, GoString or LogValue.
	Authorization string
	// APIKey is the raw api-key header (Azure style), secret like
	// Authorization.
	APIKey string
	// Status is the HTTP status the server answered (0 while Respond runs).
	Status int

	method       string // the HTTP method: anything but POST is answered 405
	includeUsage bool   // stream_options.include_usage
}

// BearerToken returns the token of a "Bearer <token>" Authorization header,
// or "" when the header is absent or uses another scheme.
func (r Request) BearerToken() string {
	tok, ok := strings.CutPrefix(r.Authorization, "Bearer ")
	if !ok {
		return ""
	}
	return tok
}

// authSummary describes the Authorization header without revealing it.
func (r Request) authSummary() string {
	switch {
	case !r.HasAuthorization:
		return "none"
	case r.BearerToken() != "":
		return "Bearer " + tokens.Fingerprint(r.BearerToken())
	default:
		return "other " + tokens.Fingerprint(r.Authorization)
	}
}

// String formats the request with a token fingerprint in place of the token.
func (r Request) String() string {
	return fmt.Sprintf("%s %s model=%q stream=%t auth=%s status=%d",
		r.method, r.Path, r.Model, r.Stream, r.authSummary(), r.Status)
}

// GoString keeps %#v from dumping the secret fields.
func (r Request) GoString() string { return "fakemodel.Request{" + r.String() + "}" }

// LogValue implements slog.LogValuer without the secret fields.
func (r Request) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("method", r.method),
		slog.String("path", r.Path),
		slog.String("model", r.Model),
		slog.Bool("stream", r.Stream),
		slog.String("auth", r.authSummary()),
		slog.Int("status", r.Status),
	)
}
