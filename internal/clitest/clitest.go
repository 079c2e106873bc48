// Package clitest finds the real Copilot CLI for tests that run it.
//
// Path returns the binary from COPILOT_CLI_PATH, or from the cache folder
// `make cli` installs into (.cache/copilot-<Version>/ at the repository
// root). When neither has it, the test is skipped with a message saying how
// to get it, unless TOKENBROKER_REQUIRE_CLI=1 (set by `make test`, so in
// CI), where a missing CLI fails the test instead.
package clitest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Version is the CLI version the project is tested against.
const Version = "1.0.102"

// Environment variables read here.
const (
	EnvPath    = "COPILOT_CLI_PATH"
	EnvRequire = "TOKENBROKER_REQUIRE_CLI"
)

// Required reports whether a missing CLI must fail tests.
func Required() bool { return os.Getenv(EnvRequire) == "1" }

// Path returns the CLI to run, or skips (fails, when Required) t.
func Path(t testing.TB) string {
	t.Helper()
	p, err := Find()
	if err == nil {
		return p
	}
	if Required() {
		t.Fatalf("real Copilot CLI required (%s=1) but not found: %v", EnvRequire, err)
	}
	t.Skipf("skipping: real Copilot CLI not found (%v); run `make cli` or set %s to run this test", err, EnvPath)
	return ""
}

// Find locates the CLI without a test: COPILOT_CLI_PATH when set (it must
// then exist), else the repository's cache folder.
func Find() (string, error) {
	if p := os.Getenv(EnvPath); p != "" {
		if err := executable(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvPath, p, err)
		}
		return p, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", fmt.Errorf("%s unset and %w", EnvPath, err)
	}
	p := CachePath(root)
	if err := executable(p); err != nil {
		return "", fmt.Errorf("%s unset and no CLI in the cache: %w", EnvPath, err)
	}
	return p, nil
}

// CachePath is where `make cli` installs the binary under the repository
// root.
func CachePath(root string) string {
	return filepath.Join(root, ".cache", "copilot-"+Version, "node_modules", "@github", "copilot-"+platform(), "copilot")
}

// platform is the npm package suffix of the CLI's native build.
func platform() string {
	arch := runtime.GOARCH
	switch arch {
	case "amd64":
		arch = "x64"
	}
	osName := runtime.GOOS
	if osName == "windows" {
		osName = "win32"
	}
	return osName + "-" + arch
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

// repoRoot walks up from the working directory (a test's package
// directory) to the directory holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
