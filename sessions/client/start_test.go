package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/syncbuf"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
)

// envFakeRuntime makes the test binary a fake runtime (see fakeRuntime).
const envFakeRuntime = "TOKENBROKER_FAKE_RUNTIME"

// fakeRuntime is the test binary run as a runtime. mode is a comma list:
// "child" first starts a sleep that inherits stdout and stderr, and says its
// pid on stderr; then "exit" exits 3 after a few lines on stderr, "garbage"
// writes what is no JSON-RPC (and exits 2 with "exit"), "silent" never
// answers, and "serve" answers like the script runtime until stdin closes,
// or forever with "stubborn".
func fakeRuntime(mode string) int {
	has := func(flag string) bool { return slices.Contains(strings.Split(mode, ","), flag) }
	if has("child") {
		child := exec.Command("sleep", "60")
		child.Stdout, child.Stderr = os.Stdout, os.Stderr
		if err := child.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "child pid %d\n", child.Process.Pid)
	}
	for i := range 12 {
		fmt.Fprintf(os.Stderr, "fake runtime line %d\n", i)
	}
	switch {
	case has("garbage"):
		fmt.Println("this is not JSON-RPC")
		if has("exit") {
			return 2
		}
	case has("exit"):
		fmt.Fprintln(os.Stderr, "fatal: unknown flag --bogus")
		return 3
	case has("serve"):
		s := &script{send: func(ctx context.Context, jc *jsonrpc2.Conn, session, msgID string) {
			go func() { // after the answer to send: the turn is under way
				time.Sleep(50 * time.Millisecond)
				event(ctx, jc, session, "user.message", map[string]any{"messageId": msgID})
			}()
		}}
		jc := jsonrpc2.NewConn(context.Background(), jsonrpc2.NewBufferedStream(stdio{}, jsonrpc2.VSCodeObjectCodec{}),
			jsonrpc2.AsyncHandler(jsonrpc2.HandlerWithError(s.handle)))
		<-jc.DisconnectNotify()
		if !has("stubborn") {
			return 0
		}
	}
	time.Sleep(time.Hour) // "silent", or "stubborn" after stdin closed
	return 0
}

// stdio is this process's stdin and stdout as one connection.
type stdio struct{}

func (stdio) Read(b []byte) (int, error)  { return os.Stdin.Read(b) }
func (stdio) Write(b []byte) (int, error) { return os.Stdout.Write(b) }
func (stdio) Close() error                { return nil }

// startFake starts the fake runtime in mode with opts, within ctx.
func startFake(ctx context.Context, t *testing.T, mode string, opts client.Options) (*client.Client, *syncbuf.Buffer, error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b := actors.NewBroker(actors.Options{})
	t.Cleanup(func() { _ = b.Close() })
	stderr := &syncbuf.Buffer{}
	opts.CLIPath, opts.Args, opts.Stderr = exe, []string{}, stderr
	opts.Env = append(opts.Env, envFakeRuntime+"="+mode)
	c, err := client.Start(ctx, b, opts)
	return c, stderr, err
}

// childPid is the pid the fake runtime's child announced, 0 if none.
func childPid(stderr string) int {
	_, rest, ok := strings.Cut(stderr, "child pid ")
	if !ok {
		return 0
	}
	pid, _ := strconv.Atoi(strings.Fields(rest)[0])
	return pid
}

// gone waits until pid is neither running nor a zombie.
func gone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	t.Errorf("process %d (the runtime's child) still runs", pid)
}

// Start fails within its bounds, with an error that says what happened:
// the binary, how it ended, its last stderr lines; never a pipe error.
func TestStartFailures(t *testing.T) {
	for _, tc := range []struct {
		mode    string
		timeout time.Duration
		want    []string // in the error
		is      error
	}{
		{mode: "exit", want: []string{"exited (exit status 3)", "fatal: unknown flag --bogus", "fake runtime line 11"}, is: client.ErrExited},
		{mode: "garbage,exit", want: []string{"exited (exit status 2)", "fake runtime line 11"}, is: client.ErrExited},
		{mode: "garbage", want: []string{"connection ended before connect was answered", "fake runtime line 11"}},
		// The deadline leaves a busy machine time to start the fake runtime
		// and let it write its stderr.
		{mode: "silent", timeout: 2 * time.Second, want: []string{"no answer to connect", "fake runtime line 11"}, is: context.DeadlineExceeded},
		{mode: "child,exit", want: []string{"exited (exit status 3)", "fatal: unknown flag"}, is: client.ErrExited},
		{mode: "child,silent", timeout: 2 * time.Second, want: []string{"no answer to connect"}, is: context.DeadlineExceeded},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			timeout := tc.timeout
			if timeout == 0 {
				timeout = 20 * time.Second // the failure, not the deadline, must end these
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			began := time.Now()
			c, stderr, err := startFake(ctx, t, tc.mode, client.Options{})
			took := time.Since(began)
			if err == nil {
				c.Close()
				t.Fatal("Start succeeded")
			}
			t.Logf("after %v: %v", took.Round(time.Millisecond), err)
			exe, _ := os.Executable()
			if !strings.Contains(err.Error(), exe) {
				t.Errorf("error does not name the binary")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q", w)
				}
			}
			for _, bad := range []string{"broken pipe", "runtime client closed", "file already closed"} {
				if strings.Contains(err.Error(), bad) {
					t.Errorf("error shows %q", bad)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error is not %v", tc.is)
			}
			// Bounded by the ctx (plus slack) or by the exit, not by a
			// child holding the pipes (it sleeps 60 s).
			if limit := min(timeout, 5*time.Second) + 3*time.Second; took > limit {
				t.Errorf("Start took %v, want under %v", took, limit)
			}
			if pid := childPid(stderr.String()); pid != 0 {
				gone(t, pid)
			}
		})
	}
}

// A runtime that ignores its closed stdin, with a child holding its stdio:
// Close returns within StopGrace (plus slack) and leaves no process.
func TestCloseStubbornRuntime(t *testing.T) {
	const grace = 300 * time.Millisecond
	c, stderr, err := startFake(ctxT(t), t, "child,serve,stubborn", client.Options{StopGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	pid := c.Pid()
	began := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	t.Logf("Close took %v", took)
	if took < grace || took > grace+3*time.Second {
		t.Errorf("Close took %v, want about %v", took, grace)
	}
	gone(t, pid)
	gone(t, childPid(stderr.String()))
}

// kill -9 of the runtime mid-turn, with a child still holding its stdout:
// the turn fails at once, saying how the runtime ended.
func TestRuntimeKilledMidTurn(t *testing.T) {
	ctx := ctxT(t)
	c, stderr, err := startFake(ctx, t, "child,serve", client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	result := make(chan error, 1)
	go func() {
		_, err := sess.SendAndWait(ctx, "hi")
		result <- err
	}()
	for ev := range sess.Events() {
		if ev.Type == "user.message" {
			break // the turn is under way
		}
	}
	if err := syscall.Kill(c.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	select {
	case err := <-result:
		took := time.Since(killed)
		t.Logf("SendAndWait returned %v after the kill: %v", took.Round(time.Millisecond), err)
		if !errors.Is(err, client.ErrClosed) || !errors.Is(err, client.ErrExited) || !strings.Contains(err.Error(), "signal: killed") {
			t.Errorf("err = %v, want ErrClosed naming the signal", err)
		}
		// The child holding stdout lives an hour: anything near the
		// drain window (250 ms) proves it did not matter; the slack is for
		// a busy machine.
		if took > 5*time.Second {
			t.Errorf("SendAndWait took %v after the kill, want well under 5s", took)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("SendAndWait still waiting 10s after the runtime was killed")
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Error("client not done after the runtime died")
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	gone(t, childPid(stderr.String()))
}

// The runtime's environment is the allowlist, its own HOME and
// COPILOT_HOME, the shared cache, InheritEnv and Env: no credential of the
// service.
func TestStartEnvironment(t *testing.T) {
	secrets := []string{
		"AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_FEDERATED_TOKEN_FILE",
		"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS",
		"GITHUB_TOKEN", "GH_TOKEN", "COPILOT_GITHUB_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "CI_JOB_TOKEN",
		"DATABASE_URL", "TOKENBROKER_TEST_KEEP",
	}
	for _, name := range secrets {
		t.Setenv(name, "marker-"+name)
	}
	passed := map[string]string{"LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "HTTPS_PROXY": "http://127.0.0.1:9", "SSL_CERT_FILE": "/ca.pem"}
	for k, v := range passed {
		t.Setenv(k, v)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}

	run := func(t *testing.T, opts client.Options) map[string]string {
		file := filepath.Join(t.TempDir(), "env")
		opts.CLIPath, opts.Args = "/bin/sh", []string{"-c", fmt.Sprintf("env > %q", file)}
		b := actors.NewBroker(actors.Options{})
		defer b.Close()
		if _, err := client.Start(ctxT(t), b, opts); !errors.Is(err, client.ErrExited) {
			t.Fatalf("err = %v, want the exit", err)
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for line := range strings.Lines(string(raw)) {
			k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
			env[k] = v
		}
		return env
	}

	t.Run("default", func(t *testing.T) {
		env := run(t, client.Options{Env: []string{"EXTRA=1"}})
		for _, name := range secrets {
			if v, ok := env[name]; ok {
				t.Errorf("%s=%s reached the runtime", name, v)
			}
		}
		for k, v := range passed {
			if env[k] != v {
				t.Errorf("%s = %q, want %q", k, env[k], v)
			}
		}
		// Nothing else: every name is on RuntimeEnv's list or set by Start
		// (or by the shell itself).
		for name := range env {
			listed := slices.ContainsFunc(append(client.RuntimeEnv(), "HOME", "COPILOT_HOME", "EXTRA", "PWD", "SHLVL", "_"), func(n string) bool {
				prefix, star := strings.CutSuffix(n, "*")
				return n == name || star && strings.HasPrefix(name, prefix)
			})
			if !listed {
				t.Errorf("%s reached the runtime but is not in RuntimeEnv", name)
			}
		}
		if env["EXTRA"] != "1" || env["PATH"] != os.Getenv("PATH") || env["XDG_CACHE_HOME"] != cache {
			t.Errorf("EXTRA %q, PATH %q, XDG_CACHE_HOME %q (want %q)", env["EXTRA"], env["PATH"], env["XDG_CACHE_HOME"], cache)
		}
		home := env["COPILOT_HOME"]
		if home == "" || env["HOME"] != home || home == os.Getenv("HOME") {
			t.Errorf("HOME %q, COPILOT_HOME %q: want one private directory", env["HOME"], home)
		}
		if _, err := os.Stat(home); !os.IsNotExist(err) {
			t.Errorf("temporary home %s not removed: %v", home, err)
		}
	})
	t.Run("inherit", func(t *testing.T) {
		env := run(t, client.Options{InheritEnv: []string{"TOKENBROKER_TEST_*", "HOME"}})
		if env["TOKENBROKER_TEST_KEEP"] != "marker-TOKENBROKER_TEST_KEEP" || env["HOME"] != os.Getenv("HOME") {
			t.Errorf("inherited: KEEP %q HOME %q", env["TOKENBROKER_TEST_KEEP"], env["HOME"])
		}
		if _, ok := env["AZURE_CLIENT_SECRET"]; ok {
			t.Error("a prefix let another name through")
		}
	})
	t.Run("all", func(t *testing.T) {
		env := run(t, client.Options{InheritEnv: []string{"*"}})
		if env["AZURE_CLIENT_SECRET"] != "marker-AZURE_CLIENT_SECRET" {
			t.Error(`InheritEnv "*" did not pass everything`)
		}
	})
}
