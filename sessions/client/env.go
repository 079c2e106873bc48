package client

import (
	"os"
	"strings"
)

// RuntimeEnv lists the variables a runtime started by Start inherits from
// this process: what a program needs to run (PATH, user, locale, time zone,
// temporary directory, terminal), to reach a model endpoint (TLS CA and
// proxy settings) and to find the CLI's shared package cache. Everything
// else, credentials of every cloud and CI included, stays in this process.
// A name ending in "*" is a prefix.
func RuntimeEnv() []string {
	return []string{
		"PATH", "USER", "LOGNAME", "SHELL",
		"LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TERM",
		"SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS",
		"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
		"XDG_CACHE_HOME",
		// Windows needs these to start a process at all.
		"SYSTEMROOT", "SystemRoot", "COMSPEC", "ComSpec", "PATHEXT", "TEMP", "TMP", "WINDIR", "windir",
	}
}

// runtimeEnv builds the runtime's environment from the parent's env: the
// allowlist and opts.InheritEnv, then HOME and COPILOT_HOME set to home,
// the parent's cache directory when it did not name one, and opts.Env last
// (it wins).
func runtimeEnv(env []string, home string, opts Options) []string {
	allowed := append(RuntimeEnv(), opts.InheritEnv...)
	all := false
	for _, name := range opts.InheritEnv {
		all = all || name == "*"
	}
	out := make([]string, 0, len(allowed)+len(opts.Env)+4)
	kept := map[string]bool{}
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		if name == "COPILOT_HOME" || value == "" || !(all || matches(allowed, name)) {
			continue
		}
		out = append(out, kv)
		kept[name] = true
	}
	if !kept["HOME"] {
		out = append(out, "HOME="+home)
	}
	// The CLI unpacks its ~235 MB package into the user cache directory on
	// first start; a private HOME must not make every start do it again.
	if !kept["XDG_CACHE_HOME"] {
		if cache, err := os.UserCacheDir(); err == nil {
			out = append(out, "XDG_CACHE_HOME="+cache)
		}
	}
	out = append(out, "COPILOT_HOME="+home)
	return append(out, opts.Env...)
}

// matches reports whether name is in names, where "X*" stands for every
// name starting with X.
func matches(names []string, name string) bool {
	for _, n := range names {
		if prefix, ok := strings.CutSuffix(n, "*"); ok && prefix != "" && strings.HasPrefix(name, prefix) || n == name {
			return true
		}
	}
	return false
}
