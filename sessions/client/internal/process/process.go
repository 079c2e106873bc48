// Package process runs a runtime as a child process spoken to over its
// stdio: in a process group of its own, with the end of its stderr kept for
// errors, and stopped by closing its stdin, a grace period, then a kill of
// the whole group.
package process

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// Process is a runtime started as a child process, spoken to over its
// stdin and stdout.
//
// Its lifetime is the child's, not its pipes': a descendant that inherited
// stdout or stderr (a tool the runtime started) cannot keep the connection
// open once the runtime has exited, and Close ends the whole process group.
type Process struct {
	grace  time.Duration // how long Close waits before killing
	path   string
	cmd    *exec.Cmd
	stdin  *os.File // our end of the child's stdin
	stdout *os.File // our end of the child's stdout
	stderr *os.File // our end of the child's stderr
	tail   tail
	copied chan struct{} // closed when stderr is read to its end
	done   chan struct{} // closed when the child exited and its output was read
	exit   *ExitError
	werr   error // Wait's error when it is not about the exit status

	hurry     chan struct{} // closed by Kill: no more grace
	hurryOnce sync.Once
	stdinOnce sync.Once
	stopOnce  sync.Once
}

// exitDrain is how long the child's pipes are still read after it exited:
// long enough to read what it wrote before exiting, short enough that a
// descendant holding them changes nothing.
const exitDrain = 250 * time.Millisecond

// ErrExited is matched by the error of a process that has exited.
var ErrExited = errors.New("client: runtime process exited")

// ExitError says how a runtime process ended.
type ExitError struct {
	Path  string
	State *os.ProcessState
	// Stderr is the end of what it wrote to stderr (a few lines), with
	// token-like values cut out by tokens.Scrub.
	Stderr string
}

func (e *ExitError) Error() string {
	s := e.Path + " exited"
	if e.State != nil {
		s += " (" + e.State.String() + ")" // "exit status 1", "signal: killed"
	}
	if e.Stderr != "" {
		s += "; stderr: " + e.Stderr
	}
	return s
}

// Is makes errors.Is(err, ErrExited) true.
func (e *ExitError) Is(target error) bool { return target == ErrExited }

// Start starts cmd with pipes on its stdin, stdout and stderr, in a process
// group of its own. The command must not have Stdin or Stdout set; a Stderr
// writer receives a copy of the child's stderr and must not block. Close
// ends it, waiting up to grace for the child to exit by itself.
//
// The pipes are plain os.Pipe files rather than exec's StdoutPipe: Wait
// closes a StdoutPipe as soon as the child exits, which would drop the last
// messages of a runtime that exits on its own before they are read; and
// exec's copying of a non-file Stderr would make Wait wait for every
// descendant holding it.
func Start(cmd *exec.Cmd, grace time.Duration) (*Process, error) {
	if cmd.Stdin != nil || cmd.Stdout != nil {
		return nil, errors.New("process: Start: Stdin and Stdout must be unset")
	}
	var ours, theirs [3]*os.File // stdin, stdout, stderr
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			if f != nil {
				f.Close()
			}
		}
	}
	for i := range ours {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll(ours[:])
			closeAll(theirs[:])
			return nil, err
		}
		if i == 0 {
			ours[i], theirs[i] = w, r
		} else {
			ours[i], theirs[i] = r, w
		}
	}
	userStderr := cmd.Stderr
	cmd.Stdin, cmd.Stdout, cmd.Stderr = theirs[0], theirs[1], theirs[2]
	ownGroup(cmd)
	err := cmd.Start()
	// The child holds its own copies; ours would keep the pipes open.
	closeAll(theirs[:])
	if err != nil {
		closeAll(ours[:])
		return nil, err
	}
	p := &Process{
		grace:  grace,
		path:   cmd.Path,
		cmd:    cmd,
		stdin:  ours[0],
		stdout: ours[1],
		stderr: ours[2],
		copied: make(chan struct{}),
		done:   make(chan struct{}),
		hurry:  make(chan struct{}),
	}
	go p.copyStderr(userStderr)
	go p.wait()
	return p, nil
}

// copyStderr keeps the end of the child's stderr and copies it to w.
func (p *Process) copyStderr(w io.Writer) {
	defer close(p.copied)
	defer p.stderr.Close()
	buf := make([]byte, 4096)
	for {
		n, err := p.stderr.Read(buf)
		if n > 0 {
			p.tail.Write(buf[:n])
			if w != nil {
				_, _ = w.Write(buf[:n])
			}
		}
		if err != nil {
			return
		}
	}
}

// wait notices the exit of the child itself, then bounds the reading of
// its pipes.
func (p *Process) wait() {
	err := p.cmd.Wait()
	drain := time.Now().Add(exitDrain)
	_ = p.stdout.SetReadDeadline(drain)
	_ = p.stderr.SetReadDeadline(drain)
	<-p.copied
	p.exit = &ExitError{Path: p.path, State: p.cmd.ProcessState, Stderr: p.tail.String()}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		p.werr = err
	}
	close(p.done)
}

// Read reads the child's stdout; it ends (io.EOF) once the child has exited
// and what it wrote is read, whoever else holds the pipe.
func (p *Process) Read(b []byte) (int, error) {
	n, err := p.stdout.Read(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		<-p.done // so that the reader, seeing the end, finds Err set
		err = io.EOF
	}
	return n, err
}

func (p *Process) Write(b []byte) (int, error) { return p.stdin.Write(b) }

// Done is closed when the process has exited (and its output was read, at
// most a fraction of a second later).
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is nil while the process runs, then an *ExitError (errors.Is
// ErrExited) naming the binary, its exit status or signal, and the end of
// its stderr.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.exit
	default:
		return nil
	}
}

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Close closes the child's stdin, which tells a runtime to exit, waits up
// to its grace, then kills it; whatever it started that is still in its
// process group is killed too. It returns within the grace and a fraction
// of a second, whatever descendants do.
func (p *Process) Close() error { return p.stop(p.grace) }

// Kill is Close without the grace, for a runtime that has nothing to save;
// it also cuts short a Close in progress.
func (p *Process) Kill() error {
	p.hurryOnce.Do(func() { close(p.hurry) })
	return p.stop(0)
}

func (p *Process) stop(grace time.Duration) error {
	p.stdinOnce.Do(func() { _ = p.stdin.Close() })
	p.stopOnce.Do(func() {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
		case <-p.hurry:
		}
		killGroup(p.cmd.Process)
		<-p.done
		_ = p.stdout.Close()
	})
	return p.werr
}

// tail keeps the last bytes written to it.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

// tailBytes bounds what is kept; tailLines what is reported.
const (
	tailBytes = 4096
	tailLines = 8
)

func (t *tail) Write(b []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - tailBytes; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
}

// String is the last tailLines non-empty lines, joined by " | " so that
// they fit an error message, scrubbed of token-like values.
func (t *tail) String() string {
	t.mu.Lock()
	text := string(t.buf)
	t.mu.Unlock()
	var lines []string
	for l := range strings.SplitSeq(text, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	lines = lines[max(0, len(lines)-tailLines):]
	return tokens.Scrub(strings.Join(lines, " | "))
}
