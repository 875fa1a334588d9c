// Package e2e runs the real binaries end to end: it builds them once per test process,
// starts servers on loopback ports, and drives them through the CLI as a person would.
// Imported only by tests.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildMu   sync.Mutex
	buildDir  string
	buildDone = map[string]error{}
)

// Binary returns the path of a command (flotilla or flotilla-agent) built once per test
// process from this checkout.
func Binary(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	err, done := buildDone[name]
	if !done {
		if buildDir == "" {
			buildDir, err = os.MkdirTemp("", "flotilla-e2e-bin-")
		}
		if err == nil {
			build := exec.Command("go", "build", "-o", filepath.Join(buildDir, name), "./cmd/"+name)
			build.Dir = moduleRoot()
			if out, berr := build.CombinedOutput(); berr != nil {
				err = fmt.Errorf("building %s: %v\n%s", name, berr, out)
			}
		}
		buildDone[name] = err
	}
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(buildDir, name)
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// FreePort returns a loopback address with a free port.
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Server is a running `flotilla server`.
type Server struct {
	URL      string
	Addr     string
	DataDir  string
	Checksum string
	Token    string
	CAFile   string
	cmd      *exec.Cmd
	stdout   *syncBuffer
	stderr   *syncBuffer
	done     chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ServerOptions start a server.
type ServerOptions struct {
	DataDir string
	Addr    string
	Args    []string
	Env     []string
	// Bin is the server binary; "" builds it from this checkout.
	Bin string
}

var (
	checksumLine = regexp.MustCompile(`CA checksum \(sha256\): ([0-9a-f]{64})`)
	tokenLine    = regexp.MustCompile(`Admin token \(shown once, keep it safe\): (\S+)`)
)

// StartServer starts the real server binary and waits until /readyz answers.
func StartServer(t testing.TB, o ServerOptions) *Server {
	t.Helper()
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	if o.Addr == "" {
		o.Addr = FreePort(t)
	}
	s := &Server{Addr: o.Addr, URL: "https://" + o.Addr, DataDir: o.DataDir, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1)}
	args := append([]string{"server", "--listen", o.Addr, "--data-dir", o.DataDir}, o.Args...)
	if o.Bin == "" {
		o.Bin = Binary(t, "flotilla")
	}
	s.cmd = exec.Command(o.Bin, args...)
	s.cmd.Env = append(os.Environ(), o.Env...)
	s.cmd.Stdout, s.cmd.Stderr = s.stdout, s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		s.Stop(t)
		if t.Failed() {
			t.Logf("server stderr:\n%s", s.stderr.String())
		}
	})
	if err := s.WaitReady(30 * time.Second); err != nil {
		t.Fatalf("server not ready: %v\nstdout:\n%s\nstderr:\n%s", err, s.stdout.String(), s.stderr.String())
	}
	if m := checksumLine.FindStringSubmatch(s.stdout.String()); m != nil {
		s.Checksum = m[1]
	}
	if m := tokenLine.FindStringSubmatch(s.stdout.String()); m != nil {
		s.Token = m[1]
	}
	s.CAFile = filepath.Join(o.DataDir, "tls", "ca.crt")
	return s
}

// WaitReady polls /readyz.
func (s *Server) WaitReady(timeout time.Duration) error {
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-s.done:
			s.done <- err
			return fmt.Errorf("server exited: %v", err)
		default:
		}
		resp, err := hc.Get(s.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no ready answer within %v", timeout)
}

// Stdout and Stderr return what the server printed so far.
func (s *Server) Stdout() string { return s.stdout.String() }

// Stderr returns the server's log so far.
func (s *Server) Stderr() string { return s.stderr.String() }

// Signal sends sig and waits for the process to end, returning its exit error.
func (s *Server) Signal(t testing.TB, sig os.Signal, timeout time.Duration) error {
	t.Helper()
	if s.cmd.ProcessState != nil {
		return nil
	}
	s.cmd.Process.Signal(sig)
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(timeout):
		s.cmd.Process.Kill()
		t.Fatalf("server did not exit within %v of %v", timeout, sig)
	}
	return nil
}

// Stop ends the server if it still runs.
func (s *Server) Stop(t testing.TB) {
	select {
	case err := <-s.done:
		s.done <- err
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done <- err
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// Kill ends the server with SIGKILL.
func (s *Server) Kill() {
	s.cmd.Process.Kill()
	err := <-s.done
	s.done <- err
}

// CLI runs `flotilla` with args against the server, with the server's CA and token in the
// environment unless env overrides them.
type CLI struct {
	Bin string
	Env []string
}

// Client returns a CLI for s.
func (s *Server) CLI(t testing.TB) *CLI {
	return &CLI{Bin: Binary(t, "flotilla"), Env: []string{"FLOTILLA_SERVER=" + s.URL, "FLOTILLA_TOKEN=" + s.Token, "FLOTILLA_CA_FILE=" + s.CAFile, "FLOTILLA_CONFIG=" + filepath.Join(t.TempDir(), "config.json")}}
}

// Run runs the CLI and returns stdout, stderr and the error.
func (c *CLI) Run(ctx context.Context, stdin string, args ...string) (string, string, error) {
	cmd := exec.CommandContext(ctx, c.Bin, args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

// Stream starts the CLI and returns its stdout lines as they come.
func (c *CLI) Stream(t testing.TB, ctx context.Context, args ...string) <-chan string {
	t.Helper()
	cmd := exec.CommandContext(ctx, c.Bin, args...)
	cmd.Env = append(os.Environ(), c.Env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		cmd.Wait()
	}()
	return lines
}

// Pid returns the server process's id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }
