package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"flotilla.dev/api"
	"flotilla.dev/internal/bundle"
)

// stateDir is the agent's state directory:
//
//	credentials.json  the cluster's credential, server URL and CA (unless kept in a Secret)
//	desired.json      the last desired state received
//	status.json       unsent status, what was last acknowledged, the next report sequence
//	content/<hex>     content archives by sha256
//
// Every file is written whole to a temporary file and renamed over the old one, so a crash
// leaves either the old or the new version, never half of one. Files are 0600: the
// credential is a secret, and bundle content may hold secrets too.
type stateDir struct {
	dir string
}

func openStateDir(dir string) (*stateDir, error) {
	if err := os.MkdirAll(filepath.Join(dir, "content"), 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	return &stateDir{dir: dir}, nil
}

func (s *stateDir) path(name string) string { return filepath.Join(s.dir, name) }

// writeFile replaces name atomically.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// writeJSON stores v as name.
func (s *stateDir) writeJSON(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.path(name), data); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// readJSON loads name into v, and reports false when it does not exist.
func (s *stateDir) readJSON(name string, v any) (bool, error) {
	data, err := os.ReadFile(s.path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", name, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("reading %s: %w", s.path(name), err)
	}
	return true, nil
}

const desiredFile = "desired.json"

func (s *stateDir) saveDesired(ds *api.DesiredState) error { return s.writeJSON(desiredFile, ds) }

// loadDesired returns the last desired state, or nil if there is none.
func (s *stateDir) loadDesired() (*api.DesiredState, error) {
	var ds api.DesiredState
	ok, err := s.readJSON(desiredFile, &ds)
	if !ok || err != nil {
		return nil, err
	}
	return &ds, nil
}

// forgetRegistration removes the desired state and the status queue.
func (s *stateDir) forgetRegistration() error {
	for _, name := range []string{desiredFile, statusFile} {
		if err := os.Remove(s.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("forgetting the old registration: %w", err)
		}
	}
	return nil
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// contentPath returns where the archive of digest is cached. The digest comes from the
// server and becomes a file name, so it must be exactly a sha256 digest.
func (s *stateDir) contentPath(digest string) (string, error) {
	if !digestRE.MatchString(digest) {
		return "", fmt.Errorf("invalid content digest %q", digest)
	}
	return filepath.Join(s.dir, "content", strings.TrimPrefix(digest, "sha256:")), nil
}

func (s *stateDir) hasContent(digest string) bool {
	p, err := s.contentPath(digest)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// putContent stores an archive after checking that it is what its digest says.
func (s *stateDir) putContent(digest string, data []byte) error {
	p, err := s.contentPath(digest)
	if err != nil {
		return err
	}
	if got := bundle.Digest(data); got != digest {
		return fmt.Errorf("content %s: received data has digest %s", digest, got)
	}
	return writeFileAtomic(p, data)
}

// content reads a cached archive, checking its digest again: a cache on an edge box's
// flash storage can rot, and rendering garbage would be worse than fetching it anew.
func (s *stateDir) content(digest string) ([]byte, error) {
	p, err := s.contentPath(digest)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	if got := bundle.Digest(data); got != digest {
		os.Remove(p)
		return nil, fmt.Errorf("cached content %s is corrupt (digest %s); removed it", digest, got)
	}
	return data, nil
}

// pruneContent removes cached archives that keep is false for.
func (s *stateDir) pruneContent(keep map[string]bool) error {
	entries, err := os.ReadDir(filepath.Join(s.dir, "content"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !keep["sha256:"+e.Name()] {
			if err := os.Remove(filepath.Join(s.dir, "content", e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}
