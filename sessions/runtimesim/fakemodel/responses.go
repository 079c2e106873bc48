package fakemodel

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

type responsesRequest struct {
	Model  string          `json:"model"`
	Stream bool            `json:"stream"`
	Input  json.RawMessage `json:"input"`
}

func (b *responsesRequest) request() Request {
	req := Request{Model: b.Model, Stream: b.Stream}
	req.Prompt, req.ToolResults = inputText(b.Input)
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
