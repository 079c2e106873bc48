package azuresource

// RequiresScope tells tokenbroker that a provider using this Source must
// set BearerTokenScope: azidentity issues no token without one, and the
// mistake is caught when the session opens instead of failing every turn.
func (s *source) RequiresScope() bool { return true }
