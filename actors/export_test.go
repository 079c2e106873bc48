package actors

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// Test hooks into the actor system, for this package's tests only.

// ProcessCount is the number of processes (actors, plus protoactor's own
// fixed ones such as the dead-letter process) registered in b's actor
// system.
func ProcessCount(b *Broker) int {
	n := 0
	for _, bucket := range b.system.ProcessRegistry.LocalPIDs.LocalPIDs {
		n += bucket.Count()
	}
	return n
}

// LiveProviders and OpenSessions are the broker's own counts of provider
// actors running and session actors started and not yet stopped.
func LiveProviders(b *Broker) int64 { return b.providersLive.Load() }
func OpenSessions(b *Broker) int64  { return b.sessionsOpen.Load() }

// The registry test lives here, beside the hooks it needs, so that it can
// read protoactor's process registry; the e2e leak tests check the same
// through the broker's gauges over real connections.

// After 100 k session open/close cycles on two connections, with token
// requests mixed in, protoactor's registry holds nothing but its fixed
// processes and the one shared credential; after Close, not even that, and
// no goroutine is left.
func TestRegistryEmptyAfterSessionCycles(t *testing.T) {
	// protoactor's dead-letter throttle ends by itself about a second
	// after a dead letter; its name depends on inlining.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(),
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewThrottle.func1"),
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"))
	b := NewBroker(Options{})
	fixed := ProcessCount(b)
	src := tokens.Static(tokens.Token{Value: "tok-cycles", ExpiresOn: time.Now().Add(time.Hour)})
	cred, err := b.NewCredential("shared", "", src)
	if err != nil {
		t.Fatal(err)
	}
	cycles := 100_000
	if testing.Short() {
		cycles = 10_000
	}
	var wg sync.WaitGroup
	for g := range 2 {
		r := b.NewRouter()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			for i := range cycles / 2 {
				id := fmt.Sprint("s", i)
				if err := r.Open(id, []Provider{{Name: "own", Source: src}, {Name: "mi", Source: cred}}); err != nil {
					t.Error(err)
					return
				}
				if i%100 == g {
					for _, p := range []string{"own", "mi"} {
						if _, err := r.Acquire(context.Background(), tokens.Request{SessionID: id, ProviderName: p}); err != nil {
							t.Error(err)
							return
						}
					}
				}
				if err := r.CloseSession(id); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Stop is asynchronous: the last sessions may still be stopping.
	deadline := time.Now().Add(10 * time.Second)
	for ProcessCount(b) != fixed+1 || OpenSessions(b) != 0 || LiveProviders(b) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("after %d cycles: %d processes (fixed %d + 1 credential), %d sessions, %d providers",
				cycles, ProcessCount(b), fixed, OpenSessions(b), LiveProviders(b))
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("%d session cycles: %d processes registered (protoactor's %d + the credential)", cycles, ProcessCount(b), fixed)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// No waiting here: Close returns only once everything has stopped.
	if n, s, p := ProcessCount(b), OpenSessions(b), LiveProviders(b); n != fixed || s != 0 || p != 0 {
		t.Fatalf("after Close: %d processes (fixed %d), %d sessions, %d providers", n, fixed, s, p)
	}
}
