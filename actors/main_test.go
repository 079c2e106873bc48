package actors_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test must leave no goroutine behind once its broker is closed.
// protoactor-go's dead-letter throttle is the one exception: a message sent
// to an actor that has just stopped (which Close may cause) starts a
// goroutine that waits out the throttle period (1 s) and then ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
		goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.NewThrottle.func1"),
	)
}
