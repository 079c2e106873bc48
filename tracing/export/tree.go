// Package export helps programs that embed tokenbroker look at its spans:
// TreePrinter, a span processor that prints each trace as an indented tree
// (examples/quickstart -trace uses it). The library packages use only the
// OpenTelemetry API; exporters to a tracing backend live with the programs
// that need them (cmd/tokenload has its own module for them).
package export

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// TreePrinter is a span processor that keeps the spans that end and writes
// them as indented trees, one per trace, children under their parents in
// start order:
//
//	trace 4bf92f3577b34da6a3ce929d0e0e4736
//	  providerToken.getToken server 1.204ms rpc.jsonrpc.request_id=1 session.id=s1 provider.name=mi outcome=refreshed token.remaining_s=3600.0
//	    tokenbroker.refresh 1.1ms provider.name=mi refresh.reason=cold credential.shared=false token.lifetime_s=3600.0 refresh.outcome=ok
//
// It keeps at most Limit spans (default 10000) so a long run cannot grow
// it without bound; later spans are counted and dropped.
type TreePrinter struct {
	Limit int

	mu      sync.Mutex
	spans   []sdktrace.ReadOnlySpan
	dropped int
}

// NewTreePrinter returns an empty TreePrinter.
func NewTreePrinter() *TreePrinter { return &TreePrinter{} }

// OnStart implements sdktrace.SpanProcessor.
func (*TreePrinter) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd implements sdktrace.SpanProcessor.
func (p *TreePrinter) OnEnd(s sdktrace.ReadOnlySpan) {
	p.mu.Lock()
	defer p.mu.Unlock()
	limit := p.Limit
	if limit <= 0 {
		limit = 10000
	}
	if len(p.spans) >= limit {
		p.dropped++
		return
	}
	p.spans = append(p.spans, s)
}

// Shutdown implements sdktrace.SpanProcessor.
func (*TreePrinter) Shutdown(context.Context) error { return nil }

// ForceFlush implements sdktrace.SpanProcessor.
func (*TreePrinter) ForceFlush(context.Context) error { return nil }

// Spans returns the spans kept so far, in the order they ended.
func (p *TreePrinter) Spans() []sdktrace.ReadOnlySpan {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.spans)
}

// WriteTo writes the trees of the spans kept so far.
func (p *TreePrinter) WriteTo(w io.Writer) (int64, error) {
	p.mu.Lock()
	spans, dropped := slices.Clone(p.spans), p.dropped
	p.mu.Unlock()

	bw := bufio.NewWriter(w)
	cw := &countingWriter{w: bw}
	byID := map[trace.SpanID]bool{}
	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = true
	}
	var roots []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if parent := s.Parent(); parent.IsValid() && byID[parent.SpanID()] {
			children[parent.SpanID()] = append(children[parent.SpanID()], s)
		} else {
			roots = append(roots, s) // a true root, or a child of a span not kept (e.g. remote)
		}
	}
	byStart := func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) }
	slices.SortStableFunc(roots, byStart)
	// Group roots by trace, traces in the order of their first span.
	var traces []trace.TraceID
	rootsOf := map[trace.TraceID][]sdktrace.ReadOnlySpan{}
	for _, r := range roots {
		id := r.SpanContext().TraceID()
		if _, seen := rootsOf[id]; !seen {
			traces = append(traces, id)
		}
		rootsOf[id] = append(rootsOf[id], r)
	}
	var walk func(s sdktrace.ReadOnlySpan, depth int)
	walk = func(s sdktrace.ReadOnlySpan, depth int) {
		fmt.Fprintf(cw, "%s%s\n", strings.Repeat("  ", depth), describe(s))
		kids := children[s.SpanContext().SpanID()]
		slices.SortStableFunc(kids, byStart)
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	for _, id := range traces {
		fmt.Fprintf(cw, "trace %s\n", id)
		for _, r := range rootsOf[id] {
			if p := r.Parent(); p.IsValid() {
				fmt.Fprintf(cw, "  (parent %s, remote or not recorded)\n", p.SpanID())
			}
			walk(r, 1)
		}
	}
	if dropped > 0 {
		fmt.Fprintf(cw, "(%d more spans not kept)\n", dropped)
	}
	if err := bw.Flush(); err != nil && cw.err == nil {
		cw.err = err
	}
	return cw.n, cw.err
}

// describe is one line: name, kind, duration, attributes, status, links.
func describe(s sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	b.WriteString(s.Name())
	if k := s.SpanKind(); k != trace.SpanKindInternal && k != trace.SpanKindUnspecified {
		b.WriteString(" " + k.String())
	}
	fmt.Fprintf(&b, " %s", s.EndTime().Sub(s.StartTime()).Round(time.Microsecond))
	for _, kv := range s.Attributes() {
		if redundant[kv.Key] {
			continue
		}
		v := kv.Value.String()
		if kv.Value.Type() == attribute.FLOAT64 {
			v = strconv.FormatFloat(kv.Value.AsFloat64(), 'f', 1, 64)
		}
		fmt.Fprintf(&b, " %s=%s", shortKey(kv.Key), v)
	}
	if st := s.Status(); st.Code == codes.Error {
		fmt.Fprintf(&b, " ERROR %q", st.Description)
	}
	for _, l := range s.Links() {
		fmt.Fprintf(&b, " link=%s/%s", l.SpanContext.TraceID(), l.SpanContext.SpanID())
	}
	for _, e := range s.Events() {
		fmt.Fprintf(&b, " event=%s", e.Name)
	}
	return b.String()
}

// redundant attributes repeat the span name or a constant; the tree leaves
// them out to stay readable.
var redundant = map[attribute.Key]bool{
	"rpc.system":          true,
	"rpc.method":          true,
	"rpc.jsonrpc.version": true,
}

// shortKey drops the tokenbroker. prefix, which every attribute of ours has.
func shortKey(k attribute.Key) string {
	return strings.TrimPrefix(string(k), "tokenbroker.")
}

type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
	return n, err
}
