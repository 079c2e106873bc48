// Package testenv keeps tests that touch azidentity from reaching a real
// identity endpoint: it clears every environment variable azidentity reads
// to pick or configure a credential, for the duration of one test.
package testenv

import (
	"os"
	"strings"
	"testing"
)

// prefixes and names of the variables azidentity and MSAL read: the
// EnvironmentCredential and WorkloadIdentityCredential settings (AZURE_*),
// the managed-identity sources (App Service, Service Fabric, Cloud Shell,
// Azure ML, Arc) and the IMDS override.
var (
	prefixes = []string{"AZURE_", "IDENTITY_", "MSI_"}
	names    = []string{"IMDS_ENDPOINT", "DEFAULT_IDENTITY_CLIENT_ID"}
)

// ClearAzure unsets AZURE_*, IDENTITY_*, MSI_*, IMDS_ENDPOINT and
// DEFAULT_IDENTITY_CLIENT_ID until the end of t. Like t.Setenv, it cannot
// be used in parallel tests.
func ClearAzure(t testing.TB) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if matches(k) {
			unset(t, k)
		}
	}
	for _, k := range names {
		unset(t, k)
	}
}

func matches(k string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// unset removes k; t.Setenv first records its value for restoring.
func unset(t testing.TB, k string) {
	t.Setenv(k, "")
	os.Unsetenv(k)
}
