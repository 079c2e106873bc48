package fakemodel

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// defaultPathPrefix is the path under which the endpoints are served when
// Options.PathPrefix is empty (the shape of an Azure AI Foundry v1 base URL).
const defaultPathPrefix = "/openai/v1"

// maxBody bounds what one request may upload; real CLI bodies are ~50 KB.
const maxBody = 8 << 20

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
		prefix = defaultPathPrefix
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
	req.method = r.Method
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

func wordCount(s string) int { return len(strings.Fields(s)) }
