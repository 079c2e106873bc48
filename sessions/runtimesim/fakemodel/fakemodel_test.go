package fakemodel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/tokens"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start runs a server and a client of its own for one test, closing both
// (and the client's idle connections) at the end so goleak sees no leftovers.
func start(t *testing.T, opts Options) (*Server, *http.Client) {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, &http.Client{Transport: tr}
}

func post(t *testing.T, c *http.Client, u, auth, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

const chatBody = `{"model":"gpt-4o","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"Say hello"}]}`

func TestURLIsLoopback(t *testing.T) {
	s, _ := start(t, Options{})
	u, err := url.Parse(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	if u.Hostname() != "127.0.0.1" || u.Path != defaultPathPrefix {
		t.Fatalf("URL = %q, want http://127.0.0.1:PORT%s", s.URL(), defaultPathPrefix)
	}
	root, _ := start(t, Options{PathPrefix: "/"})
	if strings.Count(root.URL(), "/") != 2 {
		t.Fatalf("root URL = %q, want no path", root.URL())
	}
}

func TestChatCompletion(t *testing.T) {
	s, c := start(t, Options{})
	resp := post(t, c, s.URL()+"/chat/completions", "Bearer tok-A", chatBody)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	var out struct {
		Object  string
		Choices []struct {
			Message      struct{ Role, Content string }
			FinishReason string `json:"finish_reason"`
		}
		Usage struct {
			TotalTokens int `json:"total_tokens"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Object != "chat.completion" || len(out.Choices) != 1 ||
		out.Choices[0].Message.Content != DefaultReply || out.Choices[0].Message.Role != "assistant" ||
		out.Choices[0].FinishReason != "stop" || out.Usage.TotalTokens == 0 {
		t.Fatalf("unexpected reply %+v", out)
	}
	reqs := s.Requests()
	if len(reqs) != 1 || s.Count() != 1 {
		t.Fatalf("recorded %d requests", len(reqs))
	}
	r := reqs[0]
	if r.Path != "/openai/v1/chat/completions" || r.Model != "gpt-4o" || r.Prompt != "Say hello" ||
		r.Stream || !r.HasAuthorization || r.Authorization != "Bearer tok-A" || r.BearerToken() != "tok-A" ||
		r.Status != http.StatusOK || r.method != http.MethodPost {
		t.Fatalf("recorded %s / %+v", r, r.Prompt)
	}
}

// readSSE returns the data payloads of an event stream.
func readSSE(t *testing.T, resp *http.Response) []string {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	var data []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			data = append(data, d)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return data
}

func TestChatStreaming(t *testing.T) {
	for _, usage := range []bool{false, true} {
		t.Run(fmt.Sprint("include_usage=", usage), func(t *testing.T) {
			s, c := start(t, Options{Reply: func(r Request) string { return "echo: " + r.Prompt }})
			body := `{"model":"m","stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"hi there"}]}]`
			if usage {
				body += `,"stream_options":{"include_usage":true}`
			}
			data := readSSE(t, post(t, c, s.URL()+"/chat/completions", "Bearer x", body+"}"))
			if data[len(data)-1] != "[DONE]" {
				t.Fatalf("last event %q", data[len(data)-1])
			}
			var text strings.Builder
			var sawUsage, sawStop bool
			for _, d := range data[:len(data)-1] {
				var ch struct {
					Object  string
					Choices []struct {
						Delta        struct{ Content string }
						FinishReason *string `json:"finish_reason"`
					}
					Usage *struct {
						TotalTokens int `json:"total_tokens"`
					}
				}
				if err := json.Unmarshal([]byte(d), &ch); err != nil {
					t.Fatalf("chunk %q: %v", d, err)
				}
				if ch.Object != "chat.completion.chunk" {
					t.Fatalf("chunk object %q", ch.Object)
				}
				for _, c := range ch.Choices {
					text.WriteString(c.Delta.Content)
					sawStop = sawStop || (c.FinishReason != nil && *c.FinishReason == "stop")
				}
				if ch.Usage != nil {
					sawUsage = ch.Usage.TotalTokens > 0 && len(ch.Choices) == 0
				}
			}
			if text.String() != "echo: hi there" || !sawStop || sawUsage != usage {
				t.Fatalf("text %q stop=%t usage=%t", text.String(), sawStop, sawUsage)
			}
			if r := s.Requests()[0]; !r.Stream || r.includeUsage != usage {
				t.Fatalf("recorded %s includeUsage=%t", r, r.includeUsage)
			}
		})
	}
}

func TestResponses(t *testing.T) {
	s, c := start(t, Options{})
	resp := post(t, c, s.URL()+"/responses", "Bearer r", `{"model":"m","input":"hello"}`)
	var out struct {
		Status string
		Output []struct {
			Content []struct{ Type, Text string }
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Status != "completed" || out.Output[0].Content[0].Text != DefaultReply {
		t.Fatalf("reply %+v", out)
	}

	data := readSSE(t, post(t, c, s.URL()+"/responses", "Bearer r",
		`{"model":"m","stream":true,"input":[{"role":"user","content":"hi"}]}`))
	var text strings.Builder
	var last string
	for _, d := range data {
		var ev struct{ Type, Delta string }
		if err := json.Unmarshal([]byte(d), &ev); err != nil {
			t.Fatal(err)
		}
		text.WriteString(ev.Delta)
		last = ev.Type
	}
	if text.String() != DefaultReply || last != "response.completed" {
		t.Fatalf("streamed %q, last event %q", text.String(), last)
	}
	if r := s.Requests()[1]; r.Prompt != "hi" || !r.Stream {
		t.Fatalf("recorded %s prompt %q", r, r.Prompt)
	}
}

func TestFailNextAndRequireToken(t *testing.T) {
	s, c := start(t, Options{RequireToken: func(auth string) bool { return auth == "Bearer good" }})
	s.FailNext(http.StatusInternalServerError, 2)
	want := []struct {
		auth   string
		status int
	}{
		{"Bearer good", 500},
		{"Bearer good", 500},
		{"Bearer bad", 401},
		{"", 401},
		{"Bearer good", 200},
	}
	for i, w := range want {
		resp := post(t, c, s.URL()+"/chat/completions", w.auth, chatBody)
		if resp.StatusCode != w.status {
			t.Fatalf("request %d: status %d, want %d", i, resp.StatusCode, w.status)
		}
		if w.status != 200 {
			var e struct{ Error struct{ Message string } }
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Error.Message == "" {
				t.Fatalf("request %d: error body %+v (%v)", i, e, err)
			}
		}
	}
	reqs := s.Requests()
	for i, w := range want {
		if reqs[i].Status != w.status {
			t.Fatalf("recorded status %d for request %d, want %d", reqs[i].Status, i, w.status)
		}
	}
	if reqs[3].HasAuthorization {
		t.Fatal("request without Authorization recorded as having one")
	}
	s.FailNext(http.StatusTooManyRequests, 5)
	s.Reset()
	if s.Count() != 0 {
		t.Fatal("Reset kept requests")
	}
	if resp := post(t, c, s.URL()+"/chat/completions", "Bearer good", chatBody); resp.StatusCode != 200 {
		t.Fatalf("Reset kept FailNext: status %d", resp.StatusCode)
	}
}

func TestBadRequests(t *testing.T) {
	s, c := start(t, Options{})
	if resp := post(t, c, s.URL()+"/chat/completions", "", "{not json"); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad JSON: status %d", resp.StatusCode)
	}
	if resp := post(t, c, s.URL()+"/embeddings", "", "{}"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown path: status %d", resp.StatusCode)
	}
	resp, err := c.Get(s.URL() + "/chat/completions")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: status %d", resp.StatusCode)
	}
	if s.Count() != 3 {
		t.Fatalf("recorded %d, want 3", s.Count())
	}
}

func TestRequestNeverPrintsSecrets(t *testing.T) {
	const token, apiKey = "very-secret-token", "very-secret-key"
	r := Request{method: "POST", Path: "/x", HasAuthorization: true, Authorization: "Bearer " + token, APIKey: apiKey, Status: 200}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("req", "r", r)
	outputs := []string{
		fmt.Sprint(r), fmt.Sprintf("%+v", r), fmt.Sprintf("%#v", r), fmt.Sprintf("%v", []Request{r}),
		logged.String(),
	}
	for _, out := range outputs {
		if strings.Contains(out, "secret") {
			t.Fatalf("secret printed: %s", out)
		}
		if !strings.Contains(out, tokens.Fingerprint(token)) {
			t.Fatalf("fingerprint missing: %s", out)
		}
	}
}

func TestConcurrentRequests(t *testing.T) {
	s, c := start(t, Options{})
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, s.URL()+"/chat/completions", strings.NewReader(chatBody))
			req.Header.Set("Authorization", fmt.Sprintf("Bearer t%d", i))
			resp, err := c.Do(req)
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if s.Count() != n {
		t.Fatalf("recorded %d, want %d", s.Count(), n)
	}
}

// bashCall is a scripted tool call and the result a runtime would send back.
var bashCall = ToolCall{ID: "call_1", Name: "bash", Arguments: `{"command":"env"}`}

func TestChatToolCalls(t *testing.T) {
	s, c := start(t, Options{Respond: func(r Request) Response {
		if len(r.ToolResults) == 0 {
			return Response{ToolCalls: []ToolCall{bashCall, {Name: "view", Arguments: `{}`}}}
		}
		return Response{Text: "done"}
	}})
	body := `{"model":"m","tools":[{"type":"function","function":{"name":"bash"}}],"messages":[{"role":"user","content":"run env"}]}`
	var out struct {
		Choices []struct {
			Message struct {
				Content   *string
				ToolCalls []struct {
					ID, Type string
					Function struct{ Name, Arguments string }
				} `json:"tool_calls"`
			}
			FinishReason string `json:"finish_reason"`
		}
	}
	if err := json.NewDecoder(post(t, c, s.URL()+"/chat/completions", "Bearer x", body).Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	msg := out.Choices[0].Message
	if out.Choices[0].FinishReason != "tool_calls" || msg.Content != nil || len(msg.ToolCalls) != 2 {
		t.Fatalf("reply %+v", out)
	}
	got := msg.ToolCalls[0]
	if got.ID != bashCall.ID || got.Type != "function" || got.Function.Name != "bash" || got.Function.Arguments != bashCall.Arguments {
		t.Fatalf("tool call %+v", got)
	}
	if id := msg.ToolCalls[1].ID; !strings.HasPrefix(id, "call_fake") {
		t.Fatalf("generated id %q", id)
	}
	if r := s.Requests()[0]; r.ToolResults != nil {
		t.Fatalf("recorded results %+v", r.ToolResults)
	}

	next := `{"model":"m","messages":[{"role":"user","content":"run env"},` +
		`{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"bash","arguments":"{}"}}]},` +
		`{"role":"tool","tool_call_id":"call_1","content":"PATH=/bin"}]}`
	var done struct {
		Choices []struct {
			Message      struct{ Content string }
			FinishReason string `json:"finish_reason"`
		}
	}
	if err := json.NewDecoder(post(t, c, s.URL()+"/chat/completions", "Bearer x", next).Body).Decode(&done); err != nil {
		t.Fatal(err)
	}
	if done.Choices[0].Message.Content != "done" || done.Choices[0].FinishReason != "stop" {
		t.Fatalf("second reply %+v", done)
	}
	want := []ToolResult{{CallID: "call_1", Content: "PATH=/bin"}}
	if r := s.Requests()[1]; fmt.Sprint(r.ToolResults) != fmt.Sprint(want) || r.Prompt != "run env" {
		t.Fatalf("recorded results %+v prompt %q", r.ToolResults, r.Prompt)
	}
}

func TestChatToolCallsStreaming(t *testing.T) {
	s, c := start(t, Options{Respond: func(Request) Response {
		return Response{Text: "let me look", ToolCalls: []ToolCall{bashCall}}
	}})
	data := readSSE(t, post(t, c, s.URL()+"/chat/completions", "Bearer x",
		`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	// Accumulate the deltas the way OpenAI's client libraries do.
	var text, args strings.Builder
	var id, name, finish string
	for _, d := range data[:len(data)-1] {
		var ch struct {
			Choices []struct {
				Delta struct {
					Content   string
					ToolCalls []struct {
						Index    int
						ID       string
						Function struct{ Name, Arguments string }
					} `json:"tool_calls"`
				}
				FinishReason *string `json:"finish_reason"`
			}
		}
		if err := json.Unmarshal([]byte(d), &ch); err != nil {
			t.Fatal(err)
		}
		for _, c := range ch.Choices {
			text.WriteString(c.Delta.Content)
			for _, tc := range c.Delta.ToolCalls {
				if tc.Index != 0 {
					t.Fatalf("tool call index %d", tc.Index)
				}
				id += tc.ID
				name += tc.Function.Name
				args.WriteString(tc.Function.Arguments)
			}
			if c.FinishReason != nil {
				finish = *c.FinishReason
			}
		}
	}
	if text.String() != "let me look" || id != bashCall.ID || name != bashCall.Name || args.String() != bashCall.Arguments || finish != "tool_calls" {
		t.Fatalf("text %q call %q %q %q finish %q", text.String(), id, name, args.String(), finish)
	}
}

func TestResponsesToolCalls(t *testing.T) {
	s, c := start(t, Options{Respond: func(r Request) Response {
		if len(r.ToolResults) == 0 {
			return Response{ToolCalls: []ToolCall{bashCall}}
		}
		return Response{Text: "done"}
	}})
	type item struct {
		Type, ID, Name, Arguments string
		CallID                    string `json:"call_id"`
	}
	var out struct{ Output []item }
	if err := json.NewDecoder(post(t, c, s.URL()+"/responses", "Bearer r",
		`{"model":"m","tools":[{"type":"function","name":"bash"}],"input":"run env"}`).Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if len(out.Output) != 1 || out.Output[0] != (item{Type: "function_call", ID: "fc_call_1", Name: "bash", Arguments: bashCall.Arguments, CallID: "call_1"}) {
		t.Fatalf("output %+v", out.Output)
	}

	data := readSSE(t, post(t, c, s.URL()+"/responses", "Bearer r", `{"model":"m","stream":true,"input":"run env"}`))
	var types []string
	var args string
	var final struct{ Output []item }
	for _, d := range data {
		var ev struct {
			Type, Delta string
			Item        item
			Response    *struct{ Output []item }
		}
		if err := json.Unmarshal([]byte(d), &ev); err != nil {
			t.Fatal(err)
		}
		types = append(types, ev.Type)
		if ev.Type == "response.function_call_arguments.delta" {
			args += ev.Delta
		}
		if ev.Type == "response.completed" {
			final = *ev.Response
		}
	}
	wantTypes := "response.created response.output_item.added response.function_call_arguments.delta " +
		"response.function_call_arguments.done response.output_item.done response.completed"
	if strings.Join(types, " ") != wantTypes || args != bashCall.Arguments || len(final.Output) != 1 || final.Output[0].CallID != "call_1" {
		t.Fatalf("events %q args %q final %+v", types, args, final)
	}

	post(t, c, s.URL()+"/responses", "Bearer r", `{"model":"m","input":[{"role":"user","content":"run env"},`+
		`{"type":"function_call","call_id":"call_1","name":"bash","arguments":"{}"},`+
		`{"type":"function_call_output","call_id":"call_1","output":"PATH=/bin"}]}`)
	if r := s.Requests()[2]; len(r.ToolResults) != 1 || r.ToolResults[0] != (ToolResult{CallID: "call_1", Content: "PATH=/bin"}) || r.Prompt != "run env" {
		t.Fatalf("recorded results %+v prompt %q", r.ToolResults, r.Prompt)
	}
}

func TestRespondStatusPerToken(t *testing.T) {
	s, c := start(t, Options{Respond: func(r Request) Response {
		if r.BearerToken() == "revoked" {
			return Response{Status: http.StatusUnauthorized}
		}
		return Response{Status: http.StatusOK, Text: "hi"}
	}})
	for _, tc := range []struct {
		token string
		want  int
	}{{"revoked", 401}, {"fresh", 200}} {
		if resp := post(t, c, s.URL()+"/chat/completions", "Bearer "+tc.token, chatBody); resp.StatusCode != tc.want {
			t.Fatalf("token %s: status %d, want %d", tc.token, resp.StatusCode, tc.want)
		}
	}
	if reqs := s.Requests(); reqs[0].Status != 401 || reqs[1].Status != 200 {
		t.Fatalf("recorded %v", reqs)
	}
}

func TestRespondDelay(t *testing.T) {
	const delay = 150 * time.Millisecond
	s, c := start(t, Options{Respond: func(Request) Response { return Response{Text: "late", Delay: delay} }})
	began := time.Now()
	post(t, c, s.URL()+"/chat/completions", "", chatBody)
	if took := time.Since(began); took < delay {
		t.Fatalf("answered after %v, want at least %v", took, delay)
	}

	// A client that gives up ends the wait: Close does not sit out the delay.
	slow, sc := start(t, Options{Respond: func(Request) Response { return Response{Delay: time.Hour} }})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, slow.URL()+"/chat/completions", strings.NewReader(chatBody))
	if _, err := sc.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do: %v, want deadline exceeded", err)
	}
}
