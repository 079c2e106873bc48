// Package tracing names what tokenbroker reports to OpenTelemetry: span and
// metric names and attribute keys. The library itself depends only on the
// OpenTelemetry API; programs that want an SDK set one up themselves
// (tracing/export prints spans as trees).
package tracing

import "go.opentelemetry.io/otel/attribute"

// InstrumentationName is the tracer and meter name tokenbroker uses.
const InstrumentationName = "github.com/tokenbroker/tokenbroker"

// Span names. A token request span is named after its JSON-RPC method
// (providerToken.acquire or providerToken.getToken), or SpanCallback.
const (
	SpanRefresh  = "tokenbroker.refresh"
	SpanCallback = "tokenbroker.callback" // a request through the official SDK's token callback
)

// Attribute keys. None of them ever carries a token value.
const (
	SessionID        = attribute.Key("tokenbroker.session.id")
	ProviderName     = attribute.Key("tokenbroker.provider.name")
	Outcome          = attribute.Key("tokenbroker.outcome")
	RemainingSeconds = attribute.Key("tokenbroker.token.remaining_s")
	RefreshReason    = attribute.Key("tokenbroker.refresh.reason")
	Dialect          = attribute.Key("tokenbroker.dialect")
	Shared           = attribute.Key("tokenbroker.credential.shared")
	// RefreshOutcome is a refresh span's result: RefreshOK or RefreshError.
	RefreshOutcome = attribute.Key("tokenbroker.refresh.outcome")
	// TokenLifetime is the validity, in seconds, of a token a refresh got.
	TokenLifetime = attribute.Key("tokenbroker.token.lifetime_s")
)

// Values of Outcome on request spans and metrics.
const (
	OutcomeHit       = "hit"
	OutcomeCoalesced = "coalesced"
	OutcomeRefreshed = "refreshed"
	OutcomeBare      = "bare"
	OutcomeError     = "error"
)

// Values of Dialect: the door a token request came through.
const (
	DialectAcquire  = "providerToken.acquire"
	DialectGetToken = "providerToken.getToken"
	DialectCallback = "callback" // the official SDK's BearerTokenProvider
)

// Values of RefreshOutcome, and of Outcome on refresh metrics.
const (
	RefreshOK    = "ok"
	RefreshError = "error"
)

// JSON-RPC semantic-convention attributes of request spans
// (https://opentelemetry.io/docs/specs/semconv/rpc/json-rpc/).
const (
	RPCSystem         = attribute.Key("rpc.system") // always "jsonrpc"
	RPCMethod         = attribute.Key("rpc.method")
	RPCJSONRPCVersion = attribute.Key("rpc.jsonrpc.version")
	RPCRequestID      = attribute.Key("rpc.jsonrpc.request_id")
	RPCErrorCode      = attribute.Key("rpc.jsonrpc.error_code")
)

// Metric names.
const (
	MetricRequests          = "tokenbroker.requests"            // counter: dialect, outcome
	MetricRequestDuration   = "tokenbroker.request.duration"    // histogram, seconds: dialect, outcome
	MetricRefreshes         = "tokenbroker.refreshes"           // counter: reason, outcome
	MetricRefreshDuration   = "tokenbroker.refresh.duration"    // histogram, seconds: reason, outcome
	MetricActiveSessions    = "tokenbroker.sessions.active"     // up-down counter
	MetricActiveProviders   = "tokenbroker.providers.active"    // up-down counter
	MetricCallsWaiting      = "tokenbroker.calls.waiting"       // up-down counter: credential calls waiting for the broker's call limit
	MetricCallLeasesExpired = "tokenbroker.calls.lease_expired" // counter: calls still running when their slot was handed on
	MetricTokenRemaining    = "tokenbroker.token.remaining"     // histogram, seconds left on served tokens
)
