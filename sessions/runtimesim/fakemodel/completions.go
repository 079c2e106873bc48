package fakemodel

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

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
}

func (b *chatRequest) request() Request {
	req := Request{Model: b.Model, Stream: b.Stream}
	req.includeUsage = b.StreamOptions != nil && b.StreamOptions.IncludeUsage
	for _, m := range b.Messages {
		switch m.Role {
		case "user":
			req.Prompt = contentText(m.Content)
		case "tool":
			req.ToolResults = append(req.ToolResults, ToolResult{CallID: m.ToolCallID, Content: contentText(m.Content)})
		}
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
		if req.includeUsage {
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
	if req.includeUsage {
		sse.data(map[string]any{
			"id": id, "object": "chat.completion.chunk", "created": created, "model": req.Model,
			"choices": []any{}, "usage": usage,
		})
	}
	sse.done()
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
