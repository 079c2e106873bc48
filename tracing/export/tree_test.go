package export_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/tracing/export"
)

func TestTreePrinter(t *testing.T) {
	tree := export.NewTreePrinter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tree))
	tr := tp.Tracer("test")
	ctx, root := tr.Start(context.Background(), "root", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(tracing.RPCSystem.String("jsonrpc"), tracing.RemainingSeconds.Float64(12.3456)))
	_, child := tr.Start(ctx, "child", trace.WithAttributes(tracing.RefreshReason.String("cold")))
	_, grandchild := tr.Start(trace.ContextWithSpan(ctx, child), "grandchild")
	grandchild.End()
	child.End()
	_, second := tr.Start(ctx, "second-child")
	second.End()
	root.End()
	_, linked := tr.Start(context.Background(), "linked", trace.WithLinks(trace.Link{SpanContext: root.SpanContext()}))
	linked.End()
	if err := tp.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := tree.WriteTo(&out); err != nil {
		t.Fatal(err)
	}
	var shape []string
	for _, line := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
		indent := len(line) - len(strings.TrimLeft(line, " "))
		shape = append(shape, fmt.Sprintf("%d %s", indent, strings.Fields(line)[0]))
	}
	want := []string{"0 trace", "2 root", "4 child", "6 grandchild", "4 second-child", "0 trace", "2 linked"}
	if !slices.Equal(shape, want) {
		t.Fatalf("tree:\n%s\nshape %v, want %v", out.String(), shape, want)
	}
	text := out.String()
	if strings.Contains(text, "rpc.system") {
		t.Errorf("constant attribute printed:\n%s", text)
	}
	for _, want := range []string{"root server", "token.remaining_s=12.3\n", "refresh.reason=cold", "link=" + root.SpanContext().TraceID().String()} {
		if !strings.Contains(text, want) {
			t.Errorf("tree lacks %q:\n%s", want, text)
		}
	}
}
