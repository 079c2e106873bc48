//go:build unix

package process

import (
	"os"
	"os/exec"
	"syscall"
)

// ownGroup starts the child as the leader of a new process group, so that
// killGroup reaches the tools it runs, not this service.
func ownGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
}

// killGroup kills the child's process group: the child, if still alive,
// and every descendant that stayed in it.
func killGroup(p *os.Process) {
	_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	_ = p.Kill() // in case the child left its group
}
