// Package access keeps an rbac.Authorizer in step with the stored access objects (Roles,
// RoleBindings, Projects and Users): it lists them once, then follows the store's watches,
// and tells subscribers which clusters each change covers, so that the fleet re-versions
// only those. It also deletes the role bindings of a deleted user.
package access

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"encoding/json"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/store"
)

// kinds are the kinds followed, in the order a load applies them.
var kinds = []string{api.KindRole, api.KindProject, api.KindRoleBinding, api.KindUser}

// Index is the loaded access model.
type Index struct {
	st  store.Store
	log *slog.Logger
	az  *rbac.Authorizer

	ready atomic.Bool

	subMu sync.Mutex
	subs  []func(rbac.Coverage)

	// mu orders changes: events of the four watches are applied one at a time.
	mu sync.Mutex
	// specs are the stored specs by kind and name, as raw JSON: a status write (a
	// project's usage, a user's last login) leaves the spec alone and changes nothing.
	specs map[string]map[string]string
	// pending are changes the authorizer refused for now because they refer to an object
	// another watch has not delivered yet (a binding before its role, a role deleted before
	// its bindings); they are retried after every change. Value "" is a deletion.
	pending map[store.Key]string
	loaded  bool
}

// New returns an index of st's access objects; Run loads and maintains it.
func New(st store.Store, log *slog.Logger) *Index {
	if log == nil {
		log = slog.Default()
	}
	return &Index{st: st, log: log, az: rbac.New(), specs: emptySpecs(), pending: map[store.Key]string{}}
}

func emptySpecs() map[string]map[string]string {
	m := map[string]map[string]string{}
	for _, k := range kinds {
		m[k] = map[string]string{}
	}
	return m
}

// Authorizer is the index's authorizer; it is the same one for the life of the Index.
func (x *Index) Authorizer() *rbac.Authorizer { return x.az }

// Ready reports whether the stored objects have been loaded.
func (x *Index) Ready() bool { return x.ready.Load() }

// Subscribe registers fn to be told the clusters each change covers. fn runs on the
// index's goroutine after the authorizer has the change; it must not block.
func (x *Index) Subscribe(fn func(rbac.Coverage)) {
	x.subMu.Lock()
	x.subs = append(x.subs, fn)
	x.subMu.Unlock()
}

func (x *Index) notify(cov rbac.Coverage) {
	if cov.Empty() {
		return
	}
	x.subMu.Lock()
	subs := append([]func(rbac.Coverage){}, x.subs...)
	x.subMu.Unlock()
	for _, fn := range subs {
		fn(cov)
	}
}

// Run loads the access objects and follows their changes until ctx ends. After a watch
// loses its history (compaction) it loads again, reconciling the authorizer with the store.
func (x *Index) Run(ctx context.Context) error {
	for {
		rev, err := x.load(ctx)
		if err == nil {
			x.ready.Store(true)
			err = x.follow(ctx, rev)
		}
		if ctx.Err() != nil {
			return nil
		}
		x.log.Warn("access index reloading", "err", err)
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return nil
		}
	}
}

// load lists every access object at one revision and makes the authorizer hold exactly
// them. The first load is one rbac Load; a reload applies the differences and covers every
// cluster.
func (x *Index) load(ctx context.Context) (int64, error) {
	var rev int64
	got := emptySpecs()
	for _, kind := range kinds {
		opts := store.ListOptions{Kind: kind, Limit: 5000}
		for {
			res, err := x.st.List(ctx, opts)
			if err != nil {
				return 0, fmt.Errorf("listing %s: %w", kind, err)
			}
			if rev == 0 {
				rev = res.Revision
			}
			for _, raw := range res.Items {
				obj, err := store.Decode(raw)
				if err != nil {
					return 0, fmt.Errorf("decoding a %s: %w", kind, err)
				}
				if kind == api.KindRole && builtin(obj.Metadata.Name) {
					continue // the index has them from the code, as shipped
				}
				got[kind][obj.Metadata.Name] = specOf(obj)
			}
			if res.Continue == "" {
				break
			}
			opts.Continue = res.Continue
		}
	}
	// Later kinds were listed at later revisions: the watches replay from the first, and a
	// replayed event repeats or precedes what was listed, converging on the same state.
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.loaded {
		x.loaded = true
		roles := decodeAll[api.RoleSpec](x.log, got[api.KindRole])
		projects := decodeAll[api.ProjectSpec](x.log, got[api.KindProject])
		bindings := decodeAll[api.RoleBindingSpec](x.log, got[api.KindRoleBinding])
		if err := x.az.Load(roles, projects, bindings); err != nil {
			// Objects the API validated on the way in; one that fails now is skipped.
			x.log.Warn("access objects skipped", "err", err)
		}
		for name, raw := range got[api.KindUser] {
			x.setUser(name, raw)
		}
		x.specs = got
		return rev, nil
	}
	// A reload: deletions first (bindings before what they refer to), then puts.
	for _, kind := range []string{api.KindRoleBinding, api.KindProject, api.KindRole, api.KindUser} {
		for name := range x.specs[kind] {
			if _, ok := got[kind][name]; !ok {
				x.change(store.Key{Kind: kind, Name: name}, "")
			}
		}
	}
	for _, kind := range kinds {
		for name, raw := range got[kind] {
			x.change(store.Key{Kind: kind, Name: name}, raw)
		}
	}
	x.retry()
	return rev, nil
}

func specOf(obj *api.Object) string {
	s := bytes.TrimSpace(obj.Spec)
	if len(s) == 0 {
		return "{}"
	}
	return string(s)
}

func decodeAll[T any](log *slog.Logger, raw map[string]string) map[string]T {
	out := make(map[string]T, len(raw))
	for name, r := range raw {
		var v T
		if err := json.Unmarshal([]byte(r), &v); err != nil {
			log.Warn("undecodable access object skipped", "name", name, "err", err)
			continue
		}
		out[name] = v
	}
	return out
}

// follow applies watch events of the four kinds from rev on.
func (x *Index) follow(ctx context.Context, rev int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(kinds))
	for _, kind := range kinds {
		go func() {
			from := rev
			for {
				ch, err := x.st.Watch(ctx, store.WatchOptions{Kind: kind, Revision: from})
				if err != nil {
					errc <- fmt.Errorf("watching %s: %w", kind, err)
					return
				}
				for ev := range ch {
					if ev.Err != nil {
						if errors.Is(ev.Err, store.ErrCompacted) {
							errc <- ev.Err
							return
						}
						break // fell behind: resume from the last revision applied
					}
					x.apply(ctx, kind, ev)
					from = ev.Revision
				}
				if ctx.Err() != nil {
					errc <- nil
					return
				}
			}
		}()
	}
	return <-errc
}

func (x *Index) apply(ctx context.Context, kind string, ev store.Event) {
	obj, err := store.Decode(ev.Object)
	if err != nil {
		x.log.Warn("undecodable watch event", "kind", kind, "err", err)
		return
	}
	name := obj.Metadata.Name
	raw := specOf(obj)
	if ev.Type == api.Deleted {
		raw = ""
	}
	x.mu.Lock()
	var orphans []string
	if kind == api.KindUser && raw == "" {
		if _, known := x.specs[kind][name]; known {
			orphans = x.az.BindingsOf(api.SubjectUser, name)
		}
	}
	cov := x.change(store.Key{Kind: kind, Name: name}, raw)
	x.mu.Unlock()
	x.notify(cov)
	x.notify(x.retryLocked())
	for _, b := range orphans {
		// A deleted user's access goes with them: their bindings would otherwise still
		// reach the clusters (and a new user of that name would inherit them).
		_, err := x.st.Delete(ctx, store.Key{Kind: api.KindRoleBinding, Name: b}, "")
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			x.log.Error("deleting a deleted user's role binding", "user", name, "binding", b, "err", err)
		}
	}
}

func (x *Index) retryLocked() rbac.Coverage {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.retry()
}

// change makes the authorizer hold raw as the spec of key ("" to delete it) and returns the
// clusters it covers. Callers hold x.mu.
func (x *Index) change(key store.Key, raw string) rbac.Coverage {
	if key.Kind == api.KindRole && builtin(key.Name) {
		// Stored by the server as shipped, for listing; the index has them from the code.
		return rbac.Coverage{}
	}
	old, known := x.specs[key.Kind][key.Name]
	if raw != "" && known && old == raw {
		delete(x.pending, key)
		return rbac.Coverage{}
	}
	cov, err := x.put(key, raw)
	if err != nil {
		// Refused: the spec may refer to something not delivered yet. The store holds it,
		// so the index records it as pending and retries.
		x.pending[key] = raw
		x.log.Debug("access change pending", "kind", key.Kind, "name", key.Name, "err", err)
		return rbac.Coverage{}
	}
	delete(x.pending, key)
	return x.record(key, raw, cov)
}

// record notes key's new spec and returns cov with the clusters the old spec reached: the
// API may have applied the change to the authorizer already (as it stores it), and then the
// authorizer's own answer names only where the object is now, not where it was.
func (x *Index) record(key store.Key, raw string, cov rbac.Coverage) rbac.Coverage {
	if old, ok := x.specs[key.Kind][key.Name]; ok {
		for _, s := range x.specCoverage(key.Kind, old).Sets {
			cov = merge(cov, s)
		}
	}
	if raw == "" {
		delete(x.specs[key.Kind], key.Name)
	} else {
		x.specs[key.Kind][key.Name] = raw
	}
	return cov
}

// specCoverage is the clusters a stored binding or project reaches, from its spec alone.
// It may name more than the authorizer would (a binding whose role pushes nothing
// downstream); re-versioning a cluster whose objects did not change costs one compile.
func (x *Index) specCoverage(kind, raw string) rbac.Coverage {
	var set rbac.ClusterSet
	switch kind {
	case api.KindRoleBinding:
		var spec api.RoleBindingSpec
		if json.Unmarshal([]byte(raw), &spec) != nil {
			return rbac.Coverage{}
		}
		set = x.scopeSet(spec.Scope)
	case api.KindProject:
		var spec api.ProjectSpec
		if json.Unmarshal([]byte(raw), &spec) != nil {
			return rbac.Coverage{}
		}
		set = selectorSet("", spec.ClusterSelector)
	}
	if set == (rbac.ClusterSet{}) {
		return rbac.Coverage{}
	}
	return rbac.Coverage{Sets: []rbac.ClusterSet{set}}
}

// scopeSet mirrors rbac's reading of a binding's scope.
func (x *Index) scopeSet(sc api.BindingScope) rbac.ClusterSet {
	switch {
	case sc.Global:
		return rbac.ClusterSet{All: true}
	case sc.ClusterSelector != nil:
		return selectorSet(sc.Workspace, sc.ClusterSelector)
	case sc.ClusterGroup != "":
		return rbac.ClusterSet{Workspace: cmp.Or(sc.Workspace, api.DefaultNamespace), ClusterGroup: sc.ClusterGroup}
	case sc.Cluster != "":
		return rbac.ClusterSet{Workspace: cmp.Or(sc.Workspace, api.DefaultNamespace), Cluster: sc.Cluster}
	case sc.Project != "":
		var p api.ProjectSpec
		if raw, ok := x.specs[api.KindProject][sc.Project]; ok && json.Unmarshal([]byte(raw), &p) == nil {
			return selectorSet("", p.ClusterSelector)
		}
		return rbac.ClusterSet{}
	}
	return rbac.ClusterSet{Workspace: sc.Workspace}
}

// selectorSet is the clusters of workspace (any, when "") a selector picks: none for nil,
// every one for the empty selector.
func selectorSet(workspace string, sel *api.LabelSelector) rbac.ClusterSet {
	switch {
	case sel == nil:
		return rbac.ClusterSet{}
	case len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0 && workspace == "":
		return rbac.ClusterSet{All: true}
	case len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0:
		return rbac.ClusterSet{Workspace: workspace}
	}
	return rbac.ClusterSet{Workspace: workspace, Selector: sel}
}

// notFound reports whether the authorizer refused a deletion because it does not hold the
// object: the API deletes from the authorizer as it deletes from the store, before the
// watch event comes. (Its names are DNS names, so the suffix cannot come from one.)
func notFound(err error) bool { return err != nil && strings.HasSuffix(err.Error(), " not found") }

// retry applies pending changes until none succeeds. Callers hold x.mu.
func (x *Index) retry() rbac.Coverage {
	var all rbac.Coverage
	for progress := true; progress && len(x.pending) > 0; {
		progress = false
		for key, raw := range x.pending {
			cov, err := x.put(key, raw)
			if err != nil {
				continue
			}
			progress = true
			delete(x.pending, key)
			cov = x.record(key, raw, cov)
			for _, s := range cov.Sets {
				all = merge(all, s)
			}
		}
	}
	return all
}

func merge(c rbac.Coverage, s rbac.ClusterSet) rbac.Coverage {
	if c.All() {
		return c
	}
	if s.All {
		return rbac.Coverage{Sets: []rbac.ClusterSet{{All: true}}}
	}
	c.Sets = append(c.Sets, s)
	return c
}

// put applies one change to the authorizer.
func (x *Index) put(key store.Key, raw string) (rbac.Coverage, error) {
	switch key.Kind {
	case api.KindUser:
		if raw == "" {
			x.az.SetUserDisabled(key.Name, false)
			return rbac.Coverage{}, nil
		}
		return rbac.Coverage{}, x.setUser(key.Name, raw)
	case api.KindRole:
		if raw == "" {
			if _, ok := x.specs[key.Kind][key.Name]; !ok {
				return rbac.Coverage{}, nil
			}
			if err := x.az.DeleteRole(key.Name); !notFound(err) {
				return rbac.Coverage{}, err
			}
			return rbac.Coverage{}, nil
		}
		var spec api.RoleSpec
		if err := json.Unmarshal([]byte(raw), &spec); err != nil {
			return rbac.Coverage{}, fmt.Errorf("decoding role %q: %w", key.Name, err)
		}
		return x.az.PutRole(key.Name, spec)
	case api.KindProject:
		if raw == "" {
			if _, ok := x.specs[key.Kind][key.Name]; !ok {
				return rbac.Coverage{}, nil
			}
			cov, err := x.az.DeleteProject(key.Name)
			if notFound(err) {
				err = nil
			}
			return cov, err
		}
		var spec api.ProjectSpec
		if err := json.Unmarshal([]byte(raw), &spec); err != nil {
			return rbac.Coverage{}, fmt.Errorf("decoding project %q: %w", key.Name, err)
		}
		return x.az.PutProject(key.Name, spec)
	case api.KindRoleBinding:
		if raw == "" {
			if _, ok := x.specs[key.Kind][key.Name]; !ok {
				return rbac.Coverage{}, nil
			}
			cov, err := x.az.DeleteBinding(key.Name)
			if notFound(err) {
				err = nil
			}
			return cov, err
		}
		var spec api.RoleBindingSpec
		if err := json.Unmarshal([]byte(raw), &spec); err != nil {
			return rbac.Coverage{}, fmt.Errorf("decoding role binding %q: %w", key.Name, err)
		}
		return x.az.PutBinding(key.Name, spec)
	}
	return rbac.Coverage{}, fmt.Errorf("unknown kind %q", key.Kind)
}

func (x *Index) setUser(name, raw string) error {
	var spec api.UserSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		return fmt.Errorf("decoding user %q: %w", name, err)
	}
	x.az.SetUserDisabled(name, spec.Disabled)
	return nil
}

func builtin(role string) bool {
	_, ok := rbac.Builtin()[role]
	return ok
}
