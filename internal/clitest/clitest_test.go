package clitest

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/copilotcli"
)

// fakeT records how Path ended the test.
type fakeT struct {
	testing.TB
	skipped, failed string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Skipf(format string, args ...any) {
	f.skipped = format
	runtime.Goexit()
}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed = format
	runtime.Goexit()
}

func run(t *testing.T) (*fakeT, string) {
	f := &fakeT{TB: t}
	var got string
	done := make(chan struct{})
	go func() {
		defer close(done)
		got = Path(f)
	}()
	<-done
	return f, got
}

func TestPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "copilot")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	t.Setenv(EnvRequire, "")
	t.Setenv(copilotcli.EnvPath, exe)
	if f, got := run(t); got != exe || f.skipped != "" || f.failed != "" {
		t.Fatalf("COPILOT_CLI_PATH set: got %q, skipped %q, failed %q", got, f.skipped, f.failed)
	}

	for _, bad := range []string{filepath.Join(dir, "missing"), plain, dir} {
		t.Setenv(copilotcli.EnvPath, bad)
		t.Setenv(EnvRequire, "")
		if f, _ := run(t); f.skipped == "" || f.failed != "" {
			t.Errorf("%s: not skipped (failed %q)", bad, f.failed)
		}
		t.Setenv(EnvRequire, "1")
		if f, _ := run(t); f.failed == "" || f.skipped != "" {
			t.Errorf("%s with %s=1: not failed (skipped %q)", bad, EnvRequire, f.skipped)
		}
	}
}
