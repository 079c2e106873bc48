package tokens

import (
	"math/rand/v2"
	"time"
)

// Policy decides when a cached token is refreshed, when it may no longer be
// served, and how long to wait after a failed refresh. Its methods are pure
// functions of their arguments, so they are tested without a clock.
type Policy struct {
	// Floor: a cached token with less validity left is never served; the
	// caller waits for a refresh instead.
	Floor time.Duration
	// HalfLifeFrom: tokens living at least this long refresh at half life.
	HalfLifeFrom time.Duration
	// MinLead: shorter-lived tokens refresh at expiry - min(max(MinLead, L/4), L/2).
	MinLead time.Duration
	// JitterFraction and MaxJitter bound the random amount by which the
	// refresh point moves earlier: min(JitterFraction*lead, MaxJitter).
	JitterFraction float64
	MaxJitter      time.Duration
	// After a failed call the credential is not called again for a
	// back-off window; requests meanwhile get the failure at once. The
	// window depends on what failed.
	//
	// A timeout (the call overran RefreshTimeout: a hung endpoint, and
	// every retry costs a turn a whole RefreshTimeout) waits at least
	// BackoffFloor, which covers a runtime's retries of one request (the
	// Copilot CLI sends 6 about 1 s apart), so they all get the failure at
	// once instead of each waiting out a new call. Above the floor, full
	// jitter over a span that starts at BackoffBase and doubles with each
	// consecutive failure, a timeout counting TimeoutFailures: see
	// TimeoutBackoff.
	//
	// Any other failure costs nothing to retry, so the window follows the
	// outage: between a quarter and a half of how long the credential has
	// been failing, at least BackoffBase/2 and at most BackoffMax (see
	// ErrorBackoff). A short outage ends for users at most half its length
	// after it ends at the endpoint; a long one costs about one call a
	// minute.
	//
	// A negative BackoffFloor means none; it is never more than BackoffMax.
	BackoffFloor    time.Duration
	BackoffBase     time.Duration
	BackoffMax      time.Duration
	TimeoutFailures int
	// RefreshTimeout bounds one call to the Source, whoever is waiting.
	RefreshTimeout time.Duration
}

// DefaultPolicy returns the defaults, taken from azcore's bearer-token
// policy, x/oauth2, MSAL and the AWS and Google credential caches.
func DefaultPolicy() Policy {
	return Policy{
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
}

// Normalize returns p with every unset (zero) field at its default. The
// zero Policy is therefore the default policy without jitter; set the
// jitter fields explicitly (DefaultPolicy does) to spread refreshes.
func (p Policy) Normalize() Policy {
	d := DefaultPolicy()
	if p.Floor <= 0 {
		p.Floor = d.Floor
	}
	if p.HalfLifeFrom <= 0 {
		p.HalfLifeFrom = d.HalfLifeFrom
	}
	if p.MinLead <= 0 {
		p.MinLead = d.MinLead
	}
	if p.JitterFraction < 0 {
		p.JitterFraction = 0
	}
	if p.MaxJitter < 0 {
		p.MaxJitter = 0
	}
	if p.BackoffBase <= 0 {
		p.BackoffBase = d.BackoffBase
	}
	if p.BackoffMax < p.BackoffBase {
		p.BackoffMax = max(d.BackoffMax, p.BackoffBase)
	}
	switch {
	case p.BackoffFloor < 0:
		p.BackoffFloor = 0
	case p.BackoffFloor == 0:
		p.BackoffFloor = d.BackoffFloor
	}
	p.BackoffFloor = min(p.BackoffFloor, p.BackoffMax)
	if p.TimeoutFailures <= 0 {
		p.TimeoutFailures = d.TimeoutFailures
	}
	if p.RefreshTimeout <= 0 {
		p.RefreshTimeout = d.RefreshTimeout
	}
	return p
}

// lead is how long before expiry a token obtained at obtained should be
// refreshed, before jitter. The issuer's RefreshOn hint wins when it lies
// inside the token's life.
func (p Policy) lead(t Token, obtained time.Time) time.Duration {
	life := t.ExpiresOn.Sub(obtained)
	if life <= 0 {
		return 0
	}
	if !t.RefreshOn.IsZero() && t.RefreshOn.After(obtained) && t.RefreshOn.Before(t.ExpiresOn) {
		return t.ExpiresOn.Sub(t.RefreshOn)
	}
	if life >= p.HalfLifeFrom {
		return life / 2
	}
	return min(max(p.MinLead, life/4), life/2)
}

// jitter is the amount the refresh point moves earlier for a draw r in
// [0, 1): up to min(JitterFraction*lead, MaxJitter).
func (p Policy) jitter(lead time.Duration, r float64) time.Duration {
	span := min(time.Duration(float64(lead)*p.JitterFraction), p.MaxJitter)
	if span <= 0 {
		return 0
	}
	return time.Duration(r * float64(span))
}

// RefreshAt is when a token obtained at obtained should start refreshing
// in the background, given a random draw r in [0, 1). Bare and already
// expired tokens refresh at once.
func (p Policy) RefreshAt(t Token, obtained time.Time, r float64) time.Time {
	if t.Bare() || !t.ExpiresOn.After(obtained) {
		return obtained
	}
	lead := p.lead(t, obtained)
	base := t.ExpiresOn.Add(-lead)
	if stale := p.StaleAt(t); base.After(stale) && stale.After(obtained) {
		// A hint inside the floor would leave callers between the floor
		// and the hint waiting for a refresh in the foreground.
		base = stale
	}
	if at := base.Add(-p.jitter(lead, r)); at.After(obtained) {
		return at
	}
	if base.After(obtained) {
		// Jitter would make the refresh immediate. An issuer with a cache
		// of its own (azidentity, most oauth2 sources) answers that with
		// this same token until its refresh point, and every request would
		// refresh again: wait for the unjittered point instead.
		return base
	}
	return obtained
}

// StaleAt is when t stops being servable from a cache: Floor before expiry.
func (p Policy) StaleAt(t Token) time.Time {
	if t.Bare() {
		return time.Time{}
	}
	return t.ExpiresOn.Add(-p.Floor)
}

// Servable reports whether a cached t may still be handed out at now.
func (p Policy) Servable(t Token, now time.Time) bool {
	return !t.Bare() && now.Before(p.StaleAt(t))
}

// TimeoutBackoff is the back-off window after a call that timed out, given
// the consecutive failures so far (a timeout counts TimeoutFailures), for
// a draw r in [0, 1): uniform in [BackoffFloor, BackoffFloor +
// min(BackoffBase*2^(failures-1), BackoffMax-BackoffFloor)].
func (p Policy) TimeoutBackoff(failures int, r float64) time.Duration {
	if failures < 1 {
		return 0
	}
	room := max(p.BackoffMax-p.BackoffFloor, 0)
	span := p.BackoffBase
	for i := 1; i < failures && span < room; i++ {
		span *= 2
	}
	span = min(span, room)
	return p.BackoffFloor + time.Duration(r*float64(span))
}

// ErrorBackoff is the back-off window after a call that failed without
// timing out, when the credential has been failing for failingFor (0 at
// the first failure), for a draw r in [0, 1): uniform in [d/2, d] where d
// is failingFor/2, at least BackoffBase and at most BackoffMax.
func (p Policy) ErrorBackoff(failingFor time.Duration, r float64) time.Duration {
	d := min(max(failingFor/2, p.BackoffBase), p.BackoffMax)
	return d/2 + time.Duration(r*float64(d/2))
}

// Clock is the time a provider runs on. Tests inject a fake one, or run in
// a testing/synctest bubble with SystemClock.
type Clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// SystemClock returns the real clock.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }
func (systemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// RandomDraw returns a uniform draw in [0, 1); the default random source.
func RandomDraw() float64 { return rand.Float64() }
