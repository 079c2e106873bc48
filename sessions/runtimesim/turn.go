package runtimesim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sourcegraph/jsonrpc2"
)

// maxResponse bounds a model reply read into memory.
const maxResponse = 8 << 20

// turnError ends a turn with a session.error event.
type turnError struct {
	errorType string // "query" or "authentication", as 1.0.102 sends
	message   string
	status    int // HTTP status, when one caused it
}

func (e *turnError) Error() string { return e.message }

// invalidResult is a token result the dialect does not accept.
type invalidResult struct{ msg string }

func (e *invalidResult) Error() string { return e.msg }

// runTurns drains s's queue, one turn at a time, on the goroutine of the
// session.send that found the session idle.
func (c *conn) runTurns(jc *jsonrpc2.Conn, s *session) {
	for {
		c.mu.Lock()
		if len(s.queue) == 0 || s.gone || c.ctx.Err() != nil {
			s.running, s.cancel = false, nil
			c.mu.Unlock()
			return
		}
		t := s.queue[0]
		s.queue = s.queue[1:]
		ctx, cancel := context.WithCancel(c.ctx)
		s.cancel = cancel
		cfg := s.cfg
		c.mu.Unlock()
		c.turn(ctx, jc, s, cfg, t)
		cancel()
	}
}

// turn runs one prompt: user.message, then TurnRequests model exchanges,
// each one model request followed by assistant.message and, while the
// model calls tools, a tool round (see runTools) and the next request; then
// session.idle. A failure sends session.error before session.idle. An
// aborted turn ends with an abort event and session.idle {aborted: true}, a
// turn whose tool was rejected without feedback with an abort event and
// session.idle; a destroyed session's turn ends silently.
func (c *conn) turn(ctx context.Context, jc *jsonrpc2.Conn, s *session, cfg sessionConfig, t pendingTurn) {
	c.rt.count(func(st *Stats) { st.Turns++ })
	c.emit(jc, s, "user.message", map[string]any{"content": t.prompt, "messageId": t.messageID}, false)
	err := c.converse(ctx, jc, s, cfg, t)
	c.mu.Lock()
	gone := s.gone
	c.mu.Unlock()
	if gone || c.ctx.Err() != nil {
		return
	}
	if te := (*turnError)(nil); errors.As(err, &te) {
		c.rt.count(func(st *Stats) { st.TurnErrors++ })
		data := map[string]any{"errorType": te.errorType, "message": te.message, "originatingMessageId": t.messageID}
		if te.status != 0 {
			data["statusCode"] = te.status
		}
		c.rt.log.Info("runtimesim: turn failed", "session", s.id, "errorType", te.errorType, "message", te.message)
		c.emit(jc, s, "session.error", data, false)
	}
	idle := map[string]any{"mode": "interactive"}
	switch {
	case ctx.Err() != nil:
		// session.abort cancelled the turn; 1.0.102 says so on the idle event.
		c.emit(jc, s, "abort", map[string]any{"reason": "user_initiated"}, false)
		idle["aborted"] = true
	case errors.Is(err, errRejected):
		// 1.0.102 sends the abort event but a plain idle event here.
		c.emit(jc, s, "abort", map[string]any{"reason": "user_initiated"}, false)
	}
	c.emit(jc, s, "session.idle", idle, true)
}

func (c *conn) converse(ctx context.Context, jc *jsonrpc2.Conn, s *session, cfg sessionConfig, t pendingTurn) error {
	if cfg.provider == nil {
		// What 1.0.102 says when no BYOK provider resolves and it falls back
		// to GitHub-hosted models without a GitHub login.
		return &turnError{errorType: "query", message: "Execution failed: InvalidArg, No GitHub OAuth token or Copilot HMAC key provided"}
	}
	requests := 0 // numbers the model requests of the turn: the events' turnId
	for range c.rt.opts.TurnRequests {
		ex := exchange{prompt: t.prompt}
		for {
			r, err := c.modelCall(ctx, jc, s, cfg, &ex)
			if err != nil {
				return err
			}
			turnID := strconv.Itoa(requests)
			requests++
			toolRequests := make([]any, len(r.calls))
			for i, call := range r.calls {
				toolRequests[i] = map[string]any{"toolCallId": call.id, "name": call.name, "arguments": call.argsJSON(), "type": "function"}
			}
			c.emit(jc, s, "assistant.message", map[string]any{
				"messageId":            newID(),
				"originatingMessageId": t.messageID,
				"model":                cfg.wireModel,
				"content":              r.text,
				"toolRequests":         toolRequests,
				"turnId":               turnID,
			}, false)
			if len(r.calls) == 0 {
				break
			}
			if len(ex.rounds) == maxToolRounds {
				return &turnError{errorType: "query", message: fmt.Sprintf(
					"runtimesim: the model still calls tools after %d tool rounds; the simulator ends the turn", maxToolRounds)}
			}
			results, err := c.runTools(ctx, jc, s, turnID, r)
			if err != nil {
				return err
			}
			ex.rounds = append(ex.rounds, toolRound{reply: r, results: results})
		}
	}
	return nil
}

// modelCall makes one logical model request carrying ex, asking for a token
// before every HTTP attempt and retrying per Options.
func (c *conn) modelCall(ctx context.Context, jc *jsonrpc2.Conn, s *session, cfg sessionConfig, ex *exchange) (reply, error) {
	o := c.rt.opts
	p := cfg.provider
	var tokenTries, authTries, serverTries, retried int
	var waited time.Duration
	pause := func() error {
		retried++
		waited += o.RetryDelay
		return sleep(ctx, o.RetryDelay)
	}
	for {
		token, err := c.token(ctx, jc, s, p)
		if err != nil {
			var bad *invalidResult
			switch {
			case ctx.Err() != nil:
				return reply{}, ctx.Err()
			case errors.As(err, &bad):
				// Not retried: 1.0.102 fails the turn at once.
				return reply{}, &turnError{errorType: "query", message: "Provider token response was invalid: " + bad.msg}
			case errors.Is(err, jsonrpc2.ErrClosed):
				return reply{}, err
			case tokenTries < o.TokenRetries:
				tokenTries++
				if err := pause(); err != nil {
					return reply{}, err
				}
				continue
			}
			return reply{}, &turnError{errorType: "query", message: retriedMessage(retried, waited, "Provider token request failed: "+err.Error())}
		}

		status, r, err := c.post(ctx, s, cfg, token, ex)
		switch {
		case ctx.Err() != nil:
			return reply{}, ctx.Err()
		case err == nil:
			return r, nil
		case status == http.StatusUnauthorized:
			c.forget(s, p.name)
			if authTries < authRetries {
				authTries++
				if err := pause(); err != nil {
					return reply{}, err
				}
				continue
			}
			return reply{}, &turnError{errorType: "authentication", status: status, message: fmt.Sprintf(
				"Authentication failed with provider at %s (HTTP 401).\n  Check your COPILOT_PROVIDER_API_KEY, COPILOT_PROVIDER_API_KEY_COMMAND, or COPILOT_PROVIDER_BEARER_TOKEN.",
				p.baseURL)}
		case status == 0 || status == http.StatusTooManyRequests || status >= 500:
			if serverTries < serverRetries {
				serverTries++
				if err := pause(); err != nil {
					return reply{}, err
				}
				continue
			}
			return reply{}, &turnError{errorType: "query", status: status, message: retriedMessage(retried, waited, err.Error())}
		default:
			return reply{}, &turnError{errorType: "query", status: status, message: err.Error()}
		}
	}
}

// retriedMessage wraps the last error the way 1.0.102 reports a call that
// failed after retries.
func retriedMessage(retried int, waited time.Duration, last string) string {
	if retried == 0 {
		return last
	}
	return fmt.Sprintf("Failed to get response from the AI model; retried %d times (total retry wait time: %.2f seconds) Last error: %s",
		retried, waited.Seconds(), last)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Params of the token requests, in the field order each dialect uses.
type acquireParams struct {
	SessionID    string `json:"sessionId"`
	ProviderName string `json:"providerName"`
	Scope        string `json:"scope"`
}

type getTokenParams struct {
	ProviderName string `json:"providerName"`
	SessionID    string `json:"sessionId"`
}

// token returns the bearer token for p: "" when p does not ask the client,
// a cached one (acquire dialect), or a fresh one from the client.
func (c *conn) token(ctx context.Context, jc *jsonrpc2.Conn, s *session, p *providerConfig) (string, error) {
	if !p.askClient {
		return "", nil
	}
	o := c.rt.opts
	if o.Dialect == Acquire {
		c.mu.Lock()
		ct, ok := s.tokens[p.name]
		c.mu.Unlock()
		if ok && time.Now().Before(ct.exp.Add(-refreshBefore)) {
			c.rt.count(func(st *Stats) { st.TokenCacheHits++ })
			return ct.token, nil
		}
	}

	rec := TokenRequest{Method: o.Dialect.method(), SessionID: s.id, ProviderName: p.name}
	var params any = getTokenParams{ProviderName: p.name, SessionID: s.id}
	if o.Dialect == Acquire {
		rec.Scope = p.scope
		params = acquireParams{SessionID: s.id, ProviderName: p.name, Scope: p.scope}
	}
	callCtx, cancel := context.WithTimeout(ctx, o.TokenTimeout)
	defer cancel()
	var raw json.RawMessage
	err := jc.Call(callCtx, rec.Method, params, &raw, jsonrpc2.PickID(jsonrpc2.ID{Num: c.seq.Add(1)}))

	var tok string
	var expMs int64
	var rpcErr *jsonrpc2.Error
	switch {
	case errors.As(err, &rpcErr):
		err = errors.New(rpcErr.Message) // the client's own message reaches the user
		c.rt.count(func(st *Stats) { st.TokenErrors++ })
	case err != nil && callCtx.Err() != nil && ctx.Err() == nil:
		err = fmt.Errorf("no reply within %s", o.TokenTimeout)
		c.rt.count(func(st *Stats) { st.TokenErrors++ })
	case err != nil:
		// The turn was canceled or the connection closed: no verdict on the
		// client.
	default:
		if o.Dialect == Acquire {
			tok, expMs, err = checkAcquire(raw)
		} else {
			tok, err = checkGetToken(raw)
		}
		if err != nil {
			err = &invalidResult{msg: err.Error()}
			c.rt.count(func(st *Stats) { st.TokenInvalid++ })
		}
	}
	if err != nil {
		rec.Err = err.Error()
	} else {
		rec.Fingerprint = fingerprint(tok)
		if expMs > 0 {
			rec.ExpiresOn = time.UnixMilli(expMs)
		}
	}
	c.rt.recordToken(rec)
	c.rt.log.Debug("runtimesim: token request", "method", rec.Method, "session", s.id,
		"provider", p.name, "scope", rec.Scope, "fingerprint", rec.Fingerprint, "err", rec.Err)
	if err != nil {
		return "", err
	}
	if expMs > 0 { // a bare token (no expiry) is single use
		c.mu.Lock()
		s.tokens[p.name] = cachedToken{token: tok, exp: rec.ExpiresOn}
		c.mu.Unlock()
	}
	return tok, nil
}

// forget drops p's cached token after the provider rejected it.
func (c *conn) forget(s *session, provider string) {
	c.mu.Lock()
	delete(s.tokens, provider)
	c.mu.Unlock()
}

// post sends one HTTP attempt to the provider and returns the reply. On
// failure it returns the status (0 when no response arrived) and an error
// worded like 1.0.102's "Last error" ("500 <provider's message>").
func (c *conn) post(ctx context.Context, s *session, cfg sessionConfig, token string, ex *exchange) (int, reply, error) {
	p := cfg.provider
	path, body := "/chat/completions", map[string]any{"model": cfg.wireModel, "messages": ex.chatMessages()}
	if p.wireAPI == "responses" {
		path, body = "/responses", map[string]any{"model": cfg.wireModel, "input": ex.responsesInput()}
	}
	u := strings.TrimSuffix(p.baseURL, "/") + path
	b, err := json.Marshal(body)
	if err != nil {
		return 0, reply{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return 0, reply{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	// Credentials the way the OpenAI SDK inside the CLI sends them; a
	// provider with neither a flag this dialect honours nor a static
	// credential gets no Authorization header at all.
	var cred string
	switch {
	case p.askClient:
		cred = token
		req.Header.Set("Authorization", "Bearer "+token)
	case p.bearerToken != "":
		cred = p.bearerToken
		req.Header.Set("Authorization", "Bearer "+p.bearerToken)
	case p.apiKey != "" && p.typ == "azure":
		cred = p.apiKey
		req.Header.Set("api-key", p.apiKey)
	case p.apiKey != "":
		cred = p.apiKey
		req.Header.Set("Authorization", "Bearer "+p.apiKey)
	}
	rec := ModelRequest{SessionID: s.id, ProviderName: p.name, Fingerprint: fingerprint(cred)}
	resp, err := c.rt.client.Do(req)
	if err != nil {
		c.rt.recordModel(rec)
		return 0, reply{}, err
	}
	defer resp.Body.Close()
	rec.Status = resp.StatusCode
	c.rt.recordModel(rec)
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return 0, reply{}, err
	}
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, reply{}, fmt.Errorf("%d %s", resp.StatusCode, errorMessage(data))
	}
	r, err := parseReply(p.wireAPI, data)
	return resp.StatusCode, r, err
}

// errorMessage extracts an OpenAI-style {"error":{"message"}} or a short
// excerpt of the body.
func errorMessage(body []byte) string {
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
		return e.Error.Message
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return msg
}

// parseReply extracts the assistant text and tool calls of a chat
// completion, or of a Responses API reply (its output_text parts and
// function_call items).
func parseReply(wireAPI string, body []byte) (reply, error) {
	var r reply
	if wireAPI == "responses" {
		var resp struct {
			Output []struct {
				Type      string `json:"type"`
				CallID    string `json:"call_id"`
				Name      string `json:"name"`
				Arguments string `json:"arguments"`
				Content   []struct {
					Type string `json:"type"`
					Text string `json:"text"`
				} `json:"content"`
			} `json:"output"`
		}
		if err := json.Unmarshal(body, &resp); err != nil {
			return r, fmt.Errorf("invalid model response: %w", err)
		}
		var b strings.Builder
		for _, o := range resp.Output {
			if o.Type == "function_call" {
				r.calls = append(r.calls, toolCall{id: o.CallID, name: o.Name, arguments: o.Arguments})
			}
			for _, part := range o.Content {
				if part.Type == "output_text" {
					b.WriteString(part.Text)
				}
			}
		}
		r.text = b.String()
		return r, nil
	}
	var resp struct {
		Choices []struct {
			Message struct {
				Content   string `json:"content"` // null beside tool calls
				ToolCalls []struct {
					ID       string `json:"id"`
					Function struct {
						Name      string `json:"name"`
						Arguments string `json:"arguments"`
					} `json:"function"`
				} `json:"tool_calls"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return r, fmt.Errorf("invalid model response: %w", err)
	}
	if len(resp.Choices) == 0 {
		return r, errors.New("invalid model response: no choices")
	}
	m := resp.Choices[0].Message
	r.text = m.Content
	for _, tc := range m.ToolCalls {
		r.calls = append(r.calls, toolCall{id: tc.ID, name: tc.Function.Name, arguments: tc.Function.Arguments})
	}
	return r, nil
}
