// Package azuresource adapts an azcore.TokenCredential — any azidentity
// credential: ManagedIdentityCredential, WorkloadIdentityCredential,
// ClientSecretCredential, DefaultAzureCredential... — to a tokens.Source.
//
// The scope comes from the request, that is from the provider's
// BearerTokenScope (for Azure AI Foundry and Azure OpenAI,
// "https://cognitiveservices.azure.com/.default"); a request without one is
// an error, never a guessed default. The credential's RefreshOn becomes the
// token's refresh hint.
//
// azidentity's errors carry the identity endpoint's raw HTTP response in
// their text. The errors this Source returns keep only the credential's
// name, the HTTP status and the endpoint's error code and description, since
// the message ends up in front of the runtime's user; tokens.Scrub cuts out
// of them every token-like value and the tokens this Source served lately
// (an endpoint may quote the token it refuses to renew).
//
// Each call's own retries are bounded (see DefaultRetry): a failing
// identity endpoint must reach the broker's back-off and the runtime's
// retries as one fast error, not after azidentity's full retry chain.
//
// Give the Source to a tokenbroker Credential (actors.Broker.NewCredential)
// to share one cache among many sessions: azidentity's
// ManagedIdentityCredential does not coalesce concurrent calls by itself.
package azuresource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// ErrNoScope is tokens.ErrScopeRequired: azidentity issues no token
// without a scope. A request without one is refused before azidentity is
// called.
var ErrNoScope = tokens.ErrScopeRequired

var errNoScope = fmt.Errorf(`azuresource: %w: the provider has no BearerTokenScope (for Azure AI Foundry and Azure OpenAI use "https://cognitiveservices.azure.com/.default")`, ErrNoScope)

// Option configures New.
type Option func(*source)

// defaultRetry bounds azidentity's retries inside one call: one quick retry
// heals a one-off 5xx, while a broken endpoint fails the call in about a
// second. azidentity's own defaults (4 tries over about 5.6 s; for IMDS 7
// tries up to 25 s apart) come before tokenbroker sees the error, so a
// turn the runtime retries for about 5 s would fail only after 15 s or
// more, and the broker's back-off would start that much later.
var defaultRetry = policy.RetryOptions{MaxRetries: 1, RetryDelay: 500 * time.Millisecond, MaxRetryDelay: time.Second}

// DefaultRetry returns the retry options every call uses unless WithRetry
// gives others.
func DefaultRetry() policy.RetryOptions { return defaultRetry }

// WithRetry sets the retry options of each call, overriding the
// credential's own (through policy.WithRetryOptions); nil keeps the
// credential's ClientOptions.Retry.
func WithRetry(o *policy.RetryOptions) Option {
	return func(s *source) {
		s.retry = o
	}
}

// WithTenantID asks for tokens from tenant id instead of the credential's
// default tenant (multi-tenant applications).
func WithTenantID(id string) Option { return func(s *source) { s.tenant = id } }

// WithCAE requests Continuous Access Evaluation tokens. Only set it when
// the caller handles claims challenges.
func WithCAE() Option { return func(s *source) { s.cae = true } }

type source struct {
	cred   azcore.TokenCredential
	tenant string
	cae    bool
	retry  *policy.RetryOptions // nil: the credential's own

	mu     sync.Mutex
	served [servedKept]string // the latest tokens, scrubbed from errors
	next   int
}

// servedKept is how many served tokens errors are scrubbed of: the one in
// use and those just before it.
const servedKept = 4

// New returns a Source that asks cred for a token for the request's scope.
func New(cred azcore.TokenCredential, opts ...Option) tokens.Source {
	if cred == nil {
		panic("azuresource.New: nil credential")
	}
	retry := defaultRetry
	s := &source{cred: cred, retry: &retry}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Token implements tokens.Source.
func (s *source) Token(ctx context.Context, req tokens.Request) (tokens.Token, error) {
	if req.Scope == "" {
		return tokens.Token{}, errNoScope
	}
	if s.retry != nil {
		ctx = policy.WithRetryOptions(ctx, *s.retry)
	}
	at, err := s.cred.GetToken(ctx, policy.TokenRequestOptions{
		Scopes:    []string{req.Scope},
		TenantID:  s.tenant,
		EnableCAE: s.cae,
	})
	if err != nil {
		return tokens.Token{}, sanitize(ctx, err, s.recent())
	}
	s.mu.Lock()
	s.served[s.next] = at.Token
	s.next = (s.next + 1) % servedKept
	s.mu.Unlock()
	return tokens.Token{Value: at.Token, ExpiresOn: at.ExpiresOn, RefreshOn: at.RefreshOn}, nil
}

func (s *source) recent() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.served[:]...)
}

// Error is a credential failure with the identity endpoint's response cut
// down to what is safe to show. The original error is deliberately not
// kept: its text holds the raw response.
type Error struct {
	// StatusCode is the identity endpoint's HTTP status; 0 when the
	// failure came before or without a response.
	StatusCode int
	// Code and Description are the endpoint's error code and description
	// (OAuth2 "error" / "error_description", or "code" / "message"), when
	// it sent them.
	Code        string
	Description string

	msg string
	ctx error // the context's error when the call ran out of time
}

func (e *Error) Error() string { return e.msg }

// Unwrap gives the context's error when the deadline or a cancellation
// ended the call (azidentity's own errors do not), else nil.
func (e *Error) Unwrap() error { return e.ctx }

// sanitize turns an azidentity error into an Error without the raw
// response, scrubbed of token-like values and of the known tokens.
func sanitize(ctx context.Context, err error, known []string) error {
	e := &Error{ctx: ctx.Err()}
	head := firstLine(err.Error())
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) && afe.RawResponse != nil {
		e.StatusCode = afe.RawResponse.StatusCode
		if body, rerr := runtime.Payload(afe.RawResponse); rerr == nil {
			e.Code, e.Description = errorFields(body)
			e.Code, e.Description = tokens.Scrub(e.Code, known...), tokens.Scrub(e.Description, known...)
		}
		var b strings.Builder
		b.WriteString(strings.TrimSuffix(strings.TrimSpace(head), "."))
		fmt.Fprintf(&b, ": identity endpoint answered HTTP %d", e.StatusCode)
		if e.Code != "" {
			fmt.Fprintf(&b, " %s", e.Code)
		}
		if e.Description != "" {
			fmt.Fprintf(&b, ": %s", e.Description)
		}
		e.msg = b.String()
	} else {
		// Credential-unavailable errors and chains (DefaultAzureCredential)
		// are azidentity's own prose, but a chain inlines each member's
		// full error, response dumps included: drop those.
		e.msg = stripResponses(err.Error())
	}
	if e.ctx != nil && !strings.Contains(e.msg, e.ctx.Error()) {
		e.msg += " (" + e.ctx.Error() + ")"
	}
	e.msg = tokens.Scrub(e.msg, known...)
	return e
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// maxDescription bounds the description kept from an error body; Entra's
// run to a few hundred characters with trace and correlation ids.
const maxDescription = 300

// errorFields reads the error code and description from an identity
// endpoint's JSON error body: OAuth2's {"error", "error_description"} or
// {"error": {"code", "message"}}, or App Service's {"statusCode", "message"}.
func errorFields(body []byte) (code, desc string) {
	var m map[string]json.RawMessage
	if json.Unmarshal(bytes.TrimSpace(body), &m) != nil {
		return "", ""
	}
	str := func(k string) string {
		var s string
		if raw, ok := m[k]; ok && json.Unmarshal(raw, &s) == nil {
			return s
		}
		return ""
	}
	code, desc = str("error"), str("error_description")
	if raw, ok := m["error"]; ok && code == "" {
		var inner struct{ Code, Message string }
		if json.Unmarshal(raw, &inner) == nil {
			code, desc = inner.Code, inner.Message
		}
	}
	if code == "" {
		code = str("code")
	}
	if desc == "" {
		desc = str("message")
	}
	desc = firstLine(strings.TrimSpace(desc))
	if len(desc) > maxDescription {
		desc = desc[:maxDescription] + "..."
	}
	return code, desc
}

const dashes = "--------------------------------------------------------------------------------"

// stripResponses removes the response dumps AuthenticationFailedError
// writes: three lines of dashes framing a "RESPONSE <status>" line and then
// the body. The status line is kept.
func stripResponses(s string) string {
	var out []string
	dashLines := 0
	for _, line := range strings.Split(s, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == dashes:
			dashLines++
		case dashLines%3 == 0:
			out = append(out, line)
		case strings.HasPrefix(t, "RESPONSE "):
			out = append(out, line)
		}
	}
	return strings.TrimSpace(strings.Join(out, "\n"))
}
