// Package clitest finds the real Copilot CLI for tests that run it.
//
// Path returns the binary from COPILOT_CLI_PATH, or from the cache folder
// `make cli` installs into (.cache/copilot-<Version>/ at the repository
// root). When neither has it, the test is skipped with a message saying how
// to get it, unless TOKENBROKER_REQUIRE_CLI=1 (set by `make test`, so in
// CI), where a missing CLI fails the test instead.
package clitest

import (
	"os"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/copilotcli"
)

// EnvRequire makes a missing CLI fail tests instead of skipping them.
const EnvRequire = "TOKENBROKER_REQUIRE_CLI"

// Required reports whether a missing CLI must fail tests.
func Required() bool { return os.Getenv(EnvRequire) == "1" }

// Path returns the CLI to run, or skips (fails, when Required) t.
func Path(t testing.TB) string {
	t.Helper()
	p, err := copilotcli.Find()
	if err == nil {
		return p
	}
	if Required() {
		t.Fatalf("real Copilot CLI required (%s=1) but not found: %v", EnvRequire, err)
	}
	t.Skipf("skipping: real Copilot CLI not found (%v); run `make cli` or set %s to run this test", err, copilotcli.EnvPath)
	return ""
}
