package gitops

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// cloneName matches a clone's directory under its namespace: the GitRepo's name, then 12 hex
// digits of the repository URL's hash (see mirrorDir).
var cloneName = regexp.MustCompile(`^(.+)-[0-9a-f]{12}$`)

// removeLeftovers runs once at start, before any poller: it removes the checkouts a stopped
// server left behind, packs a fetch was receiving, and the clones of GitRepos deleted while
// the server was down (a running controller removes those itself). Clones of GitRepos that
// exist stay, so a restart fetches only what is new.
func (c *Controller) removeLeftovers(ctx context.Context) {
	exists, err := c.gitRepoKeys(ctx)
	if err != nil {
		// Without the list no clone can be judged; checkouts are stale whatever it says.
		c.log.Warn("listing GitRepos to remove the clones of deleted ones", "err", err)
	}
	nss, _ := os.ReadDir(c.cfg.Dir)
	var checkouts, clones int
	for _, nsDir := range nss {
		if !nsDir.IsDir() {
			continue
		}
		ns := filepath.Join(c.cfg.Dir, nsDir.Name())
		entries, _ := os.ReadDir(ns)
		for _, e := range entries {
			p := filepath.Join(ns, e.Name())
			if strings.HasPrefix(e.Name(), ".checkout-") {
				if os.RemoveAll(p) == nil {
					checkouts++
				}
				continue
			}
			m := cloneName.FindStringSubmatch(e.Name())
			if m == nil || !e.IsDir() {
				continue
			}
			if exists != nil && !exists[store.Key{Kind: api.KindGitRepo, Namespace: nsDir.Name(), Name: m[1]}] {
				if os.RemoveAll(p) == nil {
					clones++
				}
				continue
			}
			// Packs being received (by go-git or by limitedStorage) when the server stopped.
			tmp, _ := filepath.Glob(filepath.Join(p, "objects", "pack", "tmp_*"))
			for _, t := range tmp {
				os.Remove(t)
			}
		}
	}
	if checkouts+clones > 0 {
		c.log.Info("removed leftovers of a previous run", "checkouts", checkouts, "clones", clones)
	}
}

// gitRepoKeys lists every GitRepo.
func (c *Controller) gitRepoKeys(ctx context.Context) (map[store.Key]bool, error) {
	keys := map[store.Key]bool{}
	cont := ""
	for {
		res, err := c.cfg.Store.List(ctx, store.ListOptions{Kind: api.KindGitRepo, Limit: 500, Continue: cont})
		if err != nil {
			return nil, err
		}
		for _, raw := range res.Items {
			obj, err := store.Decode(raw)
			if err != nil {
				return nil, err
			}
			keys[store.KeyOf(obj)] = true
		}
		if res.Continue == "" {
			return keys, nil
		}
		cont = res.Continue
	}
}
