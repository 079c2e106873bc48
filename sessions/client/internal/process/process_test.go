package process

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/internal/syncbuf"
)

// startSh starts a shell script as a runtime process.
func startSh(t *testing.T, script string, stderr io.Writer, grace time.Duration) *Process {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Stderr = stderr
	p, err := Start(cmd, grace)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(stat), ") Z ")
}

// waitGone fails t unless pid is gone within a few seconds.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if !alive(pid) {
			return
		}
	}
	t.Errorf("process %d outlived Close", pid)
}

// readPid reads "pid N" from the start of r.
func readPid(t *testing.T, r io.Reader) int {
	t.Helper()
	var pid int
	if _, err := fmt.Fscanf(r, "pid %d\n", &pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// The process's output ends when it exits, all of it read, although a
// descendant still holds the pipe; Err then says how it ended; Close kills
// the descendant.
func TestProcessEndsAtExitNotAtEOF(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const size = 300_000 // several pipe buffers
	p := startSh(t, fmt.Sprintf(`sleep 60 & echo "pid $!"; head -c %d /dev/zero | tr '\0' x; exit 7`, size), nil, time.Second)
	descendant := readPid(t, p)
	if p.Err() != nil {
		t.Fatalf("Err while running: %v", p.Err())
	}
	read := make(chan int, 1)
	go func() {
		n, _ := io.Copy(io.Discard, p)
		read <- int(n)
	}()
	select {
	case n := <-read:
		if n != size {
			t.Errorf("read %d bytes, want %d", n, size)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading did not end after the exit: the descendant's pipe kept it open")
	}
	<-p.Done()
	err := p.Err()
	var exit *ExitError
	if !errors.Is(err, ErrExited) || !errors.As(err, &exit) || exit.State.ExitCode() != 7 || !strings.Contains(err.Error(), "/bin/sh exited (exit status 7)") {
		t.Fatalf("Err = %v", err)
	}
	if !alive(descendant) {
		t.Fatal("test premise: the descendant should still run")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, descendant)
}

// Stderr goes to the given writer whole; the error keeps its last lines,
// scrubbed, even from a writer of another kind than a file.
func TestProcessStderrTail(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var copyOf syncbuf.Buffer
	p := startSh(t, `for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "line $i" >&2; done; echo "auth failed access_token=sekrit-value-1" >&2; exit 1`, &copyOf, time.Second)
	<-p.Done()
	err := p.Err().Error()
	if !strings.Contains(err, "stderr: line 6 | line 7 |") || strings.Contains(err, "line 5 ") ||
		!strings.Contains(err, "line 12 | auth failed access_token=[redacted]") || strings.Contains(err, "sekrit") {
		t.Errorf("Err = %q", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := copyOf.String(); !strings.HasPrefix(got, "line 1\n") || !strings.Contains(got, "sekrit-value-1") {
		t.Errorf("Stderr writer got %q", got)
	}
}

// A child that ignores its closed stdin and SIGTERM: Close kills it, and
// what it started, after its grace.
func TestProcessCloseAfterGrace(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const grace = 200 * time.Millisecond
	p := startSh(t, `trap '' TERM; sleep 60 & echo "pid $!"; while :; do sleep 1; done`, nil, grace)
	descendant := readPid(t, p)
	began := time.Now()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < grace || took > grace+3*time.Second {
		t.Errorf("Close took %v, want about %v", took, grace)
	}
	if !strings.Contains(p.Err().Error(), "signal: killed") {
		t.Errorf("Err = %v", p.Err())
	}
	waitGone(t, p.Pid())
	waitGone(t, descendant)
}

// Kill cuts short a Close that is waiting out its grace.
func TestProcessKillDuringClose(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	p := startSh(t, `trap '' TERM; while :; do sleep 1; done`, nil, time.Hour)
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	time.Sleep(50 * time.Millisecond) // let Close start waiting
	killed := make(chan error, 1)
	go func() { killed <- p.Kill() }()
	for _, ch := range []chan error{killed, closed} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(p.Pid(), syscall.SIGKILL)
			t.Fatal("Close and Kill still waiting after Kill")
		}
	}
	if !strings.Contains(p.Err().Error(), "signal: killed") {
		t.Errorf("Err = %v", p.Err())
	}
}
