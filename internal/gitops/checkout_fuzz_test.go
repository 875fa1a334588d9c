package gitops

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/storage/memory"
)

// treeBuilder turns fuzz bytes into git trees in memory: entries with names, modes and link
// targets picked from the hostile ones (duplicates, "..", ".git", slashes, absolute and
// escaping links, special modes) or taken raw from the input.
type treeBuilder struct {
	data    []byte
	s       storer.EncodedObjectStorer
	outside string // an absolute directory outside the checkout
	entries int
}

func (b *treeBuilder) next() byte {
	if len(b.data) == 0 {
		return 0
	}
	c := b.data[0]
	b.data = b.data[1:]
	return c
}

// raw takes a short string from the input.
func (b *treeBuilder) raw() string {
	n := int(b.next() % 8)
	n = min(n, len(b.data))
	s := string(b.data[:n])
	b.data = b.data[n:]
	return s
}

var fuzzNames = []string{"a", "b", "d", "cm.yaml", "fleet.yaml", ".fleetignore", "..", ".", ".git", ".GIT", "x/y", "", "victim.conf", "a\x00b"}

var fuzzModes = []string{"100644", "100755", "120000", "40000", "160000", "100664", "10644", "20644", "60644", "140755", "0", "40755"}

func (b *treeBuilder) target() string {
	targets := []string{"../outside", "../../outside", "../../../outside", b.outside, "/dev/zero", ".", "..", "d", "d/..", "a/../..",
		"d/../../outside", "x/../../..", "a", "./a/../../outside", ""}
	c := b.next()
	if int(c) >= len(targets) {
		return b.raw()
	}
	return targets[c]
}

func (b *treeBuilder) blob(content string) plumbing.Hash {
	o := b.s.NewEncodedObject()
	o.SetType(plumbing.BlobObject)
	w, _ := o.Writer()
	w.Write([]byte(content))
	w.Close()
	h, _ := b.s.SetEncodedObject(o)
	return h
}

func (b *treeBuilder) tree(depth int) plumbing.Hash {
	var buf bytes.Buffer
	n := int(b.next() % 6)
	for range n {
		if b.entries > 200 {
			break
		}
		b.entries++
		mode := fuzzModes[int(b.next())%len(fuzzModes)]
		var name string
		if c := int(b.next()); c < len(fuzzNames)*16 {
			name = fuzzNames[c%len(fuzzNames)]
		} else {
			name = b.raw()
		}
		var h plumbing.Hash
		switch {
		case strings.HasPrefix(mode, "40"):
			if depth < 4 {
				h = b.tree(depth + 1)
			} else {
				h = b.tree(99) // an empty tree
			}
		case mode == "120000":
			h = b.blob(b.target())
		default:
			h = b.blob("owned " + b.raw())
		}
		fmt.Fprintf(&buf, "%s %s\x00", mode, name)
		buf.Write(h[:])
	}
	if depth == 99 {
		buf.Reset()
	}
	o := b.s.NewEncodedObject()
	o.SetType(plumbing.TreeObject)
	w, _ := o.Writer()
	w.Write(buf.Bytes())
	w.Close()
	h, _ := b.s.SetEncodedObject(o)
	return h
}

// FuzzCheckout checks out arbitrary trees: whatever the tree, nothing is written outside the
// checkout, a refused tree writes nothing at all, and a checkout that succeeds holds only
// regular files, directories and links that resolve inside it.
func FuzzCheckout(f *testing.F) {
	// Seeds, as tree(): entries; then per entry a mode, a name and a target or content.
	f.Add([]byte{2, 2, 2, 3, 3, 2, 1, 0, 12, 0})          // link d -> /abs/outside, then directory d/victim.conf
	f.Add([]byte{2, 2, 2, 1, 3, 2, 1, 0, 12, 0})          // link d -> ../../outside, then directory d/victim.conf
	f.Add([]byte{2, 3, 2, 1, 0, 12, 0, 2, 2, 1})          // directory d/victim.conf, then link d
	f.Add([]byte{2, 2, 0, 5, 2, 1, 9})                    // a -> ".", b -> "a/../..": out through a link
	f.Add([]byte{1, 6, 0, 0})                             // a FIFO's mode
	f.Add([]byte{2, 0, 3, 0, 3, 4, 1, 0, 0, 2, 'h', 'i'}) // plain files
	f.Add([]byte("hostile tree"))
	f.Fuzz(func(t *testing.T, data []byte) {
		top := t.TempDir()
		outside := filepath.Join(top, "outside")
		work := filepath.Join(top, "work")
		for _, d := range []string{outside, work} {
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		st := memory.NewStorage()
		b := &treeBuilder{data: data, s: st, outside: outside}
		tree := b.tree(0)
		sig := object.Signature{Name: "f", Email: "f@example.com", When: time.Unix(0, 0)}
		o := st.NewEncodedObject()
		(&object.Commit{Author: sig, Committer: sig, TreeHash: tree}).Encode(o)
		commit, _ := st.SetEncodedObject(o)
		st.SetReference(plumbing.NewHashReference(plumbing.HEAD, commit))
		repo, err := git.Open(st, nil)
		if err != nil {
			t.Fatal(err)
		}
		m := &mirror{repo: repo}
		dir := filepath.Join(work, "repo")

		err = m.checkout(commit.String(), dir, 1<<20)

		if left, _ := os.ReadDir(outside); len(left) > 0 {
			t.Fatalf("written outside the checkout: %v", left[0].Name())
		}
		if left, _ := os.ReadDir(work); len(left) > 1 {
			t.Fatalf("written next to the checkout: %v", left)
		}
		if err != nil {
			if errors.Is(err, ErrUnsafeTree) || errors.Is(err, ErrTooLarge) {
				if _, serr := os.Lstat(dir); serr == nil {
					t.Fatalf("refused tree (%v) was partly written", err)
				}
			}
			return
		}
		real, _ := filepath.EvalSymlinks(dir)
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			switch typ := d.Type(); {
			case typ.IsDir(), typ.IsRegular():
			case typ&fs.ModeSymlink != 0:
				// A link must resolve inside, or lead nowhere from inside.
				to, err := filepath.EvalSymlinks(p)
				if err != nil {
					target, _ := os.Readlink(p)
					if filepath.IsAbs(target) {
						t.Fatalf("%s links to absolute %q", p, target)
					}
					return nil
				}
				if to != real && !strings.HasPrefix(to, real+string(filepath.Separator)) {
					t.Fatalf("%s resolves to %s, outside the checkout", p, to)
				}
			default:
				t.Fatalf("%s has type %v", p, typ)
			}
			return nil
		})
	})
}
