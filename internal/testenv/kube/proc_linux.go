package kube

import "syscall"

// sysProcAttr puts the child in its own process group, and has the kernel
// kill it if the test binary dies without running cleanups (a -timeout
// panic, SIGKILL), so no API server outlives its test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup signals every process in the group led by pid.
func killGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}
