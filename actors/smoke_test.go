package actors

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/tokens"
)

func TestSmokeCacheAndBare(t *testing.T) {
	b := NewBroker(Options{})
	defer b.Close()
	r := b.NewRouter()
	var calls atomic.Int32
	cached := tokens.Func(func(ctx context.Context, req tokens.Request) (tokens.Token, error) {
		n := calls.Add(1)
		return tokens.Token{Value: "tok-" + string(rune('a'+n)), ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
	var bareCalls atomic.Int32
	bare := tokens.BareFunc(func(ctx context.Context, req tokens.Request) (string, error) {
		bareCalls.Add(1)
		return "bare-token", nil
	})
	if err := r.Open("s1", []Provider{{Name: "default", Source: cached}, {Name: "b", Source: bare}}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		g, err := r.Acquire(ctx, tokens.Request{SessionID: "s1", ProviderName: "default"})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 && g.Outcome != OutcomeRefreshed || i > 0 && g.Outcome != OutcomeHit {
			t.Fatalf("request %d: outcome %v", i, g.Outcome)
		}
		if _, err := r.Acquire(ctx, tokens.Request{SessionID: "s1", ProviderName: "b"}); err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 || bareCalls.Load() != 5 {
		t.Fatalf("calls %d bare %d", calls.Load(), bareCalls.Load())
	}
	if _, err := r.Acquire(ctx, tokens.Request{SessionID: "nope", ProviderName: "b"}); err == nil {
		t.Fatal("unknown session served")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}
