package tokens_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/tokens"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func tok(life time.Duration) tokens.Token {
	return tokens.Token{Value: "v", ExpiresOn: t0.Add(life)}
}

func TestDefaultPolicyNumbers(t *testing.T) {
	p := tokens.DefaultPolicy()
	want := tokens.Policy{
		Floor:           60 * time.Second,
		HalfLifeFrom:    2 * time.Hour,
		MinLead:         5 * time.Minute,
		JitterFraction:  0.10,
		MaxJitter:       5 * time.Minute,
		BackoffFloor:    10 * time.Second,
		BackoffBase:     time.Second,
		BackoffMax:      60 * time.Second,
		TimeoutFailures: 3,
		RefreshTimeout:  30 * time.Second,
	}
	if p != want {
		t.Fatalf("DefaultPolicy() = %+v, want %+v", p, want)
	}
	if p.Normalize() != p {
		t.Fatalf("Normalize changed the default policy: %+v", p.Normalize())
	}
}

func TestLead(t *testing.T) {
	p := tokens.DefaultPolicy()
	cases := []struct {
		name string
		tok  tokens.Token
		want time.Duration
	}{
		// The issuer's hint wins when it lies inside the token's life.
		{"hint", tokens.Token{ExpiresOn: t0.Add(time.Hour), RefreshOn: t0.Add(10 * time.Minute)}, 50 * time.Minute},
		{"hint on long token", tokens.Token{ExpiresOn: t0.Add(24 * time.Hour), RefreshOn: t0.Add(20 * time.Hour)}, 4 * time.Hour},
		{"hint near expiry", tokens.Token{ExpiresOn: t0.Add(time.Hour), RefreshOn: t0.Add(59 * time.Minute)}, time.Minute},
		// A hint outside (obtained, expiry) is ignored.
		{"hint in the past", tokens.Token{ExpiresOn: t0.Add(time.Hour), RefreshOn: t0.Add(-time.Minute)}, 15 * time.Minute},
		{"hint at obtained", tokens.Token{ExpiresOn: t0.Add(time.Hour), RefreshOn: t0}, 15 * time.Minute},
		{"hint after expiry", tokens.Token{ExpiresOn: t0.Add(time.Hour), RefreshOn: t0.Add(2 * time.Hour)}, 15 * time.Minute},
		{"hint at expiry", tokens.Token{ExpiresOn: t0.Add(time.Hour), RefreshOn: t0.Add(time.Hour)}, 15 * time.Minute},
		// Two hours or more: half life.
		{"24h", tok(24 * time.Hour), 12 * time.Hour},
		{"2h exactly", tok(2 * time.Hour), time.Hour},
		{"3h", tok(3 * time.Hour), 90 * time.Minute},
		// Shorter: min(max(5 min, L/4), L/2).
		{"1h59m", tok(119 * time.Minute), 119 * time.Minute / 4},
		{"1h", tok(time.Hour), 15 * time.Minute},
		{"20m", tok(20 * time.Minute), 5 * time.Minute},
		{"15m", tok(15 * time.Minute), 5 * time.Minute},
		{"10m", tok(10 * time.Minute), 5 * time.Minute},
		{"6m", tok(6 * time.Minute), 3 * time.Minute},
		{"90s", tok(90 * time.Second), 45 * time.Second},
		{"1s", tok(time.Second), 500 * time.Millisecond},
		// Nothing to lead for a token already dead or bare.
		{"expired", tok(-time.Minute), 0},
		{"expires now", tok(0), 0},
		{"bare", tokens.Token{Value: "v"}, 0},
	}
	for _, c := range cases {
		if got := tokens.PolicyLead(p, c.tok, t0); got != c.want {
			t.Errorf("%s: Lead = %s, want %s", c.name, got, c.want)
		}
	}
}

func TestRefreshAtWithoutJitter(t *testing.T) {
	p := tokens.DefaultPolicy()
	cases := []struct {
		name string
		tok  tokens.Token
		want time.Time
	}{
		{"hint", tokens.Token{ExpiresOn: t0.Add(time.Hour), RefreshOn: t0.Add(40 * time.Minute)}, t0.Add(40 * time.Minute)},
		{"8h half life", tok(8 * time.Hour), t0.Add(4 * time.Hour)},
		{"2h half life", tok(2 * time.Hour), t0.Add(time.Hour)},
		{"1h", tok(time.Hour), t0.Add(45 * time.Minute)},
		{"30m", tok(30 * time.Minute), t0.Add(30*time.Minute - 7*time.Minute - 30*time.Second)},
		{"10m", tok(10 * time.Minute), t0.Add(5 * time.Minute)},
		{"4m", tok(4 * time.Minute), t0.Add(2 * time.Minute)},
		{"bare refreshes at once", tokens.Token{Value: "v"}, t0},
		{"expired refreshes at once", tok(-time.Second), t0},
	}
	for _, c := range cases {
		if got := p.RefreshAt(c.tok, t0, 0); !got.Equal(c.want) {
			t.Errorf("%s: RefreshAt = %s after t0, want %s after t0", c.name, got.Sub(t0), c.want.Sub(t0))
		}
	}
}

func TestJitterBounds(t *testing.T) {
	p := tokens.DefaultPolicy()
	cases := []struct {
		lead, span time.Duration
	}{
		{time.Hour, 5 * time.Minute},         // 10% = 6 min, capped at 5 min
		{50 * time.Minute, 5 * time.Minute},  // exactly 10%
		{15 * time.Minute, 90 * time.Second}, // 10%
		{5 * time.Minute, 30 * time.Second},  // 10%
		{12 * time.Hour, 5 * time.Minute},    // capped
		{45 * time.Second, 4500 * time.Millisecond},
		{0, 0},
	}
	for _, c := range cases {
		if got := tokens.PolicyJitter(p, c.lead, 0); got != 0 {
			t.Errorf("Jitter(%s, 0) = %s, want 0", c.lead, got)
		}
		if got := tokens.PolicyJitter(p, c.lead, 0.5); got != c.span/2 {
			t.Errorf("Jitter(%s, 0.5) = %s, want %s", c.lead, got, c.span/2)
		}
		// The draw is in [0, 1): the jitter stays strictly below the span.
		if got := tokens.PolicyJitter(p, c.lead, 0.9999999); got > c.span || (c.span > 0 && got < c.span*99/100) {
			t.Errorf("Jitter(%s, ~1) = %s, want just under %s", c.lead, got, c.span)
		}
	}

	noJitter := tokens.Policy{}.Normalize()
	if got := tokens.PolicyJitter(noJitter, time.Hour, 0.9); got != 0 {
		t.Errorf("zero JitterFraction: Jitter = %s, want 0", got)
	}
	negative := tokens.Policy{JitterFraction: -1, MaxJitter: -time.Second}.Normalize()
	if got := tokens.PolicyJitter(negative, time.Hour, 0.9); got != 0 {
		t.Errorf("negative jitter settings: Jitter = %s, want 0", got)
	}
}

// Jitter only ever moves the refresh point earlier, never past the bound,
// and never before the moment the token was obtained.
func TestRefreshAtJitterOnlyEarlier(t *testing.T) {
	p := tokens.DefaultPolicy()
	lifetimes := []time.Duration{
		30 * time.Second, 90 * time.Second, 5 * time.Minute, 10 * time.Minute, 59 * time.Minute,
		time.Hour, 119 * time.Minute, 2 * time.Hour, 24 * time.Hour, 90 * 24 * time.Hour,
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, life := range lifetimes {
		for _, hinted := range []bool{false, true} {
			tk := tok(life)
			if hinted {
				tk.RefreshOn = t0.Add(life * 3 / 5)
			}
			base := p.RefreshAt(tk, t0, 0)
			bound := min(time.Duration(0.10*float64(tokens.PolicyLead(p, tk, t0))), 5*time.Minute)
			for range 200 {
				r := rng.Float64()
				at := p.RefreshAt(tk, t0, r)
				if at.After(base) {
					t.Fatalf("life %s hinted %v r %.3f: jitter moved the point later (%s > %s)", life, hinted, r, at.Sub(t0), base.Sub(t0))
				}
				if base.Sub(at) > bound {
					t.Fatalf("life %s hinted %v r %.3f: jitter %s exceeds min(10%% of lead, 5 min) = %s", life, hinted, r, base.Sub(at), bound)
				}
				if at.Before(t0) || !at.Before(tk.ExpiresOn) {
					t.Fatalf("life %s hinted %v: refresh point %s outside the token's life", life, hinted, at.Sub(t0))
				}
			}
		}
	}
}

// 1,000 providers holding the same kind of token must not all refresh in
// the same second: the jittered points cover the whole jitter window, and
// roughly evenly.
func TestJitterSpreadsRefreshPoints(t *testing.T) {
	p := tokens.DefaultPolicy()
	tk := tok(time.Hour) // lead 15 min, jitter window 90 s
	base := p.RefreshAt(tk, t0, 0)
	window := 90 * time.Second
	rng := rand.New(rand.NewPCG(42, 7))
	const draws, buckets = 1000, 10
	var counts [buckets]int
	distinct := map[time.Time]bool{}
	seconds := map[int64]int{}
	lo, hi := base, base.Add(-window)
	for range draws {
		at := p.RefreshAt(tk, t0, rng.Float64())
		distinct[at] = true
		seconds[at.Unix()]++
		lo, hi = minTime(lo, at), maxTime(hi, at)
		earlier := base.Sub(at)
		counts[int(earlier*buckets/window)]++
	}
	if len(distinct) < draws*99/100 {
		t.Fatalf("only %d distinct refresh points in %d draws", len(distinct), draws)
	}
	for s, n := range seconds {
		// 90 one-second slots for 1,000 draws: about 11 each.
		if n > 40 {
			t.Fatalf("%d of %d refresh points fall in the same second (%s)", n, draws, time.Unix(s, 0).Sub(t0))
		}
	}
	if spread := lo.Sub(hi); spread > 0 {
		t.Fatalf("inverted range")
	}
	if got := base.Sub(lo); got < window*95/100 {
		t.Fatalf("earliest point only %s before the unjittered one, want close to %s", got, window)
	}
	if got := base.Sub(hi); got > window*5/100 {
		t.Fatalf("latest point %s before the unjittered one, want close to 0", got)
	}
	for i, n := range counts {
		// Uniform: 100 per bucket; with this fixed seed the draws are
		// deterministic, and 50..150 is far outside sampling noise.
		if n < 50 || n > 150 {
			t.Fatalf("bucket %d holds %d of %d points, want about %d (counts %v)", i, n, draws, draws/buckets, counts)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func TestFloor(t *testing.T) {
	p := tokens.DefaultPolicy()
	tk := tok(time.Hour)
	if got, want := p.StaleAt(tk), t0.Add(59*time.Minute); !got.Equal(want) {
		t.Fatalf("StaleAt = %s, want %s", got.Sub(t0), want.Sub(t0))
	}
	cases := []struct {
		at   time.Duration // after t0
		want bool
	}{
		{0, true},
		{58 * time.Minute, true},
		{59*time.Minute - time.Nanosecond, true},
		{59 * time.Minute, false}, // exactly 60 s left
		{59*time.Minute + 30*time.Second, false},
		{time.Hour, false},
		{2 * time.Hour, false},
	}
	for _, c := range cases {
		if got := p.Servable(tk, t0.Add(c.at)); got != c.want {
			t.Errorf("Servable at %s with %s left = %v, want %v", c.at, time.Hour-c.at, got, c.want)
		}
	}
	if p.Servable(tokens.Token{Value: "v"}, t0) {
		t.Error("a bare token is servable from a cache")
	}
	if !p.StaleAt(tokens.Token{Value: "v"}).IsZero() {
		t.Error("a bare token has a stale point")
	}
	// A token living less than the floor is never servable from a cache.
	if p.Servable(tok(59*time.Second), t0) {
		t.Error("a 59 s token is servable")
	}
	custom := tokens.Policy{Floor: 5 * time.Minute}.Normalize()
	if custom.Servable(tk, t0.Add(56*time.Minute)) {
		t.Error("custom 5 min floor ignored")
	}
}

// The window after n failures counting timeouts: never below the 10 s floor
// (a runtime's retries of one request all fall inside it), full jitter
// above it over a span doubling from 1 s, never above 60 s.
func TestTimeoutBackoffWindows(t *testing.T) {
	p := tokens.DefaultPolicy()
	spans := []time.Duration{0, 1, 2, 4, 8, 16, 32, 50, 50, 50} // seconds above the floor
	for failures := 1; failures < len(spans); failures++ {
		span := spans[failures] * time.Second
		if got := p.TimeoutBackoff(failures, 0); got != p.BackoffFloor {
			t.Errorf("TimeoutBackoff(%d, 0) = %s, want the floor %s", failures, got, p.BackoffFloor)
		}
		if got := p.TimeoutBackoff(failures, 0.5); got != p.BackoffFloor+span/2 {
			t.Errorf("TimeoutBackoff(%d, 0.5) = %s, want %s", failures, got, p.BackoffFloor+span/2)
		}
		if got := p.TimeoutBackoff(failures, 0.9999999); got > p.BackoffFloor+span || got < p.BackoffFloor+span*99/100 {
			t.Errorf("TimeoutBackoff(%d, ~1) = %s, want just under %s", failures, got, p.BackoffFloor+span)
		}
	}
	// No overflow for a very long outage, and never past the ceiling.
	for _, failures := range []int{63, 64, 1000, 1 << 30} {
		if got := p.TimeoutBackoff(failures, 0.9999999); got > p.BackoffMax || got < p.BackoffMax*99/100 {
			t.Errorf("TimeoutBackoff(%d, ~1) = %s, want just under %s", failures, got, p.BackoffMax)
		}
	}
	if got := p.TimeoutBackoff(-3, 0.5); got != 0 {
		t.Errorf("TimeoutBackoff(-3) = %s, want 0", got)
	}
	// A timeout starts where three errors would have left the window.
	if got, want := p.TimeoutBackoff(p.TimeoutFailures, 0.5), p.TimeoutBackoff(3, 0.5); got != want || p.TimeoutFailures < 1 {
		t.Errorf("after one timeout: %s, want %s", got, want)
	}
	// A negative floor is none: plain full jitter.
	none := tokens.Policy{BackoffFloor: -1}.Normalize()
	if got := none.TimeoutBackoff(1, 0); got != 0 {
		t.Errorf("no floor: Backoff(1, 0) = %s", got)
	}
	// A floor above the ceiling is the ceiling.
	small := tokens.Policy{BackoffBase: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond}.Normalize()
	if small.BackoffFloor != 100*time.Millisecond || small.TimeoutBackoff(7, 0.9) != 100*time.Millisecond {
		t.Errorf("floor %s, Backoff %s with a 100 ms ceiling", small.BackoffFloor, small.TimeoutBackoff(7, 0.9))
	}
}

func TestTimeoutBackoffFullJitterAboveFloor(t *testing.T) {
	p := tokens.DefaultPolicy()
	rng := rand.New(rand.NewPCG(3, 4))
	for failures := 1; failures <= 8; failures++ {
		span := min(time.Second<<(failures-1), p.BackoffMax-p.BackoffFloor)
		var below, above int
		for range 1000 {
			d := p.TimeoutBackoff(failures, rng.Float64())
			if d < p.BackoffFloor || d > p.BackoffFloor+span {
				t.Fatalf("TimeoutBackoff(%d) = %s outside [%s, %s]", failures, d, p.BackoffFloor, p.BackoffFloor+span)
			}
			if d < p.BackoffFloor+span/2 {
				below++
			} else {
				above++
			}
		}
		if below < 400 || above < 400 {
			t.Fatalf("failures %d: %d draws below the middle of the window, %d above: not uniform", failures, below, above)
		}
	}
}

// After a fast failure the window follows the outage: about 1 s at first,
// then between a quarter and a half of how long the credential has been
// failing, never more than 60 s.
func TestErrorBackoffWindows(t *testing.T) {
	p := tokens.DefaultPolicy()
	for _, c := range []struct {
		failingFor time.Duration
		d          time.Duration // the window is [d/2, d]
	}{
		{0, time.Second},
		{time.Second, time.Second},
		{2 * time.Second, time.Second},
		{3 * time.Second, 1500 * time.Millisecond},
		{10 * time.Second, 5 * time.Second},
		{100 * time.Second, 50 * time.Second},
		{10 * time.Minute, time.Minute},
		{1 << 62, time.Minute},
	} {
		if got := p.ErrorBackoff(c.failingFor, 0); got != c.d/2 {
			t.Errorf("ErrorBackoff(%s, 0) = %s, want %s", c.failingFor, got, c.d/2)
		}
		if got := p.ErrorBackoff(c.failingFor, 0.9999999); got > c.d || got < c.d*99/100 {
			t.Errorf("ErrorBackoff(%s, ~1) = %s, want just under %s", c.failingFor, got, c.d)
		}
	}
	// The floor is for timeouts only.
	if got := p.ErrorBackoff(0, 0.5); got >= p.BackoffFloor {
		t.Errorf("first fast failure waits %s, as long as a timeout's floor", got)
	}
}

// What the schedule costs, driven call by call with random draws: an
// outage from 1 s to 4 s, the credential asked every 500 ms, is over for
// its users by 6 s; a 10 min outage costs about one call a minute once it
// has lasted a few minutes.
func TestErrorBackoffFollowsTheOutage(t *testing.T) {
	p := tokens.DefaultPolicy()
	rng := rand.New(rand.NewPCG(5, 6))
	// run asks every 500 ms from start, failing before up; it returns when
	// the first success came and the calls made before up.
	run := func(start, up time.Duration) (served time.Duration, calls int) {
		var since time.Duration = -1
		var until time.Duration
		for at := start; ; at += 500 * time.Millisecond {
			if at < until {
				continue // inside the window: the failure is repeated, no call
			}
			if at >= up {
				return at, calls
			}
			calls++
			if since < 0 {
				since = at
			}
			until = at + p.ErrorBackoff(at-since, rng.Float64())
		}
	}
	for i := range 1000 {
		offset := time.Duration(i%50) * 10 * time.Millisecond // 50 tenants asking out of step
		if served, _ := run(time.Second+offset, 4*time.Second); served > 6*time.Second {
			t.Fatalf("tenant %d served again at %s after an outage from 1 s to 4 s, want by 6 s", i%50, served)
		}
	}
	_, calls := run(0, 10*time.Minute)
	if calls > 25 {
		t.Fatalf("%d calls during a 10 min outage, want about one a minute after the first minutes", calls)
	}
	_, longer := run(0, 20*time.Minute)
	t.Logf("%d calls in the first 10 min of an outage, %d in 20 min", calls, longer)
	if perMin := float64(longer-calls) / 10; perMin < 0.9 || perMin > 2.1 {
		t.Fatalf("%.1f calls a minute in the second 10 min of an outage, want about 1", perMin)
	}
}

func TestNormalize(t *testing.T) {
	d := tokens.DefaultPolicy()
	z := tokens.Policy{}.Normalize()
	if z.Floor != d.Floor || z.HalfLifeFrom != d.HalfLifeFrom || z.MinLead != d.MinLead ||
		z.BackoffFloor != d.BackoffFloor || z.BackoffBase != d.BackoffBase || z.BackoffMax != d.BackoffMax ||
		z.TimeoutFailures != d.TimeoutFailures || z.RefreshTimeout != d.RefreshTimeout {
		t.Fatalf("zero Policy normalized to %+v", z)
	}
	if z.JitterFraction != 0 || z.MaxJitter != 0 {
		t.Fatalf("zero Policy gained jitter: %+v", z)
	}
	// A base above the default max lifts the max with it.
	big := tokens.Policy{BackoffBase: 2 * time.Minute}.Normalize()
	if big.BackoffMax != 2*time.Minute {
		t.Fatalf("BackoffMax = %s with a 2 min base", big.BackoffMax)
	}
	if got := big.TimeoutBackoff(5, 0.5); got != 65*time.Second {
		t.Fatalf("TimeoutBackoff with 2 min base = %s, want 10s + 110s/2", got)
	}
	custom := tokens.Policy{HalfLifeFrom: time.Hour, MinLead: time.Minute}.Normalize()
	if got := tokens.PolicyLead(custom, tok(time.Hour), t0); got != 30*time.Minute {
		t.Fatalf("custom HalfLifeFrom: Lead = %s", got)
	}
	if got := tokens.PolicyLead(custom, tok(2*time.Minute), t0); got != time.Minute {
		t.Fatalf("custom MinLead: Lead = %s", got)
	}
}

// A token whose refresh point lies just ahead (typically a token a caching
// issuer handed out again, its refresh hint close) must not be refreshed
// at once because of jitter: the issuer would answer with the same token,
// again and again until its hint. The point is then the unjittered one.
func TestRefreshAtNeverImmediateWhileRefreshPointAhead(t *testing.T) {
	p := tokens.DefaultPolicy()
	hinted := tokens.Token{Value: "v", ExpiresOn: t0.Add(12 * time.Hour), RefreshOn: t0.Add(10 * time.Second)}
	for _, r := range []float64{0, 0.001, 0.5, 0.999} {
		at := p.RefreshAt(hinted, t0, r)
		if !at.After(t0) {
			t.Fatalf("r %.3f: refresh at once although the hint is 10 s ahead", r)
		}
		if r > 0.01 && !at.Equal(hinted.RefreshOn) {
			t.Fatalf("r %.3f: refresh at +%s, want the hint (+10s)", r, at.Sub(t0))
		}
	}
	// With room for it, jitter still applies.
	roomy := tokens.Token{Value: "v", ExpiresOn: t0.Add(12 * time.Hour), RefreshOn: t0.Add(time.Hour)}
	if at := p.RefreshAt(roomy, t0, 0.5); !at.Equal(t0.Add(time.Hour - 150*time.Second)) {
		t.Fatalf("roomy hint: refresh at +%s, want +57m30s", at.Sub(t0))
	}
}

// An issuer hint later than the floor would make callers between the floor
// and the hint wait; the refresh point moves back to the floor.
func TestRefreshAtHintInsideFloor(t *testing.T) {
	p := tokens.DefaultPolicy()
	obtained := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tok := tokens.Token{Value: "x", ExpiresOn: obtained.Add(time.Hour), RefreshOn: obtained.Add(time.Hour - 30*time.Second)}
	for _, r := range []float64{0, 0.5, 0.999} {
		at := p.RefreshAt(tok, obtained, r)
		if at.After(p.StaleAt(tok)) || !at.After(obtained) {
			t.Fatalf("r=%v: refresh at %s, stale at %s", r, at.Sub(obtained), p.StaleAt(tok).Sub(obtained))
		}
	}
}
