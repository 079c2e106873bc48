package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// Outage kinds: what the credential does during the window.
const (
	outageHang  = "hang"  // never answers: the call ends only when the broker gives up on it
	outage500   = "500"   // fails as an identity endpoint answering HTTP 500 would
	outageError = "error" // fails at once
	outageSlow  = "slow"  // answers, -outage-delay late
)

var outageKinds = []string{outageHang, outage500, outageError, outageSlow}

// outage is a window of the run during which every credential call fails,
// hangs or is slow. The zero value (length 0) never applies.
type outage struct {
	At     time.Duration `json:"at"`     // from the start of the run
	Length time.Duration `json:"length"` // 0: no outage
	Kind   string        `json:"kind"`
	Delay  time.Duration `json:"delay,omitempty"` // for slow
	// Invalidate drops every cached token when the window opens, as when
	// the provider starts rejecting them, so that the broker has to call
	// the credential during the outage: a token cached for an hour
	// otherwise rides out any short outage unnoticed.
	Invalidate bool `json:"invalidate"`

	origin atomic.Int64 // the run's start, Unix nanoseconds
}

// errOutage is what a failing call returns during the window.
var errOutage = errors.New("tokenload: injected outage")

// parseOutage parses LENGTH@AT, e.g. 5s@10s.
func parseOutage(s string) (length, at time.Duration, err error) {
	l, a, ok := strings.Cut(s, "@")
	if !ok {
		return 0, 0, fmt.Errorf("%q: want LENGTH@START, e.g. 5s@10s", s)
	}
	if length, err = time.ParseDuration(l); err == nil {
		at, err = time.ParseDuration(a)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("%q: %v", s, err)
	}
	if length <= 0 || at < 0 {
		return 0, 0, fmt.Errorf("%q: the length must be positive and the start not negative", s)
	}
	return length, at, nil
}

// begin fixes the run's start, which the window is relative to.
func (o *outage) begin(start time.Time) { o.origin.Store(start.UnixNano()) }

// active reports whether now falls in the window.
func (o *outage) active(now time.Time) bool {
	origin := o.origin.Load()
	if o.Length == 0 || origin == 0 {
		return false
	}
	since := time.Duration(now.UnixNano() - origin)
	return since >= o.At && since < o.At+o.Length
}

// apply runs at the start of a credential call: during the window it
// fails, waits out ctx, or delays the call.
func (o *outage) apply(ctx context.Context) error {
	if !o.active(time.Now()) {
		return nil
	}
	switch o.Kind {
	case outageError:
		return errOutage
	case outage500:
		return fmt.Errorf("%w: identity endpoint answered 500 Internal Server Error", errOutage)
	case outageHang:
		<-ctx.Done()
		return fmt.Errorf("%w: credential hung until %w", errOutage, context.Cause(ctx))
	case outageSlow:
		t := time.NewTimer(o.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// window is the outage as the charts shade it, in seconds; nil without one.
func (o *outage) window() []float64 {
	if o.Length == 0 {
		return nil
	}
	return []float64{o.At.Seconds(), (o.At + o.Length).Seconds()}
}
