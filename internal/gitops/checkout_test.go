//go:build unix

package gitops_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"

	"flotilla.dev/api"
	"flotilla.dev/internal/testenv/gitserver"
)

// rawEntry is a tree entry as written, however hostile: any mode, any name, in any order.
type rawEntry struct {
	mode string
	name string
	hash plumbing.Hash
}

func putObject(t testing.TB, s storer.EncodedObjectStorer, typ plumbing.ObjectType, data []byte) plumbing.Hash {
	t.Helper()
	o := s.NewEncodedObject()
	o.SetType(typ)
	o.SetSize(int64(len(data)))
	w, _ := o.Writer()
	w.Write(data)
	w.Close()
	h, err := s.SetEncodedObject(o)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func putTree(t testing.TB, s storer.EncodedObjectStorer, entries ...rawEntry) plumbing.Hash {
	t.Helper()
	var b bytes.Buffer
	for _, e := range entries {
		fmt.Fprintf(&b, "%s %s\x00", e.mode, e.name)
		b.Write(e.hash[:])
	}
	return putObject(t, s, plumbing.TreeObject, b.Bytes())
}

// pushRawCommit writes a commit of tree straight into the served repository's branch main,
// as a hostile server or pusher could: no git command checks it.
func pushRawCommit(t testing.TB, bare string, build func(s storer.EncodedObjectStorer) plumbing.Hash) string {
	t.Helper()
	r, err := git.PlainOpen(bare)
	if err != nil {
		t.Fatal(err)
	}
	tree := build(r.Storer)
	sig := object.Signature{Name: "Mallory", Email: "m@example.com", When: time.Unix(1700000000, 0)}
	c := &object.Commit{Author: sig, Committer: sig, Message: "hostile\n", TreeHash: tree}
	o := r.Storer.NewEncodedObject()
	if err := c.Encode(o); err != nil {
		t.Fatal(err)
	}
	h, err := r.Storer.SetEncodedObject(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Storer.SetReference(plumbing.NewHashReference("refs/heads/main", h)); err != nil {
		t.Fatal(err)
	}
	return h.String()
}

func blob(t testing.TB, s storer.EncodedObjectStorer, content string) plumbing.Hash {
	return putObject(t, s, plumbing.BlobObject, []byte(content))
}

// listFiles lists every path under dir.
func listFiles(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// Hostile trees served by a real git server: a link and a directory under one name (written
// through the link on the old code, to an absolute path or up into the server's data
// directory), links out of the repository, to a device or through another link, special modes
// and reserved names. Each is refused before anything is written: nothing appears outside the
// checkout, no bundle is written and the GitRepo says why.
func TestHostileTreesAreRefusedBeforeWriting(t *testing.T) {
	e := newEnv(t, nil)
	gs := gitserver.Start(t)
	data := filepath.Dir(e.dir) // the server's data directory, holding the clones in git/
	outside := t.TempDir()
	// The relative escape reaches data/ from data/git/default/.checkout-*/repo/d.
	if err := os.Mkdir(filepath.Join(data, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(outside, "fifo")
	if err := mkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	yaml := func(s storer.EncodedObjectStorer) plumbing.Hash { return blob(t, s, configMap("x", "1")) }
	victim := func(s storer.EncodedObjectStorer) plumbing.Hash {
		return putTree(t, s, rawEntry{"100644", "victim.conf", blob(t, s, "owned\n")})
	}
	tests := []struct {
		name  string
		build func(s storer.EncodedObjectStorer) plumbing.Hash
		want  string
	}{
		{"link then directory, absolute", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"120000", "d", blob(t, s, outside)}, rawEntry{"40000", "d", victim(s)}, rawEntry{"100644", "cm.yaml", yaml(s)})
		}, "d appears twice"},
		{"link then directory, relative", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"120000", "d", blob(t, s, "../../../../tls")}, rawEntry{"40000", "d", victim(s)}, rawEntry{"100644", "cm.yaml", yaml(s)})
		}, "d appears twice"},
		{"directory then link", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"40000", "d", victim(s)}, rawEntry{"120000", "d", blob(t, s, "../../../../tls")}, rawEntry{"100644", "cm.yaml", yaml(s)})
		}, "d appears twice"},
		{"two files", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"100644", "cm.yaml", yaml(s)}, rawEntry{"100644", "cm.yaml", yaml(s)})
		}, "cm.yaml appears twice"},
		{"absolute link", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"120000", "passwd.yaml", blob(t, s, "/etc/passwd")}, rawEntry{"100644", "cm.yaml", yaml(s)})
		}, "passwd.yaml -> \"/etc/passwd\" is absolute"},
		{"link up and out", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"120000", "up", blob(t, s, "../../../../tls")}, rawEntry{"100644", "cm.yaml", yaml(s)})
		}, "leaves the repository"},
		{"link to a device", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"120000", "zero.yaml", blob(t, s, "/dev/zero")}, rawEntry{"100644", "cm.yaml", yaml(s)})
		}, "is absolute"},
		{"link to a FIFO", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"120000", ".fleetignore", blob(t, s, fifo)}, rawEntry{"100644", "cm.yaml", yaml(s)})
		}, "is absolute"},
		{"out through another link", func(s storer.EncodedObjectStorer) plumbing.Hash {
			sub := putTree(t, s, rawEntry{"120000", "here", blob(t, s, "..")}, rawEntry{"120000", "out", blob(t, s, "here/../secret")})
			return putTree(t, s, rawEntry{"100644", "cm.yaml", yaml(s)}, rawEntry{"40000", "sub", sub})
		}, "sub/out"},
		{"FIFO mode", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"100644", "cm.yaml", yaml(s)}, rawEntry{"10644", "pipe", yaml(s)})
		}, "pipe has mode 10644"},
		{"character device mode", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"100644", "cm.yaml", yaml(s)}, rawEntry{"20644", "tty", yaml(s)})
		}, "tty has mode 20644"},
		{".git directory", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"100644", "cm.yaml", yaml(s)}, rawEntry{"40000", ".GIT", victim(s)})
		}, "reserved"},
		{"dot-dot name", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"100644", "cm.yaml", yaml(s)}, rawEntry{"40000", "..", victim(s)})
		}, `entry name ".."`},
		{"slash in a name", func(s storer.EncodedObjectStorer) plumbing.Hash {
			return putTree(t, s, rawEntry{"100644", "cm.yaml", yaml(s)}, rawEntry{"100644", "../../../../tls/victim.conf", yaml(s)})
		}, "slash"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("hostile-%d", i)
			repo := gs.NewRepo(t, name)
			commit := pushRawCommit(t, repo.Bare, tt.build)
			e.secret(name, api.SecretTypeBasicAuth, map[string]string{"username": gs.User, "password": gs.Password})
			e.gitRepo(name, api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", ClientSecretName: name})
			st := e.wait(name, "an error", func(st api.GitRepoStatus) bool { return st.Error != "" })
			if !strings.Contains(st.Error, "unsafe tree") || !strings.Contains(st.Error, tt.want) || !strings.Contains(st.Error, commit[:12]) {
				t.Errorf("status.error %q, want the commit, %q and %q", st.Error, "unsafe tree", tt.want)
			}
			if c := condition(st, "Accepted"); c == nil || c.Status != "False" || c.Reason != "Invalid" {
				t.Errorf("Accepted condition %+v, want False/Invalid", c)
			}
			if st.Commit != "" {
				t.Errorf("status.commit %s, want none deployed", st.Commit)
			}
			if b := e.bundles(name); len(b) != 0 {
				t.Errorf("bundles %v written from a hostile commit", b)
			}
			for _, dir := range []string{outside, filepath.Join(data, "tls")} {
				for _, f := range listFiles(t, dir) {
					if f != "fifo" {
						t.Errorf("%s written outside the checkout", filepath.Join(dir, f))
					}
				}
			}
		})
	}
	// No checkout is left behind either.
	for _, f := range listFiles(t, filepath.Join(e.dir, ns)) {
		if strings.HasPrefix(f, ".checkout-") {
			t.Errorf("checkout %s left behind", f)
		}
	}
}

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o600) }
