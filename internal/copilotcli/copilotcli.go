// Package copilotcli locates the Copilot CLI binary the project is tested
// against: COPILOT_CLI_PATH when set, else the folder `make cli` installs
// into (.cache/copilot-<Version>/ at the repository root). Programs use it;
// tests use internal/clitest, which skips or fails on top of it.
package copilotcli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

// Version is the CLI version the project is tested against.
const Version = "1.0.102"

// EnvPath names the binary explicitly.
const EnvPath = "COPILOT_CLI_PATH"

// Find locates the CLI: COPILOT_CLI_PATH when set (it must
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
