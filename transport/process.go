package transport

import (
	"errors"
	"os"
	"os/exec"
	"sync"
	"time"
)

// Process is a runtime started as a child process, spoken to over its
// stdin and stdout.
type Process struct {
	// StopGrace is how long Close waits for the child to exit after its
	// stdin closes before killing it. Start sets DefaultStopGrace.
	StopGrace time.Duration

	cmd    *exec.Cmd
	stdin  *os.File // our end of the child's stdin
	stdout *os.File // our end of the child's stdout
	done   chan struct{}
	err    error
	once   sync.Once
}

// DefaultStopGrace is how long Close waits by default.
const DefaultStopGrace = 5 * time.Second

// Start starts cmd with pipes on its stdin and stdout. The command must not
// have Stdin or Stdout set. Close ends it.
//
// The pipes are plain os.Pipe files rather than exec's StdoutPipe: Wait
// closes a StdoutPipe as soon as the child exits, which would drop the last
// messages of a runtime that exits on its own before they are read.
func Start(cmd *exec.Cmd) (*Process, error) {
	if cmd.Stdin != nil || cmd.Stdout != nil {
		return nil, errors.New("transport: Start: Stdin and Stdout must be unset")
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	err = cmd.Start()
	// The child holds its own copies; ours would keep the pipes open.
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, err
	}
	p := &Process{StopGrace: DefaultStopGrace, cmd: cmd, stdin: inW, stdout: outR, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *Process) Read(b []byte) (int, error)  { return p.stdout.Read(b) }
func (p *Process) Write(b []byte) (int, error) { return p.stdin.Write(b) }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Close closes the child's stdin, which tells a runtime to exit, waits up
// to StopGrace, then kills that process (and only it).
func (p *Process) Close() error {
	p.once.Do(func() {
		_ = p.stdin.Close()
		t := time.NewTimer(p.StopGrace)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		_ = p.stdout.Close()
	})
	var exit *exec.ExitError
	if p.err != nil && !errors.As(p.err, &exit) {
		return p.err
	}
	return nil
}
