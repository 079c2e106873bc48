package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/transport"
)

// After Broker.Close, a runtime still connected keeps retrying its token
// requests: every answer, those pending at Close and the retries after it,
// says the broker closed, naming session and provider, never that the
// session is unknown on this connection (which points at the wrong fix).
func TestBrokerClosedAnswersRetries(t *testing.T) {
	hardLeakCheck(t)
	w := newHardWorld(t, actors.Options{})
	src := w.source("tok-closing-").gated()
	rt := w.dial("pipe")
	rt.open("s1", actors.Provider{Name: "mi", Source: src})
	pending := hardInflight(rt, 2, transport.MethodAcquire, "s1", "mi")
	hardWait(t, "credential called", src.started)
	hardWaitHandled(t, w, 2)
	if err := w.broker.Close(); err != nil {
		t.Fatal(err)
	}
	answers := hardCollect(t, "pending", pending, 2)
	for range 6 { // CLI 1.0.102's retries
		ctx, cancel := context.WithTimeout(context.Background(), hardSettle)
		answers = append(answers, rt.ask(ctx, transport.MethodGetToken, "s1", "mi"))
		cancel()
		time.Sleep(10 * time.Millisecond)
	}
	for i, a := range answers {
		if hardCode(a) != transport.CodeClosed || !strings.HasSuffix(a.rpcErr.Message, "broker closed") || !hardSaysWhere(a, "s1", "mi") {
			t.Errorf("answer %d after Close: %s, want a closed error naming session and provider", i, a)
		}
	}
}
