package actors

import (
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tracing"
)

// Outcome says how a token request was served.
type Outcome uint8

const (
	OutcomeError     Outcome = iota
	OutcomeHit               // served from the cache
	OutcomeCoalesced         // joined a refresh another request started
	OutcomeRefreshed         // started the refresh that served it
	OutcomeBare              // a single-use token fetched for this request
)

// String is the value recorded as tracing.Outcome.
func (o Outcome) String() string {
	switch o {
	case OutcomeHit:
		return tracing.OutcomeHit
	case OutcomeCoalesced:
		return tracing.OutcomeCoalesced
	case OutcomeRefreshed:
		return tracing.OutcomeRefreshed
	case OutcomeBare:
		return tracing.OutcomeBare
	}
	return tracing.OutcomeError
}

// reason says why a credential was called: the refresh span attribute
// tracing.RefreshReason and the refreshes metric carry it.
type reason uint8

const (
	reasonCold        reason = iota // nothing cached yet
	reasonProactive                 // past the refresh point, token still valid
	reasonExpired                   // cached token past the floor
	reasonInvalidated               // cache dropped by Invalidate
	reasonRetry                     // background retry after a failure
	reasonBare                      // single-use token
	reasonRejected                  // cache dropped because the model provider rejected the token
)

func (r reason) String() string {
	return [...]string{"cold", "proactive", "expired", "invalidated", "retry", "bare", "rejected"}[r]
}

// Grant is a served token and how it was served.
type Grant struct {
	Token   tokens.Token
	Outcome Outcome
	gen     uint64 // which of its provider's tokens: see Router.Rejected; 0 for a bare one
}
