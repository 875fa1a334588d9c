package gitops

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"github.com/go-git/go-git/v5/storage/filesystem"

	"flotilla.dev/api"
	"flotilla.dev/internal/secrets"
)

// mirror is the local clone of one GitRepo's repository: a bare repository kept between polls
// so that each fetch transfers only new objects.
type mirror struct {
	dir   string // the bare repository
	repo  *git.Repository
	store *limitedStorage
}

// ErrTooLarge is wrapped by the error for a commit whose tree is over Config.MaxRepoBytes.
var ErrTooLarge = errors.New("repository too large")

// mirrorDir is where a GitRepo's clone lives: its namespace and name, and a hash of the
// repository URL so that changing spec.repo starts a fresh clone.
func mirrorDir(root string, ns, name, repoURL string) string {
	h := sha256.Sum256([]byte(repoURL))
	return filepath.Join(root, ns, name+"-"+hex.EncodeToString(h[:6]))
}

// clonesOf lists the clones of the GitRepo ns/name, whatever their URL: a pattern like
// name-* would also match the clones of a GitRepo named name-web.
func clonesOf(root, ns, name string) []string {
	entries, _ := os.ReadDir(filepath.Join(root, ns))
	var out []string
	for _, e := range entries {
		if m := cloneName.FindStringSubmatch(e.Name()); m != nil && m[1] == name {
			out = append(out, filepath.Join(root, ns, e.Name()))
		}
	}
	return out
}

func openMirror(dir, repoURL string) (*mirror, error) {
	_, err := git.PlainOpen(dir)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		r, err := git.PlainInit(dir, true)
		if err != nil {
			return nil, fmt.Errorf("creating local clone: %w", err)
		}
		if _, err := r.CreateRemote(&config.RemoteConfig{Name: "origin", URLs: []string{repoURL}}); err != nil {
			return nil, fmt.Errorf("creating local clone: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("opening local clone: %w", err)
	}
	st := &limitedStorage{Storage: filesystem.NewStorage(osfs.New(dir), cache.NewObjectLRUDefault()), dir: dir}
	r, err := git.Open(st, nil)
	if err != nil {
		return nil, fmt.Errorf("opening local clone: %w", err)
	}
	return &mirror{dir: dir, repo: r, store: st}, nil
}

// fetchOptions are what a fetch needs besides refs: credentials and TLS settings.
type fetchOptions struct {
	auth            transport.AuthMethod
	caBundle        []byte
	insecureSkipTLS bool
	// secrets are values that must never appear in an error.
	secrets []string
	// maxBytes bounds the pack a fetch receives and each object in it (see limitedStorage).
	maxBytes int64
}

var fullHash = regexp.MustCompile(`^[0-9a-f]{40}$`)

// fetch brings the clone up to date and resolves the commit to deploy: the head of branch (the
// remote's default branch when none is set), or revision (a tag, a branch or a commit hash)
// when set. A pinned commit already in the clone needs no fetch at all.
func (m *mirror) fetch(ctx context.Context, spec *api.GitRepoSpec, o fetchOptions) (plumbing.Hash, error) {
	rev := spec.Revision
	if rev != "" && fullHash.MatchString(rev) {
		if _, err := m.repo.CommitObject(plumbing.NewHash(rev)); err == nil {
			return plumbing.NewHash(rev), nil
		}
	}
	m.store.maxBytes = o.maxBytes
	branch := spec.Branch
	if rev == "" && branch == "" {
		var err error
		if branch, err = m.defaultBranch(ctx, spec, o); err != nil {
			return plumbing.ZeroHash, err
		}
	}
	var specs []config.RefSpec
	if rev == "" {
		specs = []config.RefSpec{config.RefSpec(fmt.Sprintf("+refs/heads/%s:refs/remotes/origin/%s", branch, branch))}
	} else {
		specs = []config.RefSpec{"+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"}
	}
	err := m.repo.FetchContext(ctx, &git.FetchOptions{
		RemoteName: "origin", RefSpecs: specs, Auth: o.auth, Force: true, Tags: git.NoTags,
		CABundle: o.caBundle, InsecureSkipTLS: o.insecureSkipTLS,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return plumbing.ZeroHash, fetchError(spec, err, o.auth != nil, o.secrets)
	}
	if rev == "" {
		ref, err := m.repo.Reference(plumbing.NewRemoteReferenceName("origin", branch), true)
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("branch %q not found in %s", branch, redactURL(spec.Repo))
		}
		return ref.Hash(), nil
	}
	for _, name := range []plumbing.ReferenceName{plumbing.NewTagReferenceName(rev), plumbing.NewRemoteReferenceName("origin", rev)} {
		if ref, err := m.repo.Reference(name, true); err == nil {
			h := ref.Hash()
			// An annotated tag points at a tag object; deploy the commit it names.
			if tag, err := m.repo.TagObject(h); err == nil {
				c, err := tag.Commit()
				if err != nil {
					return plumbing.ZeroHash, fmt.Errorf("tag %q does not name a commit", rev)
				}
				h = c.Hash
			}
			return h, nil
		}
	}
	if h, err := m.repo.ResolveRevision(plumbing.Revision(rev)); err == nil {
		if _, err := m.repo.CommitObject(*h); err == nil {
			return *h, nil
		}
	}
	return plumbing.ZeroHash, fmt.Errorf("revision %q not found in %s", rev, redactURL(spec.Repo))
}

// defaultBranch is the branch the remote's HEAD points at, asked of the remote at each fetch so
// that a change of default branch is followed.
func (m *mirror) defaultBranch(ctx context.Context, spec *api.GitRepoSpec, o fetchOptions) (string, error) {
	remote, err := m.repo.Remote("origin")
	if err != nil {
		return "", fmt.Errorf("opening local clone: %w", err)
	}
	refs, err := remote.ListContext(ctx, &git.ListOptions{Auth: o.auth, CABundle: o.caBundle, InsecureSkipTLS: o.insecureSkipTLS})
	if err != nil {
		return "", fetchError(spec, err, o.auth != nil, o.secrets)
	}
	for _, r := range refs {
		if r.Name() == plumbing.HEAD && r.Type() == plumbing.SymbolicReference && r.Target().IsBranch() {
			return r.Target().Short(), nil
		}
	}
	return "", fmt.Errorf("%s does not say which branch is its default (no HEAD): set spec.branch", redactURL(spec.Repo))
}

// fetchError says what went wrong without credentials.
func fetchError(spec *api.GitRepoSpec, err error, withAuth bool, secrets []string) error {
	msg := err.Error()
	switch {
	case withAuth && (errors.Is(err, transport.ErrAuthenticationRequired) || errors.Is(err, transport.ErrAuthorizationFailed)):
		msg = "authentication failed: the credentials in spec.clientSecretName were refused"
	case errors.Is(err, transport.ErrAuthenticationRequired):
		msg = "authentication required: set spec.clientSecretName to a secret with credentials"
	case errors.Is(err, transport.ErrAuthorizationFailed):
		msg = "authentication failed: the credentials in spec.clientSecretName were refused"
	case errors.Is(err, transport.ErrRepositoryNotFound):
		msg = "repository not found"
	}
	return errors.New(scrub(fmt.Sprintf("fetching %s: %s", redactURL(spec.Repo), msg), secrets))
}

// scrub removes secret values from s, however they got there.
func scrub(s string, secrets []string) string {
	for _, v := range secrets {
		if len(v) >= 4 {
			s = strings.ReplaceAll(s, v, "***")
		}
	}
	return s
}

// redactURL hides a password written into a repository URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	return u.Redacted()
}

// authFor builds the credentials for repoURL from the GitRepo's client secret.
func authFor(repoURL string, sec *secrets.Secret, knownHostsFile string) (transport.AuthMethod, []string, error) {
	if sec == nil {
		return nil, nil, nil
	}
	d := sec.Data
	var secretValues []string
	for _, k := range []string{api.SecretKeyPassword, api.SecretKeyToken, api.SecretKeySSHPassphrase} {
		if v := string(d[k]); v != "" {
			secretValues = append(secretValues, v)
		}
	}
	if isSSH(repoURL) {
		key := d[api.SecretKeySSHPrivateKey]
		if len(key) == 0 {
			return nil, secretValues, fmt.Errorf("%s is an SSH URL, but the client secret has no %q", redactURL(repoURL), api.SecretKeySSHPrivateKey)
		}
		user := sshUser(repoURL)
		pk, err := gitssh.NewPublicKeys(user, key, string(d[api.SecretKeySSHPassphrase]))
		if err != nil {
			return nil, secretValues, fmt.Errorf("client secret: %q is not a usable private key (%s)", api.SecretKeySSHPrivateKey, scrub(err.Error(), secretValues))
		}
		hosts := d[api.SecretKeyKnownHosts]
		if len(hosts) == 0 {
			return nil, secretValues, fmt.Errorf("client secret has no %q: refusing to connect to %s without verifying its host key", api.SecretKeyKnownHosts, redactURL(repoURL))
		}
		if err := os.WriteFile(knownHostsFile, hosts, 0o600); err != nil {
			return nil, secretValues, err
		}
		db, err := gitssh.NewKnownHostsDb(knownHostsFile)
		if err != nil {
			return nil, secretValues, fmt.Errorf("client secret: %q is not a known_hosts file: %v", api.SecretKeyKnownHosts, err)
		}
		pk.HostKeyCallback = db.HostKeyCallback()
		return pk, secretValues, nil
	}
	user, pass := string(d[api.SecretKeyUsername]), string(d[api.SecretKeyPassword])
	if tok := string(d[api.SecretKeyToken]); tok != "" && pass == "" {
		// Git hosts take a token as the password of HTTP basic auth; GitHub and GitLab accept
		// any user name with it.
		pass = tok
		if user == "" {
			user = "x-access-token"
		}
	}
	if pass == "" && user == "" {
		return nil, secretValues, fmt.Errorf("client secret has neither %q nor %q", api.SecretKeyPassword, api.SecretKeyToken)
	}
	return &githttp.BasicAuth{Username: user, Password: pass}, secretValues, nil
}

// scpLike matches git's scp-style addresses: user@host:path.
var scpLike = regexp.MustCompile(`^([A-Za-z0-9._-]+)@([A-Za-z0-9.-]+):(.+)$`)

func isSSH(repoURL string) bool {
	return scpLike.MatchString(repoURL) || strings.HasPrefix(repoURL, "ssh://")
}

func sshUser(repoURL string) string {
	if m := scpLike.FindStringSubmatch(repoURL); m != nil {
		return m[1]
	}
	if u, err := url.Parse(repoURL); err == nil && u.User != nil && u.User.Username() != "" {
		return u.User.Username()
	}
	return "git"
}
