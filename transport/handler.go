package transport

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"

	"github.com/sourcegraph/jsonrpc2"
	"go.opentelemetry.io/otel/propagation"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/requestobs"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
)

// The runtime's token request methods.
const (
	MethodAcquire  = "providerToken.acquire"  // the published design: scope in, expiry out
	MethodGetToken = "providerToken.getToken" // Copilot CLI 1.0.102: result exactly {token}
)

// Error codes of token replies, in the JSON-RPC server-error range.
const (
	CodeUnknownSession  = -32001
	CodeUnknownProvider = -32002
	CodeCredential      = -32003 // the credential failed, or is in back-off
	CodeTimeout         = -32004 // the credential, or a slot to call it, did not come in time
	CodeInvalidToken    = -32005
	CodeClosed          = -32006
)

// newTokenHandler is the middleware: it answers the runtime's token
// requests through router and hands every other message to next (nil:
// unknown methods get a method-not-found error, notifications are dropped).
// It answers each request before returning, so NewConn runs it in a
// goroutine per request. opts carries the logger and providers, set.
func newTokenHandler(router *actors.Router, next jsonrpc2.Handler, opts ConnOptions) *tokenHandler {
	return &tokenHandler{router: router, next: next, log: opts.Logger, obs: requestobs.New(opts.TracerProvider, opts.MeterProvider)}
}

type tokenHandler struct {
	router *actors.Router
	next   jsonrpc2.Handler
	log    *slog.Logger
	obs    *requestobs.Recorder
}

// tokenDialect is the one check for "is this a token request method".
func tokenDialect(method string) (requestobs.Dialect, bool) {
	switch method {
	case MethodAcquire:
		return requestobs.Acquire, true
	case MethodGetToken:
		return requestobs.GetToken, true
	}
	return 0, false
}

func (h *tokenHandler) Handle(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request) {
	d, ok := tokenDialect(req.Method)
	switch {
	case ok && req.Notif:
		h.log.Warn("tokenbroker: token request sent as a notification; nothing to answer", "method", req.Method)
	case ok:
		h.serve(ctx, conn, req, d)
	case h.next != nil:
		h.next.Handle(ctx, conn, req)
	case !req.Notif:
		h.replyError(ctx, conn, req, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: "method not found: " + req.Method})
	}
}

// tokenParams is both dialects' request. Pointers tell a missing or null
// field from an empty one.
type tokenParams struct {
	SessionID    *string         `json:"sessionId"`
	ProviderName *string         `json:"providerName"`
	Scope        *string         `json:"scope"`
	Meta         json.RawMessage `json:"_meta"`
}

// The two reply shapes. getToken's must be exactly {token}: the 1.0.102
// runtime fails the turn on any other field.
type (
	acquireResult struct {
		Token              string `json:"token"`
		ExpiresOnTimestamp int64  `json:"expiresOnTimestamp,omitempty"`
	}
	getTokenResult struct {
		Token string `json:"token"`
	}
)

// decodeTokenRequest parses a token request's params; the error is the
// -32602 reply to send.
func decodeTokenRequest(method string, params *json.RawMessage) (tokens.Request, json.RawMessage, *jsonrpc2.Error) {
	invalid := func(msg string) *jsonrpc2.Error {
		return &jsonrpc2.Error{Code: jsonrpc2.CodeInvalidParams, Message: method + ": " + msg}
	}
	if params == nil || len(*params) == 0 || (*params)[0] != '{' {
		return tokens.Request{}, nil, invalid("params must be an object")
	}
	var p tokenParams
	if err := json.Unmarshal(*params, &p); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return tokens.Request{}, nil, invalid(strconv.Quote(typeErr.Field) + " must be a string")
		}
		return tokens.Request{}, nil, invalid("params must be an object")
	}
	switch {
	case p.SessionID == nil:
		return tokens.Request{}, nil, invalid(`"sessionId" is required`)
	case p.ProviderName == nil:
		return tokens.Request{}, nil, invalid(`"providerName" is required`)
	case *p.SessionID == "":
		return tokens.Request{}, nil, invalid(`"sessionId" is empty`)
	case *p.ProviderName == "":
		return tokens.Request{}, nil, invalid(`"providerName" is empty`)
	}
	req := tokens.Request{SessionID: *p.SessionID, ProviderName: *p.ProviderName}
	if p.Scope != nil && method == MethodAcquire {
		req.Scope = *p.Scope
	}
	return req, p.Meta, nil
}

func (h *tokenHandler) serve(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request, d requestobs.Dialect) {
	treq, meta, perr := decodeTokenRequest(req.Method, req.Params)
	var reqMeta json.RawMessage
	if req.Meta != nil {
		reqMeta = *req.Meta
	}
	ctx = extractTrace(ctx, meta, reqMeta)
	// A request may wait its whole deadline for a token; it waits with its
	// method and id only, so that a peer padding its requests cannot make
	// MaxInFlight of them hold MaxFrameSize each.
	req.Params, req.Meta, req.ExtraFields = nil, nil, nil
	ctx, rec := h.obs.Start(ctx, d, treq.SessionID, treq.ProviderName,
		tracing.RPCSystem.String("jsonrpc"),
		tracing.RPCMethod.String(req.Method),
		tracing.RPCJSONRPCVersion.String("2.0"),
		tracing.RPCRequestID.String(req.ID.String()),
	)

	rpcErr := perr
	var grant actors.Grant
	if rpcErr == nil {
		var err error
		if grant, err = h.router.Acquire(ctx, treq); err != nil {
			rpcErr = toRPCError(err)
		}
	}
	if rpcErr != nil {
		rec.Span.SetAttributes(tracing.RPCErrorCode.Int64(rpcErr.Code))
		h.log.Info("tokenbroker: token request refused", "method", req.Method, "session", treq.SessionID, "provider", treq.ProviderName, "error", rpcErr.Message)
		h.replyError(ctx, conn, req, rpcErr)
		rec.Failed(ctx, rpcErr.Message)
		return
	}
	h.reply(ctx, conn, req, grant.Token)
	rec.Served(ctx, grant.Outcome.String(), grant.Token.ExpiresOn)
}

func (h *tokenHandler) reply(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request, tok tokens.Token) {
	var result any
	if req.Method == MethodGetToken {
		result = getTokenResult{Token: tok.Value}
	} else {
		r := acquireResult{Token: tok.Value}
		if !tok.Bare() {
			r.ExpiresOnTimestamp = tok.ExpiresOn.UnixMilli()
		}
		result = r
	}
	if err := conn.Reply(ctx, req.ID, result); err != nil {
		h.log.Debug("tokenbroker: reply not sent", "method", req.Method, "error", err.Error())
	}
}

func (h *tokenHandler) replyError(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request, e *jsonrpc2.Error) {
	if err := conn.ReplyWithError(ctx, req.ID, e); err != nil {
		h.log.Debug("tokenbroker: error reply not sent", "method", req.Method, "error", err.Error())
	}
}

// toRPCError maps the broker's errors to codes; the message is the
// broker's, written to be shown to users and free of secrets.
func toRPCError(err error) *jsonrpc2.Error {
	code := int64(jsonrpc2.CodeInternalError)
	switch {
	case errors.Is(err, actors.ErrUnknownSession):
		code = CodeUnknownSession
	case errors.Is(err, actors.ErrUnknownProvider):
		code = CodeUnknownProvider
	case errors.Is(err, actors.ErrScopeMismatch):
		code = jsonrpc2.CodeInvalidParams
	case errors.Is(err, actors.ErrInvalidToken):
		code = CodeInvalidToken
	case errors.Is(err, actors.ErrTimeout), errors.Is(err, actors.ErrNoCallSlot):
		code = CodeTimeout
	case errors.Is(err, actors.ErrCredential), errors.Is(err, actors.ErrBackoff):
		code = CodeCredential
	case errors.Is(err, actors.ErrClosed):
		code = CodeClosed
	case errors.Is(err, context.Canceled):
		code = CodeClosed
	}
	return &jsonrpc2.Error{Code: code, Message: err.Error()}
}

// extractTrace continues a W3C trace context carried in the params' _meta
// (the MCP convention) or in jsonrpc2's own request meta.
func extractTrace(ctx context.Context, metas ...json.RawMessage) context.Context {
	for _, raw := range metas {
		if len(raw) == 0 || raw[0] != '{' {
			continue
		}
		var carrier map[string]any
		if json.Unmarshal(raw, &carrier) != nil {
			continue
		}
		mc := propagation.MapCarrier{}
		for k, v := range carrier {
			if s, ok := v.(string); ok {
				mc[k] = s
			}
		}
		if mc["traceparent"] == "" {
			continue
		}
		return propagation.TraceContext{}.Extract(ctx, mc)
	}
	return ctx
}
