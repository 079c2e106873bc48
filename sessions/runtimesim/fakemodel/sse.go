package fakemodel

import (
	"fmt"
	"net/http"
	"strings"
)

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
