package tokens

import (
	"regexp"
	"strings"
)

// Redacted replaces whatever Scrub cuts out.
const Redacted = "[redacted]"

// minScrubLength is the shortest known value Scrub cuts out: a shorter one
// would match ordinary words, and is no credential anyway.
const minScrubLength = 6

// secretShapes are the forms a secret most often takes inside an error
// message: a JWT; a bearer credential; and the value of a token-like key
// written as key=value, key: value or "key": "value" (an identity
// endpoint's error body, a form-encoded request echoed back, a header
// dump).
var secretShapes = regexp.MustCompile(
	`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*` +
		`|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}` +
		`|(?i)("?\b(?:access_token|refresh_token|id_token|client_secret|client_assertion|assertion|password|api[_-]?key|x-identity-header|secret|token)"?\s*[:=]\s*"?)([^"\s&,;}]+)`)

// Scrub returns s with secrets cut out, for every error text, log attribute
// and span status that may carry a credential's own words: each of the
// known values (the tokens a provider served recently, so a Source that
// quotes the token it is asked to replace does not leak it), JWT shapes,
// "Bearer …" credentials, and the values of token-like keys (access_token,
// refresh_token, client_secret, assertion, …) in key=value, key: value and
// JSON forms. Known values shorter than 6 bytes are ignored: cutting them
// would garble ordinary words.
//
// It is the one redaction rule of tokenbroker: the actors, azuresource and
// oauth2source all use it. Correlate tokens with Fingerprint instead.
func Scrub(s string, known ...string) string {
	for _, k := range known {
		if len(k) >= minScrubLength && strings.Contains(s, k) {
			s = strings.ReplaceAll(s, k, Redacted)
		}
	}
	return secretShapes.ReplaceAllStringFunc(s, func(m string) string {
		sub := secretShapes.FindStringSubmatch(m)
		if sub[1] != "" { // key and separator kept, value cut
			if sub[2] == Redacted {
				return m
			}
			return sub[1] + Redacted
		}
		return Redacted
	})
}
