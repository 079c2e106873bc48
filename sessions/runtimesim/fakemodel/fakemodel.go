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

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// DefaultReply is the assistant text returned when Options.Reply is nil.
const DefaultReply = "Hello from the fake model"

// DefaultPathPrefix is the path under which the endpoints are served when
// Options.PathPrefix is empty (the shape of an Azure AI Foundry v1 base URL).
const DefaultPathPrefix = "/openai/v1"

// maxBody bounds what one request may upload; real CLI bodies are ~50 KB.
const maxBody = 8 << 20

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
	// Name is the tool's name as the runtime offered it (see Request.Tools).
	Name string
	// Arguments is the JSON object of arguments, e.g. {"command":"env"}.
	Arguments string
}

// ToolResult is a tool's output as the runtime sent it back to the model.
type ToolResult struct {
	CallID  string
	Content string
}

// Request is one recorded HTTP request.
type Request struct {
	Time   time.Time
	Method string
	Path   string
	Model  string
	// Prompt is the text of the last user message (chat completions) or the
	// input (responses).
	Prompt string
	Stream bool
	// IncludeUsage reports stream_options.include_usage.
	IncludeUsage bool
	// Tools are the names of the tools the request offers the model.
	Tools []string
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
		r.Method, r.Path, r.Model, r.Stream, r.authSummary(), r.Status)
}

// GoString keeps %#v from dumping the secret fields.
func (r Request) GoString() string { return "fakemodel.Request{" + r.String() + "}" }

// LogValue implements slog.LogValuer without the secret fields.
func (r Request) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("method", r.Method),
		slog.String("path", r.Path),
		slog.String("model", r.Model),
		slog.Bool("stream", r.Stream),
		slog.String("auth", r.authSummary()),
		slog.Int("status", r.Status),
	)
}

// Server is a running fake model endpoint. Its methods are safe for
// concurrent use.
type Server struct {
	opts   Options
	base   string
	srv    *http.Server
	served chan struct{}

	calls atomic.Int64 // numbers the generated tool call IDs

	mu       sync.Mutex
	requests []Request
	failCode int
	failLeft int
}

// Start listens on 127.0.0.1 on a free port and serves until Close.
func Start(opts Options) (*Server, error) {
	prefix := opts.PathPrefix
	if prefix == "" {
		prefix = DefaultPathPrefix
	}
	// "/openai/v1/" -> "/openai/v1"; "/" -> "" (the root).
	prefix = strings.TrimSuffix("/"+strings.Trim(prefix, "/"), "/")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fakemodel: listen: %w", err)
	}
	s := &Server{
		opts:   opts,
		base:   "http://" + ln.Addr().String() + prefix,
		served: make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc(prefix+"/chat/completions", s.chat)
	mux.HandleFunc(prefix+"/responses", s.responses)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.record(r, Request{}, http.StatusNotFound)
		writeError(w, http.StatusNotFound, "not_found", "fakemodel: no such endpoint")
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(ln) // always ErrServerClosed after Close
	}()
	return s, nil
}

// URL returns the base URL, e.g. http://127.0.0.1:41234/openai/v1.
func (s *Server) URL() string { return s.base }

// Close stops the server, drops its open connections and waits for the
// accept loop to end.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.served
	return err
}

// Requests returns a copy of the recorded requests, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Count returns how many requests were recorded.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

// Reset forgets the recorded requests and any pending FailNext.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
	s.failCode, s.failLeft = 0, 0
}

// FailNext makes the next n model requests answer status (e.g. 401, 429,
// 500) with an OpenAI-style error body. It replaces any earlier FailNext.
func (s *Server) FailNext(status, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failCode, s.failLeft = status, n
}

// takeFailure returns the status of a pending FailNext, or 0.
func (s *Server) takeFailure() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failLeft == 0 {
		return 0
	}
	s.failLeft--
	return s.failCode
}

// respond decides the answer to req: FailNext, then RequireToken, then the
// script.
func (s *Server) respond(req Request) Response {
	if code := s.takeFailure(); code != 0 {
		return Response{Status: code}
	}
	if s.opts.RequireToken != nil && !s.opts.RequireToken(req.Authorization) {
		return Response{Status: http.StatusUnauthorized}
	}
	var resp Response
	switch {
	case s.opts.Respond != nil:
		resp = s.opts.Respond(req)
	case s.opts.Reply != nil:
		resp.Text = s.opts.Reply(req)
	default:
		resp.Text = DefaultReply
	}
	if resp.Status == 0 {
		resp.Status = http.StatusOK
	}
	for i := range resp.ToolCalls {
		if resp.ToolCalls[i].ID == "" {
			resp.ToolCalls[i].ID = fmt.Sprintf("call_fake%d", s.calls.Add(1))
		}
	}
	return resp
}

// fromHTTP completes req with what the HTTP request itself says.
func fromHTTP(r *http.Request, req Request) Request {
	req.Time = time.Now()
	req.Method = r.Method
	req.Path = r.URL.Path
	_, req.HasAuthorization = r.Header["Authorization"]
	req.Authorization = r.Header.Get("Authorization")
	req.APIKey = r.Header.Get("Api-Key")
	return req
}

// record completes req from r, keeps it as answered with status, and
// returns it complete.
func (s *Server) record(r *http.Request, req Request, status int) Request {
	req = fromHTTP(r, req)
	req.Status = status
	s.mu.Lock()
	s.requests = append(s.requests, req)
	s.mu.Unlock()
	return req
}

// modelRequest is a decoded request body of either dialect.
type modelRequest interface{ request() Request }

// handle decodes the body, records the request and decides its answer. It
// writes error answers itself; ok tells the caller to write resp.
func (s *Server) handle(w http.ResponseWriter, r *http.Request, body modelRequest) (req Request, resp Response, ok bool) {
	status := http.StatusOK
	switch {
	case r.Method != http.MethodPost:
		status = http.StatusMethodNotAllowed
	case json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(body) != nil:
		status = http.StatusBadRequest
	default:
		req = body.request()
		resp = s.respond(fromHTTP(r, req))
		status = resp.Status
	}
	req = s.record(r, req, status)
	if !wait(r, resp.Delay) {
		return req, resp, false
	}
	switch status {
	case http.StatusOK:
		return req, resp, true
	case http.StatusMethodNotAllowed:
		writeError(w, status, "invalid_request_error", "fakemodel: POST only")
	case http.StatusBadRequest:
		writeError(w, status, "invalid_request_error", "fakemodel: invalid JSON body")
	case http.StatusUnauthorized:
		writeError(w, status, "invalid_request_error", "fakemodel: invalid or expired token")
	default:
		writeError(w, status, "server_error", fmt.Sprintf("fakemodel: injected failure %d", status))
	}
	return req, resp, false
}

// wait holds the answer back for d, or until the client goes away.
func wait(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

type chatRequest struct {
	Model    string `json:"model"`
	Stream   bool   `json:"stream"`
	Messages []struct {
		Role       string          `json:"role"`
		Content    json.RawMessage `json:"content"`
		ToolCallID string          `json:"tool_call_id"`
	} `json:"messages"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Tools []struct {
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	} `json:"tools"`
}

func (b *chatRequest) request() Request {
	req := Request{Model: b.Model, Stream: b.Stream}
	req.IncludeUsage = b.StreamOptions != nil && b.StreamOptions.IncludeUsage
	for _, m := range b.Messages {
		switch m.Role {
		case "user":
			req.Prompt = contentText(m.Content)
		case "tool":
			req.ToolResults = append(req.ToolResults, ToolResult{CallID: m.ToolCallID, Content: contentText(m.Content)})
		}
	}
	for _, t := range b.Tools {
		req.Tools = append(req.Tools, t.Function.Name)
	}
	return req
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	var body chatRequest
	req, resp, ok := s.handle(w, r, &body)
	if !ok {
		return
	}
	text := resp.Text
	usage := map[string]int{
		"prompt_tokens":     wordCount(req.Prompt),
		"completion_tokens": wordCount(text),
		"total_tokens":      wordCount(req.Prompt) + wordCount(text),
	}
	id := fmt.Sprintf("chatcmpl-fake%d", time.Now().UnixNano())
	created := time.Now().Unix()
	finish := "stop"
	if len(resp.ToolCalls) > 0 {
		finish = "tool_calls"
	}
	if !req.Stream {
		msg := map[string]any{"role": "assistant", "content": text}
		if len(resp.ToolCalls) > 0 {
			calls := make([]any, len(resp.ToolCalls))
			for i, c := range resp.ToolCalls {
				calls[i] = map[string]any{"id": c.ID, "type": "function",
					"function": map[string]any{"name": c.Name, "arguments": c.Arguments}}
			}
			msg["tool_calls"] = calls
			if text == "" {
				msg["content"] = nil // what OpenAI sends beside tool calls
			}
		}
		writeJSON(w, map[string]any{
			"id": id, "object": "chat.completion", "created": created, "model": req.Model,
			"choices": []any{map[string]any{
				"index":         0,
				"message":       msg,
				"finish_reason": finish,
				"logprobs":      nil,
			}},
			"usage": usage,
		})
		return
	}
	sse := newSSE(w)
	chunk := func(delta map[string]any, finish any) {
		c := map[string]any{
			"id": id, "object": "chat.completion.chunk", "created": created, "model": req.Model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}},
		}
		if req.IncludeUsage {
			c["usage"] = nil // OpenAI sends null usage on every chunk but the last
		}
		sse.data(c)
	}
	chunk(map[string]any{"role": "assistant", "content": ""}, nil)
	for _, piece := range pieces(text) {
		chunk(map[string]any{"content": piece}, nil)
	}
	// Like OpenAI: the call's id and name first, then its arguments.
	for i, c := range resp.ToolCalls {
		chunk(map[string]any{"tool_calls": []any{map[string]any{"index": i, "id": c.ID, "type": "function",
			"function": map[string]any{"name": c.Name, "arguments": ""}}}}, nil)
		chunk(map[string]any{"tool_calls": []any{map[string]any{"index": i,
			"function": map[string]any{"arguments": c.Arguments}}}}, nil)
	}
	chunk(map[string]any{}, finish)
	if req.IncludeUsage {
		sse.data(map[string]any{
			"id": id, "object": "chat.completion.chunk", "created": created, "model": req.Model,
			"choices": []any{}, "usage": usage,
		})
	}
	sse.done()
}

type responsesRequest struct {
	Model  string          `json:"model"`
	Stream bool            `json:"stream"`
	Input  json.RawMessage `json:"input"`
	Tools  []struct {
		Name string `json:"name"`
	} `json:"tools"`
}

func (b *responsesRequest) request() Request {
	req := Request{Model: b.Model, Stream: b.Stream}
	req.Prompt, req.ToolResults = inputText(b.Input)
	for _, t := range b.Tools {
		req.Tools = append(req.Tools, t.Name)
	}
	return req
}

// responses serves a minimal Responses API: one output message with one
// output_text part, then one function_call item per tool call; streaming
// sends created, one delta per word, the function calls' item and argument
// events, completed.
func (s *Server) responses(w http.ResponseWriter, r *http.Request) {
	var body responsesRequest
	req, script, ok := s.handle(w, r, &body)
	if !ok {
		return
	}
	text := script.Text
	id := fmt.Sprintf("resp_fake%d", time.Now().UnixNano())
	msgID := "msg_" + strings.TrimPrefix(id, "resp_")
	resp := func(status string, output []any) map[string]any {
		return map[string]any{
			"id": id, "object": "response", "created_at": time.Now().Unix(),
			"status": status, "model": req.Model, "output": output,
			"usage": map[string]int{
				"input_tokens":  wordCount(req.Prompt),
				"output_tokens": wordCount(text),
				"total_tokens":  wordCount(req.Prompt) + wordCount(text),
			},
		}
	}
	var output []any
	if text != "" || len(script.ToolCalls) == 0 {
		output = append(output, map[string]any{
			"type": "message", "id": msgID, "status": "completed", "role": "assistant",
			"content": []any{map[string]any{"type": "output_text", "text": text, "annotations": []any{}}},
		})
	}
	calls := len(output) // output index of the first function call
	for _, c := range script.ToolCalls {
		output = append(output, functionCall(c, c.Arguments))
	}
	if !req.Stream {
		writeJSON(w, resp("completed", output))
		return
	}
	sse := newSSE(w)
	sse.event("response.created", map[string]any{"type": "response.created", "response": resp("in_progress", []any{})})
	for _, piece := range pieces(text) {
		sse.event("response.output_text.delta", map[string]any{
			"type": "response.output_text.delta", "item_id": msgID,
			"output_index": 0, "content_index": 0, "delta": piece,
		})
	}
	for i, c := range script.ToolCalls {
		at := calls + i
		itemID := "fc_" + c.ID
		sse.event("response.output_item.added", map[string]any{
			"type": "response.output_item.added", "output_index": at, "item": functionCall(c, ""),
		})
		sse.event("response.function_call_arguments.delta", map[string]any{
			"type": "response.function_call_arguments.delta", "item_id": itemID, "output_index": at, "delta": c.Arguments,
		})
		sse.event("response.function_call_arguments.done", map[string]any{
			"type": "response.function_call_arguments.done", "item_id": itemID, "output_index": at, "arguments": c.Arguments,
		})
		sse.event("response.output_item.done", map[string]any{
			"type": "response.output_item.done", "output_index": at, "item": output[at],
		})
	}
	sse.event("response.completed", map[string]any{"type": "response.completed", "response": resp("completed", output)})
}

// functionCall is the Responses API output item of c, with args so far.
func functionCall(c ToolCall, args string) map[string]any {
	return map[string]any{
		"type": "function_call", "id": "fc_" + c.ID, "call_id": c.ID,
		"name": c.Name, "arguments": args, "status": "completed",
	}
}

// sse writes server-sent events, flushing each so clients see them at once.
type sse struct {
	w http.ResponseWriter
	f http.Flusher
}

func newSSE(w http.ResponseWriter) sse {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	f, _ := w.(http.Flusher) // always a Flusher for net/http's own writer
	return sse{w: w, f: f}
}

func (s sse) write(format string, a ...any) {
	fmt.Fprintf(s.w, format, a...)
	if s.f != nil {
		s.f.Flush()
	}
}

func (s sse) data(v any) { s.write("data: %s\n\n", mustJSON(v)) }

func (s sse) event(name string, v any) { s.write("event: %s\ndata: %s\n\n", name, mustJSON(v)) }

func (s sse) done() { s.write("data: [DONE]\n\n") }

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(mustJSON(v))
}

func writeError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(mustJSON(map[string]any{
		"error": map[string]any{"message": msg, "type": typ, "code": status},
	}))
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of plain values are marshalled here
	}
	return b
}

// contentText flattens a chat message content: a string, or an array of
// parts of which the text parts count.
func contentText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) != nil {
		return ""
	}
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(p.Text)
	}
	return b.String()
}

// inputText flattens a Responses API input: a string, or items whose last
// user message is the prompt and whose function_call_output items are tool
// results.
func inputText(raw json.RawMessage) (prompt string, results []ToolResult) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var items []struct {
		Type    string          `json:"type"`
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
		CallID  string          `json:"call_id"`
		Output  json.RawMessage `json:"output"`
	}
	if json.Unmarshal(raw, &items) != nil {
		return "", nil
	}
	for _, it := range items {
		switch {
		case it.Role == "user":
			prompt = contentText(it.Content)
		case it.Type == "function_call_output":
			results = append(results, ToolResult{CallID: it.CallID, Content: contentText(it.Output)})
		}
	}
	return prompt, results
}

// pieces splits text into word-sized deltas that concatenate back to text.
func pieces(text string) []string {
	var out []string
	for text != "" {
		i := strings.IndexByte(text, ' ')
		if i < 0 {
			out = append(out, text)
			break
		}
		out = append(out, text[:i+1])
		text = text[i+1:]
	}
	return out
}

func wordCount(s string) int { return len(strings.Fields(s)) }
