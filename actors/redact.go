package actors

import (
	"regexp"
	"strings"
)

// Credential errors reach the runtime, which shows them to users. A Source
// should never put a secret in an error, but if one does, the shapes that
// are most likely secrets are cut out here: JWTs and bearer credentials.
var secretShapes = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}`)

func redact(s string) string {
	return secretShapes.ReplaceAllString(s, "[redacted]")
}

// trimPrefix drops a "pkg: " prefix from a sentinel's message.
func trimPrefix(s string) string {
	if i := strings.Index(s, ": "); i >= 0 && !strings.Contains(s[:i], " ") {
		return s[i+2:]
	}
	return s
}
