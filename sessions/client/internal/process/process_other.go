//go:build !unix

package process

import (
	"os"
	"os/exec"
)

func ownGroup(*exec.Cmd) {}

// killGroup kills the child only: without process groups, its descendants
// are on their own.
func killGroup(p *os.Process) { _ = p.Kill() }
