package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopGrace is how long a process stopped gracefully gets to exit after
// SIGTERM before its whole process group is killed.
const stopGrace = 5 * time.Second

// logTailLines is how much of a process's log is printed when a test fails.
const logTailLines = 80

// process is one running binary in its own process group, logging to a file.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	cancel  context.CancelFunc
	// graceful stops with SIGTERM first. API servers and controller
	// managers are killed outright: their state lives in etcd, and a
	// graceful kube-apiserver shutdown takes over a second.
	graceful bool

	done    chan struct{} // closed when Wait returns
	waitErr error         // valid once done is closed

	stopOnce sync.Once
	mu       sync.Mutex
	stopped  bool // stop was asked for, so an exit is not a crash
}

// startProcess starts bin with args, logging to dir/<name>.log.
func startProcess(name, bin, dir string, graceful bool, args []string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening %s log: %w", name, err)
	}
	defer logFile.Close() // the child keeps its own descriptor

	// The context is ours, not the test's: t.Context is cancelled before
	// cleanups run, which would kill etcd while API servers still use it.
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	// A process group lets us kill anything the binary spawned as well.
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = stopGrace
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, cancel: cancel, graceful: graceful, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// crashed reports whether the process ended without being asked to.
func (p *process) crashed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.stopped && p.exited()
}

// stop kills the process group, after a SIGTERM and up to stopGrace if the
// process is graceful, and waits for the process to be reaped. It is safe to
// call more than once.
func (p *process) stop() {
	p.stopOnce.Do(func() {
		p.mu.Lock()
		p.stopped = true
		p.mu.Unlock()
		if p.graceful && !p.exited() {
			_ = killGroup(p.cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(stopGrace):
			}
		}
		p.cancel() // SIGKILLs the group if the leader is still alive
		<-p.done
		// Children that outlived the leader would hold ports and files.
		_ = killGroup(p.cmd.Process.Pid, syscall.SIGKILL)
	})
}

// logTail returns the last lines of the process's log.
func (p *process) logTail(lines int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", p.logPath, err)
	}
	data = bytes.TrimRight(data, "\n")
	all := strings.Split(string(data), "\n")
	if len(all) > lines {
		all = append([]string{fmt.Sprintf("... (%d earlier lines omitted)", len(all)-lines)}, all[len(all)-lines:]...)
	}
	return strings.Join(all, "\n")
}

// logOnFailure prints the end of the process's log if the test failed or
// the process died by itself; call it from a cleanup, after stop.
func (p *process) logOnFailure(t testing.TB) {
	t.Helper()
	if p.crashed() {
		t.Errorf("%s exited on its own during the test: %v", p.name, p.waitErr)
	}
	if t.Failed() {
		t.Logf("last lines of %s log:\n%s", p.name, p.logTail(logTailLines))
	}
}

// errPortInUse marks a start that lost the race for a port picked by
// freePort, which is worth retrying with other ports.
var errPortInUse = errors.New("port already in use")

// exitError describes an early exit of p, wrapping errPortInUse if the log
// says a port was taken.
func (p *process) exitError() error {
	data, _ := os.ReadFile(p.logPath)
	if bytes.Contains(data, []byte("address already in use")) {
		return fmt.Errorf("%s exited (%v): %w", p.name, p.waitErr, errPortInUse)
	}
	return fmt.Errorf("%s exited (%v); last lines of its log:\n%s", p.name, p.waitErr, p.logTail(logTailLines))
}

// freePort returns a loopback TCP port that was free a moment ago. Another
// process can take it before ours binds it; callers retry on errPortInUse.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitFor polls check until it returns nil, the process exits or timeout
// passes. It returns the last error of check on timeout.
func waitFor(p *process, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w; last lines of its log:\n%s",
				p.name, timeout, err, p.logTail(logTailLines))
		}
		select {
		case <-p.done:
			return p.exitError()
		case <-tick.C:
		}
	}
}
