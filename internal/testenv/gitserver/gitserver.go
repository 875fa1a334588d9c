// Package gitserver runs a real git server on loopback for tests: Debian's git serving
// repositories over smart HTTP (`git http-backend` behind net/http/cgi, with HTTP basic auth)
// and over SSH (a small SSH server that runs `git upload-pack` for keys it knows). Tests make
// commits in a working copy and push them to the served repositories with the git command.
//
// Tests skip when git is missing, except under CI=true, where they fail.
//
// Only tests may import this package.
package gitserver

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Git returns the path of the git command, skipping the test (failing it under CI=true) when
// there is none.
func Git(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("git")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("git is not installed (apt-get install git); CI must run the git server tests")
		}
		t.Skip("git is not installed (apt-get install git): skipping the tests against a real git server")
	}
	return p
}

// Server serves the bare repositories under Root.
type Server struct {
	// URL is the HTTP base: a repository "app" is at URL + "/app.git".
	URL string
	// User and Password are the only credentials the HTTP server accepts.
	User, Password string
	Root           string

	git      string
	home     string
	uploaded atomic.Int64
	requests atomic.Int64
}

// Start serves an empty set of repositories until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{git: Git(t), Root: t.TempDir(), home: t.TempDir(), User: "flotilla", Password: "s3cret-pass"}
	backend := &cgi.Handler{
		Path: s.git, Args: []string{"http-backend"}, Root: "/",
		Env: []string{"GIT_PROJECT_ROOT=" + s.Root, "GIT_HTTP_EXPORT_ALL=1", "HOME=" + s.home, "GIT_CONFIG_NOSYSTEM=1"},
	}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if u, p, ok := r.BasicAuth(); !ok || u != s.User || p != s.Password {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		backend.ServeHTTP(cw, r)
		if strings.HasSuffix(r.URL.Path, "/git-upload-pack") {
			s.uploaded.Add(cw.n)
		}
	}))
	t.Cleanup(hs.Close)
	s.URL = hs.URL
	return s
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// UploadedBytes is how many bytes of packs (git-upload-pack responses) the HTTP server sent.
func (s *Server) UploadedBytes() int64 { return s.uploaded.Load() }

// Requests counts HTTP requests, refused ones included.
func (s *Server) Requests() int64 { return s.requests.Load() }

// Repo is a served repository and a working copy to commit in.
type Repo struct {
	s    *Server
	Name string
	// Bare is the served repository's directory.
	Bare string
	work string
	t    testing.TB
}

// NewRepo creates an empty repository named name (served as name.git) whose branch is main.
func (s *Server) NewRepo(t testing.TB, name string) *Repo {
	t.Helper()
	r := &Repo{s: s, Name: name, Bare: filepath.Join(s.Root, name+".git"), work: t.TempDir(), t: t}
	s.run(t, "", "init", "-q", "--bare", "-b", "main", r.Bare)
	s.run(t, r.Bare, "config", "http.receivepack", "false")
	s.run(t, "", "init", "-q", "-b", "main", r.work)
	return r
}

// HTTPURL is the repository's address over HTTP.
func (r *Repo) HTTPURL() string { return r.s.URL + "/" + r.Name + ".git" }

func (s *Server) run(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(s.git, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+s.home, "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=Test", "GIT_AUTHOR_EMAIL=test@example.com", "GIT_COMMITTER_NAME=Test", "GIT_COMMITTER_EMAIL=test@example.com")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// Write puts a file in the working copy.
func (r *Repo) Write(path, content string) *Repo {
	r.t.Helper()
	p := filepath.Join(r.work, filepath.FromSlash(path))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		r.t.Fatal(err)
	}
	return r
}

// WriteFiles puts several files in the working copy.
func (r *Repo) WriteFiles(files map[string]string) *Repo {
	r.t.Helper()
	for p, c := range files {
		r.Write(p, c)
	}
	return r
}

// Symlink makes path a symbolic link to target in the working copy.
func (r *Repo) Symlink(path, target string) *Repo {
	r.t.Helper()
	p := filepath.Join(r.work, filepath.FromSlash(path))
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.Symlink(target, p); err != nil {
		r.t.Fatal(err)
	}
	return r
}

// Remove deletes a file or directory from the working copy.
func (r *Repo) Remove(path string) *Repo {
	r.t.Helper()
	if err := os.RemoveAll(filepath.Join(r.work, filepath.FromSlash(path))); err != nil {
		r.t.Fatal(err)
	}
	return r
}

// Commit commits everything in the working copy to branch main, pushes it to the served
// repository and returns the commit's hash.
func (r *Repo) Commit(msg string) string {
	return r.CommitTo("main", msg)
}

// CommitTo commits on branch (created from the current commit when new) and pushes it.
func (r *Repo) CommitTo(branch, msg string) string {
	r.t.Helper()
	r.s.run(r.t, r.work, "checkout", "-q", "-B", branch)
	r.s.run(r.t, r.work, "add", "-A")
	r.s.run(r.t, r.work, "commit", "-q", "--allow-empty", "-m", msg)
	r.s.run(r.t, r.work, "push", "-q", "-f", r.Bare, branch)
	return r.s.run(r.t, r.work, "rev-parse", "HEAD")
}

// Tag tags the current commit and pushes the tag.
func (r *Repo) Tag(name string) {
	r.t.Helper()
	r.s.run(r.t, r.work, "tag", "-f", "-a", "-m", name, name)
	r.s.run(r.t, r.work, "push", "-q", "-f", r.Bare, "refs/tags/"+name)
}

// SSH is an SSH endpoint serving the same repositories to one client key.
type SSH struct {
	// Addr is host:port; a repository "app" is at ssh://git@Addr/app.git.
	Addr string
	// ClientKey is the client's private key (PEM) that the server accepts.
	ClientKey []byte
	// KnownHosts is a known_hosts line for the server's host key.
	KnownHosts []byte
}

// URL is the SSH address of a repository of the server.
func (x *SSH) URL(name string) string { return "ssh://git@" + x.Addr + "/" + name + ".git" }

// StartSSH serves s's repositories over SSH until the test ends: a session may only run
// git-upload-pack, and only with the generated client key.
func (s *Server) StartSSH(t testing.TB) *SSH {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	clientPub, clientPriv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(clientPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	authorized, _ := ssh.NewPublicKey(clientPub)
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
		if string(key.Marshal()) == string(authorized.Marshal()) {
			return nil, nil
		}
		return nil, fmt.Errorf("unknown key")
	}}
	cfg.AddHostKey(hostSigner)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.serveSSH(c, cfg)
			}()
		}
	}()
	addr := ln.Addr().String()
	host, port, _ := net.SplitHostPort(addr)
	return &SSH{
		Addr:       addr,
		ClientKey:  pem.EncodeToMemory(block),
		KnownHosts: []byte(fmt.Sprintf("[%s]:%s %s", host, port, ssh.MarshalAuthorizedKey(hostSigner.PublicKey()))),
	}
}

func (s *Server) serveSSH(c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	conn, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	defer conn.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "sessions only")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		go s.session(ch, creqs)
	}
}

func (s *Server) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		if req.Type == "env" {
			req.Reply(true, nil)
			continue
		}
		if req.Type != "exec" {
			req.Reply(false, nil)
			continue
		}
		var p struct{ Command string }
		ssh.Unmarshal(req.Payload, &p)
		cmdName, arg, _ := strings.Cut(p.Command, " ")
		repo := strings.Trim(arg, `'"/`)
		if cmdName != "git-upload-pack" || strings.Contains(repo, "..") {
			req.Reply(false, nil)
			return
		}
		req.Reply(true, nil)
		cmd := exec.Command(s.git, "upload-pack", filepath.Join(s.Root, repo))
		cmd.Env = append(os.Environ(), "HOME="+s.home, "GIT_CONFIG_NOSYSTEM=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
		cmd.WaitDelay = time.Second
		code := uint32(0)
		if err := cmd.Run(); err != nil {
			code = 1
		}
		ch.CloseWrite()
		ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{code}))
		return
	}
}

var _ io.Writer = (*countingWriter)(nil)
