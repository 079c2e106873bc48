package main

import (
	"testing"
	"time"
)

// scriptedRun drives a ledger as one requester at 100 operations/s would
// be driven, over [0, end): operation k starts at its slot or, when the
// previous one ran late, as soon as that one ends; each takes 1 ms but
// operation stallAt, which takes 3 s. It returns the closed ledger's
// report and, for contrast, the histogram of latencies counted from each
// operation's actual start.
func scriptedRun(t *testing.T, stallAt uint64, end time.Duration) (ledgerReport, *hist) {
	t.Helper()
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	l := newLedger(t0, 100)
	fromStart := &hist{}
	free := t0 // when the requester is free again
	for k := uint64(0); ; k++ {
		started := l.due(k)
		if free.After(started) {
			started = free
		}
		if !started.Before(t0.Add(end)) {
			break
		}
		l.begin(k, started, "", "")
		took := time.Millisecond
		if k == stallAt {
			took = 3 * time.Second
		}
		free = started.Add(took)
		if free.After(t0.Add(end)) {
			break // still running at the end
		}
		if _, ok := l.end(k, free); !ok {
			t.Fatalf("operation %d: end not recorded", k)
		}
		fromStart.add(took)
	}
	return l.close(t0.Add(end)), fromStart
}

// TestLedgerStall: one operation stalls for 3 s at a 100/s target. The
// operations due meanwhile start late, and count from their slots, so p99
// shows the stall; counted from their actual starts, only the one stalled
// operation would.
func TestLedgerStall(t *testing.T) {
	r, fromStart := scriptedRun(t, 200, 10*time.Second)
	p99 := time.Duration(r.Latency.P99 * 1e3)
	t.Logf("latency %+v, late %d; p99 from the actual start %s", r.Latency, r.Late, fromStart.quantile(0.99))
	if p99 < 2*time.Second {
		t.Errorf("p99 %s, want at least 2 s", p99)
	}
	if fromStart.quantile(0.99) >= 2*time.Second {
		t.Errorf("counted from the actual start, p99 is %s: the script does not hide the stall as it should", fromStart.quantile(0.99))
	}
	// Operation 200 is due at 2 s and ends at 5 s. Operation 200+j (j >= 1)
	// is due at 2 s + j*10 ms and starts at 5 s + (j-1)*1 ms: more than
	// 10 ms late while 2.999 s > 0.009 s*j + 0.01 s, that is for j = 1..332.
	if r.Late != 332 || r.NeverStarted != 0 || r.Running != 0 {
		t.Errorf("late %d, never started %d, running %d; want 332, 0, 0", r.Late, r.NeverStarted, r.Running)
	}
	if r.Due != 1000 || r.Started != 1000 || r.Finished != 1000 || r.Latency.Count != 1000 || r.Latency.Unfinished != 0 {
		t.Errorf("due %d, started %d, finished %d, latency %+v; want 1000 each and none unfinished", r.Due, r.Started, r.Finished, r.Latency)
	}
}

// TestLedgerStallAtTheEnd: the run ends 2 s into the stall. The stalled
// operation is running, the 200 due after it never started; all of them
// count unfinished, at their age.
func TestLedgerStallAtTheEnd(t *testing.T) {
	r, _ := scriptedRun(t, 200, 4*time.Second)
	// Slots 0..399 are due before the end at 4 s; 201..399 (due at 2.01 s
	// to 3.99 s) never started.
	if r.Running != 1 || r.NeverStarted != 199 || r.Unfinished() != 200 || r.Due != 400 || r.Started != 201 || r.Finished != 200 {
		t.Errorf("running %d, never started %d, unfinished %d, due %d, started %d, finished %d: want 1, 199, 200, 400, 201, 200",
			r.Running, r.NeverStarted, r.Unfinished(), r.Due, r.Started, r.Finished)
	}
	if r.LateOrNever() != 199 {
		t.Errorf("late or never %d, want 199", r.LateOrNever())
	}
	if r.OldestS != 2 || r.Latency.Max != 2e6 {
		t.Errorf("oldest %gs, max %gµs: want the stalled operation's age, 2 s", r.OldestS, r.Latency.Max)
	}
	if r.Latency.Count != 400 || r.Latency.Unfinished != 200 || time.Duration(r.Latency.P99*1e3) < 1900*time.Millisecond {
		t.Errorf("latency %+v: want 400 samples, 200 unfinished, p99 near 2 s", r.Latency)
	}
	if len(r.unfinished) != 1 || r.unfinished[0].duration != 2*time.Second {
		t.Errorf("unfinished for the slowest list %+v", r.unfinished)
	}
}

// TestLedgerClosedLoop: without a rate, an operation is intended when it
// starts; nothing is late, and one stalled at the end counts at its age.
func TestLedgerClosedLoop(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	l := newLedger(t0, 0)
	for k := range uint64(99) {
		start := t0.Add(time.Duration(k) * 10 * time.Millisecond)
		if in := l.intended(k, start); !in.Equal(start) {
			t.Fatalf("intended %v, want its start", in)
		}
		if l.begin(k, start, "", "") {
			t.Fatal("late in the closed loop")
		}
		if d, _ := l.end(k, start.Add(time.Millisecond)); d != time.Millisecond {
			t.Fatalf("latency %s", d)
		}
	}
	l.begin(99, t0.Add(time.Second), "trace", "s1")
	if got := l.oldest(t0.Add(3 * time.Second)); got != 2*time.Second {
		t.Errorf("oldest at 3 s: %s, want 2 s", got)
	}
	r := l.close(t0.Add(4 * time.Second))
	if r.Late != 0 || r.Due != 0 || r.NeverStarted != 0 || r.Running != 1 || r.OldestS != 3 || r.Latency.Max != 3e6 || r.Latency.Count != 100 {
		t.Errorf("report %+v", r)
	}
	if _, ok := l.end(99, t0.Add(5*time.Second)); ok {
		t.Error("an end after close was recorded")
	}
}

// TestLedgerDueBefore: dueBefore agrees with due at the slots' edges.
func TestLedgerDueBefore(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	for _, rate := range []float64{3, 100, 400, 333.3, 12345} {
		l := newLedger(t0, rate)
		for k := uint64(0); k < 2000; k += 7 {
			at := l.due(k)
			if n := l.dueBefore(at); n != k {
				t.Errorf("rate %g: dueBefore(due(%d)) = %d", rate, k, n)
			}
			if n := l.dueBefore(at.Add(1)); n != k+1 {
				t.Errorf("rate %g: dueBefore(due(%d)+1ns) = %d", rate, k, n)
			}
		}
	}
	if n := newLedger(t0, 100).dueBefore(t0.Add(-time.Second)); n != 0 {
		t.Errorf("before the start: %d due", n)
	}
}
