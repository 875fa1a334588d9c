package gitops

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/storer"
)

// ErrUnsafeTree is wrapped by the error for a commit whose tree cannot be checked out safely:
// two entries of one directory with the same name, a name git itself refuses, a symbolic link
// that leaves the repository or a mode that is neither a file, a directory, a link nor a
// submodule.
var ErrUnsafeTree = errors.New("unsafe tree")

// maxCheckoutEntries bounds the entries of one commit's tree. Trees are shared by hash, so a
// few kilobytes of trees naming each other can stand for billions of paths; the byte limit
// alone would not stop that, as empty files weigh nothing.
const maxCheckoutEntries = 1 << 20

// maxLinkHops bounds the links followed while resolving one link's target, as the kernel's
// ELOOP limit does.
const maxLinkHops = 40

// Git's tree entry modes: these and no others are checked out.
const (
	modeDir        = 0o040000
	modeFile       = 0o100644
	modeExecutable = 0o100755
	modeGroupWrite = 0o100664 // written by early versions of git
	modeSymlink    = 0o120000
	modeGitlink    = 0o160000 // a submodule's commit
)

// treeEntry is one entry of a tree object as stored, mode and all: go-git's own decoding turns
// unknown modes (a FIFO's, a device's) into submodules, which would hide them.
type treeEntry struct {
	mode uint32
	name string
	hash plumbing.Hash
}

// parseTree decodes a raw tree object.
func parseTree(data []byte) ([]treeEntry, error) {
	var out []treeEntry
	for len(data) > 0 {
		sp := bytes.IndexByte(data, ' ')
		if sp <= 0 {
			return nil, errors.New("malformed tree: no mode")
		}
		mode, err := strconv.ParseUint(string(data[:sp]), 8, 32)
		if err != nil {
			return nil, fmt.Errorf("malformed tree: mode %q", data[:sp])
		}
		data = data[sp+1:]
		nul := bytes.IndexByte(data, 0)
		if nul < 0 {
			return nil, errors.New("malformed tree: unterminated name")
		}
		name := string(data[:nul])
		data = data[nul+1:]
		if len(data) < len(plumbing.ZeroHash) {
			return nil, errors.New("malformed tree: truncated object id")
		}
		var h plumbing.Hash
		copy(h[:], data)
		data = data[len(h):]
		out = append(out, treeEntry{mode: uint32(mode), name: name, hash: h})
	}
	return out, nil
}

// checkName refuses the entry names git refuses to check out, and any that could not be a
// single file name on this system.
func checkName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("entry name %q", name)
	case strings.EqualFold(name, ".git"):
		return fmt.Errorf("entry name %q is reserved", name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("entry name %q holds a slash or NUL", name)
	}
	return nil
}

// plannedEntry is one path the checkout will create.
type plannedEntry struct {
	path   string // slash-separated, relative to the checkout
	mode   uint32
	hash   plumbing.Hash
	target string // a link's target
}

// checkoutPlan is every path of a commit's tree, checked before anything is written.
type checkoutPlan struct {
	entries []plannedEntry
	links   map[string]string // link path → target
	bytes   int64
}

// planCheckout reads and checks the whole tree of commit: names, modes, sizes and where every
// symbolic link leads. Nothing is written.
func planCheckout(s storer.EncodedObjectStorer, tree plumbing.Hash, maxBytes int64) (*checkoutPlan, error) {
	p := &checkoutPlan{links: map[string]string{}}
	if err := p.addTree(s, tree, "", maxBytes, 0); err != nil {
		return nil, err
	}
	for _, e := range p.entries {
		if e.mode == modeSymlink {
			p.links[e.path] = e.target
		}
	}
	for _, e := range p.entries {
		if e.mode != modeSymlink {
			continue
		}
		if err := p.checkLink(e.path, e.target); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (p *checkoutPlan) addTree(s storer.EncodedObjectStorer, h plumbing.Hash, dir string, maxBytes int64, depth int) error {
	if depth > 256 {
		return fmt.Errorf("%w: %s: directories nested too deep", ErrUnsafeTree, dir)
	}
	obj, err := s.EncodedObject(plumbing.TreeObject, h)
	if err != nil {
		return fmt.Errorf("reading tree of %s: %w", orRoot(dir), err)
	}
	data, err := readObject(obj, 64<<20)
	if err != nil {
		return fmt.Errorf("reading tree of %s: %w", orRoot(dir), err)
	}
	entries, err := parseTree(data)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrUnsafeTree, orRoot(dir), err)
	}
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		name := path.Join(dir, e.name)
		if err := checkName(e.name); err != nil {
			return fmt.Errorf("%w: in %s: %v", ErrUnsafeTree, orRoot(dir), err)
		}
		if seen[e.name] {
			return fmt.Errorf("%w: %s appears twice in its directory", ErrUnsafeTree, name)
		}
		seen[e.name] = true
		if len(p.entries) >= maxCheckoutEntries {
			return fmt.Errorf("%w: more than %d files and directories", ErrTooLarge, maxCheckoutEntries)
		}
		pe := plannedEntry{path: name, mode: e.mode, hash: e.hash}
		switch e.mode {
		case modeDir:
			p.entries = append(p.entries, pe)
			if err := p.addTree(s, e.hash, name, maxBytes, depth+1); err != nil {
				return err
			}
			continue
		case modeGitlink:
			// Submodules are not fetched: their path is left out of the checkout.
			continue
		case modeFile, modeExecutable, modeGroupWrite, modeSymlink:
		default:
			return fmt.Errorf("%w: %s has mode %o, which is not a file, a directory, a symbolic link or a submodule", ErrUnsafeTree, name, e.mode)
		}
		size, err := s.EncodedObjectSize(e.hash)
		if err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		p.bytes += size
		if maxBytes > 0 && p.bytes > maxBytes {
			return fmt.Errorf("%w: the files add up to more than %d bytes (at %s)", ErrTooLarge, maxBytes, name)
		}
		if e.mode == modeSymlink {
			obj, err := s.EncodedObject(plumbing.BlobObject, e.hash)
			if err != nil {
				return fmt.Errorf("reading %s: %w", name, err)
			}
			t, err := readObject(obj, 4096)
			if err != nil {
				return fmt.Errorf("reading %s: %w", name, err)
			}
			pe.target = string(t)
		}
		p.entries = append(p.entries, pe)
	}
	return nil
}

func orRoot(dir string) string {
	if dir == "" {
		return "the repository's root"
	}
	return dir
}

// readObject reads an object of at most limit bytes.
func readObject(obj plumbing.EncodedObject, limit int64) ([]byte, error) {
	if obj.Size() > limit {
		return nil, fmt.Errorf("object %s is over %d bytes", obj.Hash(), limit)
	}
	r, err := obj.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("object %s is over %d bytes", obj.Hash(), limit)
	}
	return data, nil
}

// checkLink makes sure the link at name resolves inside the checkout, following the links of
// the tree along the way as the kernel would: "a/.." where a is a link to "x/y" is x, not the
// directory holding a.
func (p *checkoutPlan) checkLink(name, target string) error {
	refuse := func(why string) error {
		return fmt.Errorf("%w: symbolic link %s -> %q %s", ErrUnsafeTree, name, target, why)
	}
	switch {
	case target == "":
		return refuse("is empty")
	case strings.ContainsRune(target, 0):
		return refuse("holds a NUL byte")
	case strings.HasPrefix(target, "/"):
		return refuse("is absolute: links must stay inside the repository")
	}
	// Resolve from the link's directory, component by component.
	var stack []string // the resolved directory, as components under the root
	if d := path.Dir(name); d != "." {
		stack = strings.Split(d, "/")
	}
	pending := strings.Split(target, "/")
	hops := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return refuse("leaves the repository")
			}
			stack = stack[:len(stack)-1]
			continue
		}
		cur := strings.Join(append(stack, c), "/")
		if t, ok := p.links[cur]; ok {
			hops++
			if hops > maxLinkHops {
				return refuse("goes through too many links")
			}
			if strings.HasPrefix(t, "/") {
				return refuse("goes through a link to an absolute path")
			}
			pending = append(strings.Split(t, "/"), pending...)
			continue
		}
		stack = append(stack, c)
	}
	return nil
}

// checkout writes the tree of commit into dir (which must not exist), refusing a tree whose
// files add up to more than maxBytes or that is unsafe (ErrUnsafeTree): the whole tree is
// checked before the first write. Every write goes through an os.Root on dir, files are
// created exclusively and links are made last, so nothing is ever written through a link.
// Submodules are left out: their commits are not fetched.
func (m *mirror) checkout(commitHash, dir string, maxBytes int64) error {
	commit := plumbing.NewHash(commitHash)
	c, err := m.repo.CommitObject(commit)
	if err != nil {
		return fmt.Errorf("reading commit %s: %w", commit, err)
	}
	plan, err := planCheckout(m.repo.Storer, c.TreeHash, maxBytes)
	if err != nil {
		return err
	}
	return plan.write(m.repo.Storer, dir)
}

// write creates the planned tree in dir.
func (p *checkoutPlan) write(s storer.EncodedObjectStorer, dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, e := range p.entries {
		switch e.mode {
		case modeDir:
			if err := root.Mkdir(e.path, 0o700); err != nil {
				return fmt.Errorf("writing %s: %w", e.path, err)
			}
		case modeSymlink:
		default:
			if err := writeBlob(s, root, e); err != nil {
				return err
			}
		}
	}
	for _, e := range p.entries {
		if e.mode == modeSymlink {
			if err := root.Symlink(e.target, e.path); err != nil {
				return fmt.Errorf("writing %s: %w", e.path, err)
			}
		}
	}
	return nil
}

func writeBlob(s storer.EncodedObjectStorer, root *os.Root, e plannedEntry) error {
	obj, err := s.EncodedObject(plumbing.BlobObject, e.hash)
	if err != nil {
		return fmt.Errorf("reading %s: %w", e.path, err)
	}
	r, err := obj.Reader()
	if err != nil {
		return fmt.Errorf("reading %s: %w", e.path, err)
	}
	defer r.Close()
	f, err := root.OpenFile(e.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", e.path, err)
	}
	_, err = io.Copy(f, io.LimitReader(r, obj.Size()))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", e.path, err)
	}
	return nil
}
