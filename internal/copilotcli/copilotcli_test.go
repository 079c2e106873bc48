package copilotcli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindCache(t *testing.T) {
	t.Setenv(EnvPath, "")
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(root, "pkg", "deep")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(sub)
	if _, err := Find(); err == nil || !strings.Contains(err.Error(), "cache") {
		t.Fatalf("empty cache: err = %v", err)
	}
	exe := CachePath(root)
	if err := os.MkdirAll(filepath.Dir(exe), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := Find()
	if err != nil || got != exe {
		t.Fatalf("Find = %q, %v; want %q", got, err, exe)
	}
	if !strings.Contains(exe, filepath.Join(".cache", "copilot-"+Version, "node_modules", "@github")) {
		t.Errorf("cache path %s", exe)
	}
}
