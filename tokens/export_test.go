package tokens

import "time"

// Hooks into the policy's parts, for this package's tests only.

func PolicyLead(p Policy, t Token, obtained time.Time) time.Duration { return p.lead(t, obtained) }
func PolicyJitter(p Policy, lead time.Duration, r float64) time.Duration {
	return p.jitter(lead, r)
}
