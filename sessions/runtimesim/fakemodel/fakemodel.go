// Package fakemodel is a fake OpenAI-compatible model endpoint for tests.
//
// It listens on 127.0.0.1 only, answers POST <base>/chat/completions (JSON or
// SSE when "stream" is true) and POST <base>/responses, and records every
// request, including its raw Authorization header, so tests can check which
// bearer token reached the model. The recorded header is never printed: a
// Request formats and logs a fingerprint of the token instead.
package fakemodel

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
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
	// Reply returns the assistant text for a request; nil means DefaultReply.
	// It runs on the server's goroutines and must be safe for concurrent use.
	Reply func(Request) string
	// RequireToken, when set, is given the raw Authorization header value
	// ("" when absent); a false result answers 401 like a provider rejecting
	// an expired or wrong token.
	RequireToken func(authorization string) bool
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
	// HasAuthorization tells an absent header from an empty one.
	HasAuthorization bool
	// Authorization is the raw header value, secret: never printed by
	// String, GoString or LogValue.
	Authorization string
	// APIKey is the raw api-key header (Azure style), secret like
	// Authorization.
	APIKey string
	// Status is the HTTP status the server answered.
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

// decide returns the status to answer before any reply is produced.
func (s *Server) decide(auth string) int {
	s.mu.Lock()
	if s.failLeft > 0 {
		s.failLeft--
		code := s.failCode
		s.mu.Unlock()
		return code
	}
	s.mu.Unlock()
	if s.opts.RequireToken != nil && !s.opts.RequireToken(auth) {
		return http.StatusUnauthorized
	}
	return http.StatusOK
}

// record completes req from r, keeps it, and returns it complete.
func (s *Server) record(r *http.Request, req Request, status int) Request {
	req.Time = time.Now()
	req.Method = r.Method
	req.Path = r.URL.Path
	_, req.HasAuthorization = r.Header["Authorization"]
	req.Authorization = r.Header.Get("Authorization")
	req.APIKey = r.Header.Get("Api-Key")
	req.Status = status
	s.mu.Lock()
	s.requests = append(s.requests, req)
	s.mu.Unlock()
	return req
}

func (s *Server) reply(req Request) string {
	if s.opts.Reply != nil {
		return s.opts.Reply(req)
	}
	return DefaultReply
}

// begin decodes the body into v and answers the request itself when it must
// fail; it returns the status to record and whether to go on.
func (s *Server) begin(w http.ResponseWriter, r *http.Request, v any) (int, bool) {
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "fakemodel: POST only")
		return http.StatusMethodNotAllowed, false
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "fakemodel: invalid JSON body")
		return http.StatusBadRequest, false
	}
	status := s.decide(r.Header.Get("Authorization"))
	switch {
	case status == http.StatusUnauthorized:
		writeError(w, status, "invalid_request_error", "fakemodel: invalid or expired token")
		return status, false
	case status != http.StatusOK:
		writeError(w, status, "server_error", fmt.Sprintf("fakemodel: injected failure %d", status))
		return status, false
	}
	return status, true
}

type chatRequest struct {
	Model    string `json:"model"`
	Stream   bool   `json:"stream"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	var body chatRequest
	status, ok := s.begin(w, r, &body)
	req := Request{Model: body.Model, Stream: body.Stream}
	req.IncludeUsage = body.StreamOptions != nil && body.StreamOptions.IncludeUsage
	for _, m := range body.Messages {
		if m.Role == "user" {
			req.Prompt = contentText(m.Content)
		}
	}
	req = s.record(r, req, status)
	if !ok {
		return
	}
	text := s.reply(req)
	usage := map[string]int{
		"prompt_tokens":     wordCount(req.Prompt),
		"completion_tokens": wordCount(text),
		"total_tokens":      wordCount(req.Prompt) + wordCount(text),
	}
	id := fmt.Sprintf("chatcmpl-fake%d", time.Now().UnixNano())
	created := time.Now().Unix()
	if !req.Stream {
		writeJSON(w, map[string]any{
			"id": id, "object": "chat.completion", "created": created, "model": req.Model,
			"choices": []any{map[string]any{
				"index":         0,
				"message":       map[string]any{"role": "assistant", "content": text},
				"finish_reason": "stop",
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
	chunk(map[string]any{}, "stop")
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
}

// responses serves a minimal Responses API: one output message with one
// output_text part; streaming sends created, one delta per word, completed.
func (s *Server) responses(w http.ResponseWriter, r *http.Request) {
	var body responsesRequest
	status, ok := s.begin(w, r, &body)
	req := Request{Model: body.Model, Stream: body.Stream, Prompt: inputText(body.Input)}
	req = s.record(r, req, status)
	if !ok {
		return
	}
	text := s.reply(req)
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
	output := []any{map[string]any{
		"type": "message", "id": msgID, "status": "completed", "role": "assistant",
		"content": []any{map[string]any{"type": "output_text", "text": text, "annotations": []any{}}},
	}}
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
	sse.event("response.completed", map[string]any{"type": "response.completed", "response": resp("completed", output)})
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
// user message counts.
func inputText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var items []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if json.Unmarshal(raw, &items) != nil {
		return ""
	}
	text := ""
	for _, it := range items {
		if it.Role == "user" {
			text = contentText(it.Content)
		}
	}
	return text
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
