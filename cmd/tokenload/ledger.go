package main

import (
	"math"
	"slices"
	"time"
)

// lateAfter is how far past its slot in the schedule an operation may
// start and still count as on time: timers fire up to a millisecond late
// (the poller's resolution), more on a busy machine, and a stall is
// longer than this.
const lateAfter = 10 * time.Millisecond

// ledger keeps the books of one kind of operation so that no stall can
// leave the latencies: each operation's latency counts from its intended
// start, and the operations unfinished when the run ends enter the
// percentiles at their age.
//
// With a rate (the open loop), operation k is intended at start + k/rate
// whether or not a requester is free to start it then: one that starts
// more than lateAfter past that is late, and one never started by the end
// of the run is unfinished at the age its slot has then. Without a rate
// (the closed loop) an operation is intended when it starts, and a stalled
// requester simply starts nothing: only the age of the oldest operation
// in flight shows the stall.
//
// Times are passed in, so a ledger runs a scripted schedule as well as a
// real one. It is not safe for concurrent use (the collector locks it).
type ledger struct {
	schedule

	open    map[uint64]openOp // started, not finished
	latency hist              // finished: end - intended
	started uint64
	late    uint64 // started more than lateAfter past their slot
	closed  bool
}

// openOp is an operation in flight.
type openOp struct {
	intended time.Time
	traceID  string // of the operation's span, when traced
	what     string // for the slowest list
}

func newLedger(start time.Time, rate float64) *ledger {
	return &ledger{schedule: schedule{start: start, rate: rate}, open: map[uint64]openOp{}}
}

// schedule is the open loop's timetable: slot k is due at start + k/rate.
// A zero rate is the closed loop, which has none.
type schedule struct {
	start time.Time
	rate  float64 // operations per second
}

// due is when slot k is intended to start.
func (s schedule) due(k uint64) time.Time {
	return s.start.Add(time.Duration(float64(k) / s.rate * float64(time.Second)))
}

// dueBefore is how many slots are due before t (slots 0..n-1): a run
// that ends at t had them to start.
func (s schedule) dueBefore(t time.Time) uint64 {
	if s.rate <= 0 || !t.After(s.start) {
		return 0
	}
	// The float estimate, then corrected against due itself, so that the
	// count agrees exactly with the times handed out.
	n := uint64(math.Ceil(t.Sub(s.start).Seconds() * s.rate))
	for n > 0 && !s.due(n-1).Before(t) {
		n--
	}
	for s.due(n).Before(t) {
		n++
	}
	return n
}

// intended is when operation id, started at started, was meant to start:
// the due time of slot id in the open loop, started in the closed loop
// (where id only has to be unique).
func (s schedule) intended(id uint64, started time.Time) time.Time {
	if s.rate > 0 {
		return s.due(id)
	}
	return started
}

// begin records that operation id started at started, and reports whether
// that was late: more than lateAfter past its intended start.
func (l *ledger) begin(id uint64, started time.Time, traceID, what string) (late bool) {
	if l.closed {
		return false
	}
	intended := l.intended(id, started)
	late = started.Sub(intended) > lateAfter
	l.started++
	if late {
		l.late++
	}
	l.open[id] = openOp{intended: intended, traceID: traceID, what: what}
	return late
}

// end records that operation id finished at at, and returns its latency
// from its intended start; ok is false when the ledger has closed (the
// operation was counted unfinished) or never saw it begin.
func (l *ledger) end(id uint64, at time.Time) (latency time.Duration, ok bool) {
	op, found := l.open[id]
	if !found || l.closed {
		return 0, false
	}
	delete(l.open, id)
	latency = at.Sub(op.intended)
	l.latency.add(latency)
	return latency, true
}

// inFlight is how many operations have started and not finished.
func (l *ledger) inFlight() int { return len(l.open) }

// oldest is the age at now of the oldest unfinished operation: in flight,
// or (open loop) due and not started. Zero when there is none.
func (l *ledger) oldest(now time.Time) time.Duration {
	var age time.Duration
	for _, op := range l.open {
		age = max(age, now.Sub(op.intended))
	}
	if l.rate > 0 && l.dueBefore(now) > l.started {
		// Slots start in order (the dispatcher hands them out so), so the
		// first one not started is the oldest waiting.
		age = max(age, now.Sub(l.due(l.started)))
	}
	return age
}

// ledgerReport is what a closed ledger says about the run.
type ledgerReport struct {
	Rate         float64        `json:"target_per_s,omitempty"` // 0: closed loop
	Due          uint64         `json:"due,omitempty"`          // open loop: slots due before the end
	Started      uint64         `json:"started"`
	Late         uint64         `json:"late,omitempty"` // started late, not counting those never started
	NeverStarted uint64         `json:"never_started,omitempty"`
	Finished     uint64         `json:"finished"`
	Running      uint64         `json:"running_at_end"`
	OldestS      float64        `json:"oldest_unfinished_s"` // age of the oldest unfinished at the end
	Latency      latencySummary `json:"latency"`             // finished and unfinished (at their age)

	// unfinished are the operations in flight at the end, oldest first,
	// with their age, for the slowest list.
	unfinished []slow
	hist       hist // finished and unfinished, for the histogram
}

// Unfinished is every operation the run did not finish: running at the
// end, or never started.
func (r ledgerReport) Unfinished() uint64 { return r.Running + r.NeverStarted }

// LateOrNever is every operation not started on time.
func (r ledgerReport) LateOrNever() uint64 { return r.Late + r.NeverStarted }

// close ends the books at end: the operations in flight and (open loop)
// those due but never started enter the latencies at their age. Later
// begin and end calls are ignored.
func (l *ledger) close(end time.Time) ledgerReport {
	l.closed = true
	r := ledgerReport{Rate: l.rate, Started: l.started, Late: l.late, Finished: l.latency.n, Running: uint64(len(l.open))}
	h := l.latency
	var oldest time.Duration
	for _, op := range l.open {
		age := end.Sub(op.intended)
		h.add(age)
		oldest = max(oldest, age)
		r.unfinished = append(r.unfinished, slow{US: us(age), duration: age, TraceID: op.traceID, What: op.what + " unfinished", AtS: end.Sub(l.start).Seconds()})
	}
	slices.SortFunc(r.unfinished, func(a, b slow) int { return int(b.duration - a.duration) })
	if l.rate > 0 {
		r.Due = l.dueBefore(end)
		if r.Due > l.started {
			r.NeverStarted = r.Due - l.started
			// Slots started..Due-1 (see oldest): each at its own age.
			for k := l.started; k < r.Due; k++ {
				h.add(end.Sub(l.due(k)))
			}
			oldest = max(oldest, end.Sub(l.due(l.started)))
		}
	}
	r.OldestS = oldest.Seconds()
	r.hist = h
	r.Latency = h.summary()
	r.Latency.Unfinished = r.Unfinished()
	return r
}
