package export_test

import (
	"context"
	"os"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/tracing"
	"github.com/tokenbroker/tokenbroker/tracing/export"
)

// countingIDs gives traces and spans ids 1, 2, 3... so the example's output
// is stable; a program keeps the SDK's random ids.
type countingIDs struct{ n byte }

func (g *countingIDs) NewIDs(context.Context) (trace.TraceID, trace.SpanID) {
	g.n++
	return trace.TraceID{15: g.n}, trace.SpanID{7: g.n}
}

func (g *countingIDs) NewSpanID(context.Context, trace.TraceID) trace.SpanID {
	g.n++
	return trace.SpanID{7: g.n}
}

// A TreePrinter installed as a span processor prints each trace as a tree:
// here the two spans tokenbroker records when a getToken request finds the
// cache cold, the request and the refresh it waited for. (The timestamps
// are given so the output is stable; a broker's spans carry their own.)
func ExampleTreePrinter() {
	tree := export.NewTreePrinter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tree), sdktrace.WithIDGenerator(&countingIDs{}))
	defer tp.Shutdown(context.Background())
	tracer := tp.Tracer(tracing.InstrumentationName)

	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	ctx, request := tracer.Start(context.Background(), "providerToken.getToken", trace.WithTimestamp(t0),
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(tracing.RPCSystem.String("jsonrpc"), tracing.RPCRequestID.String("1"),
			tracing.SessionID.String("s1"), tracing.ProviderName.String("mi")))
	_, refresh := tracer.Start(ctx, tracing.SpanRefresh, trace.WithTimestamp(t0.Add(100*time.Microsecond)),
		trace.WithAttributes(tracing.ProviderName.String("mi"), tracing.RefreshReason.String("cold")))
	refresh.SetAttributes(tracing.RefreshOutcome.String(tracing.RefreshOK), tracing.TokenLifetime.Float64(3600))
	refresh.End(trace.WithTimestamp(t0.Add(1100 * time.Microsecond)))
	request.SetAttributes(tracing.Outcome.String(tracing.OutcomeRefreshed), tracing.RemainingSeconds.Float64(3600))
	request.End(trace.WithTimestamp(t0.Add(1204 * time.Microsecond)))

	if _, err := tree.WriteTo(os.Stdout); err != nil {
		panic(err)
	}
	// Output:
	// trace 00000000000000000000000000000001
	//   providerToken.getToken server 1.204ms rpc.jsonrpc.request_id=1 session.id=s1 provider.name=mi outcome=refreshed token.remaining_s=3600.0
	//     tokenbroker.refresh 1ms provider.name=mi refresh.reason=cold refresh.outcome=ok token.lifetime_s=3600.0
}
