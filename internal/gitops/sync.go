package gitops

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/secrets"
	"flotilla.dev/internal/store"
)

// sync fetches one GitRepo and, when there is a new commit or a new spec, writes its bundles.
func (c *Controller) sync(ctx context.Context, w *worker) {
	obj := w.current()
	var spec api.GitRepoSpec
	if err := json.Unmarshal(obj.Spec, &spec); err != nil {
		return
	}
	log := c.log.With("gitrepo", obj.Metadata.Namespace+"/"+obj.Metadata.Name)
	if !c.sem.acquire(ctx) {
		return
	}
	defer c.sem.release()
	force := w.force.Swap(false)
	start := time.Now()
	now := start.UTC().Truncate(time.Second)
	// The sync's own budget: whatever a repository holds, the worker is free again after it.
	sctx, cancel := context.WithTimeoutCause(ctx, c.cfg.SyncTimeout, &bundle.BudgetError{
		Budget: "sync time", Limit: c.cfg.SyncTimeout.String(), Flag: FlagSyncTimeout, What: "fetch, scan and render of one commit"})
	defer cancel()
	sctx = bundle.WithBudget(sctx, c.cfg.RenderBudget)

	m, commit, err := c.fetch(sctx, obj, &spec)
	if ctx.Err() != nil {
		return
	}
	if err != nil && c.overran(sctx, err) {
		c.overrun(ctx, log, w, obj, attempt{generation: obj.Metadata.Generation}, context.Cause(sctx), now)
		return
	}
	if err != nil {
		log.Warn("fetch failed", "err", err)
		c.setStatus(ctx, obj, func(st *api.GitRepoStatus) {
			st.LastPollingTime = &now
			st.Error = err.Error()
			setCondition(&st.Conditions, conditionPoll, false, "FetchFailed", err.Error(), now)
		})
		return
	}
	a := attempt{commit: commit, generation: obj.Metadata.Generation}
	polled := func(st *api.GitRepoStatus) {
		st.LastPollingTime = &now
		setCondition(&st.Conditions, conditionPoll, true, "Fetched", "", now)
	}
	switch {
	case a == w.deployed:
		c.setStatus(ctx, obj, func(st *api.GitRepoStatus) {
			polled(st)
			st.Error = ""
		})
		return
	case a == w.failed && !force && time.Since(w.failedAt) < c.cfg.RetryFailed:
		c.setStatus(ctx, obj, func(st *api.GitRepoStatus) {
			polled(st)
			st.Error = w.failedErr
		})
		return
	case spec.Paused:
		c.setStatus(ctx, obj, func(st *api.GitRepoStatus) {
			polled(st)
			setCondition(&st.Conditions, conditionAccept, false, "Paused", fmt.Sprintf("paused: commit %s is not deployed", short(commit)), now)
		})
		return
	}
	names, err := c.deploy(ctx, sctx, log, m, obj, &spec, commit)
	if ctx.Err() != nil {
		return
	}
	if err != nil && c.overran(sctx, err) {
		if cause := context.Cause(sctx); sctx.Err() != nil && cause != nil {
			err = fmt.Errorf("commit %s: %w", short(commit), cause)
		}
		c.overrun(ctx, log, w, obj, a, err, now)
		return
	}
	if err != nil {
		log.Warn("commit not deployed", "commit", short(commit), "err", err)
		w.failed, w.failedAt, w.failedErr = a, time.Now(), err.Error()
		c.setStatus(ctx, obj, func(st *api.GitRepoStatus) {
			polled(st)
			st.Error = err.Error()
			setCondition(&st.Conditions, conditionAccept, false, "Invalid", err.Error(), now)
		})
		return
	}
	w.deployed, w.failed = a, attempt{}
	w.mu.Lock()
	w.overruns, w.until = 0, time.Time{}
	w.mu.Unlock()
	log.Info("deployed", "commit", short(commit), "bundles", len(names), "took", time.Since(start).Round(time.Millisecond))
	c.setStatus(ctx, obj, func(st *api.GitRepoStatus) {
		polled(st)
		st.Commit = commit
		st.ObservedGeneration = obj.Metadata.Generation
		st.Bundles = names
		st.Error = ""
		setCondition(&st.Conditions, conditionAccept, true, "Deployed", "", now)
		clearCondition(&st.Conditions, conditionStalled, now)
	})
}

// overran reports whether a sync failed because it overran a budget: a render's, or the
// sync's own time.
func (c *Controller) overran(sctx context.Context, err error) bool {
	if errors.Is(err, bundle.ErrBudgetExceeded) {
		return true
	}
	var be *bundle.BudgetError
	return sctx.Err() != nil && errors.As(context.Cause(sctx), &be)
}

// overrun records that the GitRepo's sync overran a budget: the GitRepo is Stalled, with the
// budget and the flag that raises it, and backs off (doubling, up to MaxBackoff) so that it
// cannot take workers from other GitRepos by retrying; a spec change ends the backoff.
func (c *Controller) overrun(ctx context.Context, log *slog.Logger, w *worker, obj *api.Object, a attempt, err error, now time.Time) {
	w.mu.Lock()
	backoff := c.cfg.RetryFailed << min(w.overruns, 20)
	if backoff <= 0 || backoff > c.cfg.MaxBackoff {
		backoff = c.cfg.MaxBackoff
	}
	w.overruns++
	w.until = time.Now().Add(backoff)
	w.mu.Unlock()
	w.failed, w.failedAt, w.failedErr = a, time.Now(), err.Error()
	msg := fmt.Sprintf("%s; retrying in %s, or when the GitRepo's spec changes", err, backoff)
	log.Warn("sync overran its budget", "err", err, "backoff", backoff)
	c.setStatus(ctx, obj, func(st *api.GitRepoStatus) {
		st.LastPollingTime = &now
		st.Error = err.Error()
		setCondition(&st.Conditions, conditionAccept, false, reasonBudget, err.Error(), now)
		setCondition(&st.Conditions, conditionStalled, true, reasonBudget, msg, now)
	})
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

// fetch brings the GitRepo's clone up to date and returns the commit to deploy.
func (c *Controller) fetch(ctx context.Context, obj *api.Object, spec *api.GitRepoSpec) (*mirror, string, error) {
	dir := mirrorDir(c.cfg.Dir, obj.Metadata.Namespace, obj.Metadata.Name, spec.Repo)
	// A clone of a former spec.repo is of no more use.
	if old := clonesOf(c.cfg.Dir, obj.Metadata.Namespace, obj.Metadata.Name); len(old) > 0 {
		for _, o := range old {
			if o != dir {
				os.RemoveAll(o)
			}
		}
	}
	m, err := openMirror(dir, spec.Repo)
	if err != nil {
		return nil, "", err
	}
	var o fetchOptions
	if spec.ClientSecretName != "" {
		sec, err := c.cfg.Secrets.Get(ctx, obj.Metadata.Namespace, spec.ClientSecretName)
		if err != nil {
			return nil, "", fmt.Errorf("spec.clientSecretName: %w", err)
		}
		if o.auth, o.secrets, err = authFor(spec.Repo, sec, filepath.Join(dir, "flotilla_known_hosts")); err != nil {
			return nil, "", err
		}
	}
	o.caBundle = []byte(spec.CABundle)
	o.insecureSkipTLS = spec.InsecureSkipTLSVerify
	o.maxBytes = c.cfg.MaxRepoBytes
	fctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	h, err := m.fetch(fctx, spec, o)
	if err != nil {
		return nil, "", err
	}
	return m, h.String(), nil
}

// deploy turns commit into the GitRepo's bundles. Everything is read, rendered and checked
// before the first write, so a commit that cannot be deployed changes nothing. Reading and
// rendering run under sctx, the sync's budget; writes under ctx only, so that the budget
// running out cannot leave a commit half written.
func (c *Controller) deploy(ctx, sctx context.Context, log *slog.Logger, m *mirror, obj *api.Object, spec *api.GitRepoSpec, commit string) ([]string, error) {
	work, err := os.MkdirTemp(filepath.Dir(m.dir), ".checkout-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	tree := filepath.Join(work, "repo")
	if err := m.checkout(commit, tree, c.cfg.MaxRepoBytes); err != nil {
		return nil, fmt.Errorf("commit %s: %w", short(commit), err)
	}
	if spec.HelmSecretNameForPaths != "" {
		// Charts needing those credentials would fail to download with a less clear error.
		return nil, errors.New("spec.helmSecretNameForPaths is not supported yet: use spec.helmSecretName (with spec.helmRepoURLRegex)")
	}
	hc, err := c.chartClient(ctx, obj.Metadata.Namespace, spec)
	if err != nil {
		return nil, err
	}
	sources, err := bundle.Scan(sctx, tree, bundle.ScanOptions{Paths: spec.Paths, NamePrefix: obj.Metadata.Name,
		Limits: c.cfg.Limits, HTTPClient: hc, RegistryPlainHTTP: c.cfg.RegistryPlainHTTP})
	if err != nil {
		return nil, fmt.Errorf("commit %s: %s", short(commit), stripRoot(err.Error(), tree))
	}

	type planned struct {
		obj     *api.Object
		content []byte
		digest  string
	}
	var plan []planned
	keep := map[string]bool{}
	gitTargets := make([]api.BundleTarget, len(spec.Targets))
	for i, t := range spec.Targets {
		gitTargets[i] = api.BundleTarget{Name: t.Name, ClusterName: t.ClusterName, ClusterSelector: t.ClusterSelector,
			ClusterGroup: t.ClusterGroup, ClusterGroupSelector: t.ClusterGroupSelector, DoNotDeploy: t.DoNotDeploy}
	}
	for _, src := range sources {
		data, digest, err := bundle.Pack(src.Files)
		if err != nil {
			return nil, fmt.Errorf("commit %s: bundle %s (%s): %s", short(commit), src.Name, src.Path, stripRoot(err.Error(), tree))
		}
		b := bundleObject(obj, spec, src, gitTargets, digest, commit)
		if err := checkRenders(sctx, b, src); errors.Is(err, bundle.ErrBudgetExceeded) {
			// Kept in the chain: the sync reports it as an overrun.
			return nil, fmt.Errorf("commit %s: bundle %s (path %s): %w", short(commit), src.Name, src.Path, err)
		} else if err != nil {
			return nil, fmt.Errorf("commit %s: bundle %s (path %s): %s", short(commit), src.Name, src.Path, stripRoot(err.Error(), tree))
		}
		check := b.DeepCopy()
		if err := resource.Prepare(check); err != nil {
			return nil, fmt.Errorf("commit %s: bundle %s (%s/fleet.yaml): %v", short(commit), src.Name, src.Path, err)
		}
		b.Spec = check.Spec
		plan = append(plan, planned{obj: b, content: data, digest: digest})
		keep[src.Name] = true
	}

	owned, err := c.ownedBundles(ctx, store.KeyOf(obj))
	if err != nil {
		return nil, err
	}
	for _, p := range plan {
		if _, ok := owned[p.obj.Metadata.Name]; ok {
			continue
		}
		other, err := c.cfg.Store.Get(ctx, store.KeyOf(p.obj))
		if err == nil {
			return nil, fmt.Errorf("commit %s: bundle %s (path %s) already exists and does not belong to this GitRepo (it is labelled %s=%q)",
				short(commit), p.obj.Metadata.Name, p.obj.Metadata.Annotations[AnnotationPath], LabelGitRepo, other.Metadata.Labels[LabelGitRepo])
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}

	var names []string
	for _, p := range plan {
		if err := c.cfg.Contents.PutContent(ctx, p.digest, p.content); err != nil {
			return nil, fmt.Errorf("storing content of bundle %s: %w", p.obj.Metadata.Name, err)
		}
		if err := c.writeBundle(ctx, p.obj, owned[p.obj.Metadata.Name]); err != nil {
			return nil, fmt.Errorf("writing bundle %s: %w", p.obj.Metadata.Name, err)
		}
		names = append(names, p.obj.Metadata.Name)
	}
	removed, err := c.deleteBundles(ctx, store.KeyOf(obj), keep)
	if err != nil {
		return nil, err
	}
	if len(removed) > 0 {
		log.Info("bundles no longer in the repository deleted", "bundles", removed)
	}
	slices.Sort(names)
	return names, nil
}

// checkRenders renders the bundle once with its own options and once per target
// customisation, so that a chart, kustomization or manifest that cannot render is refused here,
// with its file named, rather than on every cluster. Helm values templated per cluster are
// only checked where they template without a real cluster's labels; those that need one are
// the cluster's to report.
func checkRenders(ctx context.Context, b *api.Object, src bundle.Source) error {
	var spec api.BundleSpec
	if err := json.Unmarshal(b.Spec, &spec); err != nil {
		return err
	}
	c := bundle.Cluster{Name: "render-check", Namespace: b.Metadata.Namespace, Labels: map[string]string{}}
	type variant struct {
		name string // the target's; "" for the bundle's own options
		opts api.BundleDeploymentOptions
	}
	variants := []variant{{"", spec.BundleDeploymentOptions}}
	for i := range spec.Targets {
		if t := spec.Targets[i]; !t.DoNotDeploy {
			variants = append(variants, variant{t.Name, bundle.Merge(spec.BundleDeploymentOptions, &spec.Targets[i])})
		}
	}
	for _, v := range variants {
		if _, err := bundle.TemplateValuesContext(ctx, v.opts, c); err != nil && (errors.Is(err, bundle.ErrBudgetExceeded) || ctx.Err() != nil) {
			return fmt.Errorf("templating helm values: %w", err)
		} else if err != nil {
			continue
		}
		if _, err := bundle.Render(ctx, src.Files, v.opts, c, b.Metadata.Name); err != nil {
			if v.name != "" {
				return fmt.Errorf("rendering for target %s: %w", v.name, err)
			}
			return fmt.Errorf("rendering: %w", err)
		}
	}
	return nil
}

// bundleObject is the Bundle a GitRepo makes of one source, as Fleet lays it out: the
// fleet.yaml's options, the GitRepo's targets combined with the fleet.yaml's, and the
// GitRepo-wide options (target namespace, service account, drift correction…).
func bundleObject(repo *api.Object, spec *api.GitRepoSpec, src bundle.Source, gitTargets []api.BundleTarget, digest, commit string) *api.Object {
	targets, restrictions := bundle.CombineTargets(gitTargets, src.Spec)
	opts := src.Spec.BundleDeploymentOptions
	if spec.TargetNamespace != "" {
		opts.TargetNamespace = spec.TargetNamespace
	}
	if spec.ServiceAccount != "" {
		opts.ServiceAccount = spec.ServiceAccount
	}
	opts.KeepResources = opts.KeepResources || spec.KeepResources
	opts.DeleteNamespace = opts.DeleteNamespace || spec.DeleteNamespace
	if opts.CorrectDrift == nil && spec.CorrectDrift != nil {
		cd := *spec.CorrectDrift
		opts.CorrectDrift = &cd
	}
	opts.ForceSyncGeneration = max(opts.ForceSyncGeneration, spec.ForceSyncGeneration)
	bs := api.BundleSpec{
		BundleDeploymentOptions: opts,
		Paused:                  src.Spec.Paused,
		RolloutStrategy:         src.Spec.RolloutStrategy,
		Targets:                 targets,
		TargetRestrictions:      restrictions,
		DependsOn:               src.Spec.DependsOn,
		ContentHash:             digest,
	}
	raw, _ := json.Marshal(bs)
	lbls := maps.Clone(src.Labels)
	if lbls == nil {
		lbls = map[string]string{}
	}
	lbls[LabelRepoName] = repo.Metadata.Name
	lbls[LabelGitRepo] = repo.Metadata.Name
	lbls[LabelCommit] = commit
	return &api.Object{
		TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Name: src.Name, Namespace: repo.Metadata.Namespace, Labels: lbls,
			Annotations: map[string]string{AnnotationPath: src.Path}},
		Spec: raw,
	}
}

// ownedBundles returns the GitRepo's bundles by name.
func (c *Controller) ownedBundles(ctx context.Context, repo store.Key) (map[string]*api.Object, error) {
	sel, err := labels.Parse(LabelGitRepo + "=" + repo.Name)
	if err != nil {
		return nil, err
	}
	res, err := c.cfg.Store.List(ctx, store.ListOptions{Kind: api.KindBundle, Namespace: repo.Namespace, Selector: sel})
	if err != nil {
		return nil, fmt.Errorf("listing bundles: %w", err)
	}
	out := map[string]*api.Object{}
	for _, raw := range res.Items {
		b, err := store.Decode(raw)
		if err != nil {
			return nil, err
		}
		out[b.Metadata.Name] = b
	}
	return out, nil
}

// deleteBundles deletes the GitRepo's bundles not in keep and returns their names.
func (c *Controller) deleteBundles(ctx context.Context, repo store.Key, keep map[string]bool) ([]string, error) {
	owned, err := c.ownedBundles(ctx, repo)
	if err != nil {
		return nil, err
	}
	var removed []string
	for name, b := range owned {
		if keep[name] {
			continue
		}
		if _, err := c.cfg.Store.Delete(ctx, store.KeyOf(b), ""); err != nil && !errors.Is(err, store.ErrNotFound) {
			return removed, fmt.Errorf("deleting bundle %s: %w", name, err)
		}
		removed = append(removed, name)
	}
	slices.Sort(removed)
	return removed, nil
}

// writeBundle creates or updates one bundle. An update keeps the bundle's identity and status
// and is skipped when nothing but the commit changed, so an unrelated commit does not touch
// every bundle of a repository.
func (c *Controller) writeBundle(ctx context.Context, want, cur *api.Object) error {
	for attempt := 0; ; attempt++ {
		if cur == nil {
			now := time.Now().UTC().Truncate(time.Second)
			b := want.DeepCopy()
			b.Metadata.UID = apiserver.NewUID()
			b.Metadata.Generation = 1
			b.Metadata.CreationTimestamp = &now
			_, err := c.cfg.Store.Create(ctx, b)
			if errors.Is(err, store.ErrAlreadyExists) && attempt < 5 {
				if cur, err = c.cfg.Store.Get(ctx, store.KeyOf(want)); err != nil {
					return err
				}
				continue
			}
			return err
		}
		if cur.Metadata.Labels[LabelGitRepo] != want.Metadata.Labels[LabelGitRepo] {
			return fmt.Errorf("bundle %s belongs to GitRepo %q", want.Metadata.Name, cur.Metadata.Labels[LabelGitRepo])
		}
		sameSpec := jsonEqual(cur.Spec, want.Spec)
		if sameSpec && sameExceptCommit(cur.Metadata.Labels, want.Metadata.Labels) && maps.Equal(cur.Metadata.Annotations, want.Metadata.Annotations) {
			return nil
		}
		b := cur.DeepCopy()
		b.Spec = want.Spec
		b.Metadata.Labels = want.Metadata.Labels
		b.Metadata.Annotations = want.Metadata.Annotations
		if !sameSpec {
			b.Metadata.Generation++
		}
		_, err := c.cfg.Store.Update(ctx, b)
		if (errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound)) && attempt < 5 {
			cur, err = c.cfg.Store.Get(ctx, store.KeyOf(want))
			if errors.Is(err, store.ErrNotFound) {
				cur = nil
			} else if err != nil {
				return err
			}
			continue
		}
		return err
	}
}

func sameExceptCommit(a, b map[string]string) bool {
	a, b = maps.Clone(a), maps.Clone(b)
	delete(a, LabelCommit)
	delete(b, LabelCommit)
	return maps.Equal(a, b)
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

// stripRoot makes paths in an error relative to the repository.
func stripRoot(msg, root string) string {
	roots := []string{root}
	if real, err := filepath.EvalSymlinks(root); err == nil && real != root {
		roots = append(roots, real)
	}
	for _, r := range roots {
		msg = strings.ReplaceAll(msg, r+string(filepath.Separator), "")
		msg = strings.ReplaceAll(msg, r, ".")
	}
	return msg
}

// chartClient is the HTTP client for the GitRepo's charts: with the Helm secret's
// credentials and CA when spec.helmSecretName is set, sent only to URLs matching
// spec.helmRepoURLRegex when that is set, as in Fleet.
func (c *Controller) chartClient(ctx context.Context, ns string, spec *api.GitRepoSpec) (*http.Client, error) {
	if spec.HelmSecretName == "" {
		return c.cfg.HTTPClient, nil
	}
	sec, err := c.cfg.Secrets.Get(ctx, ns, spec.HelmSecretName)
	if err != nil {
		return nil, fmt.Errorf("spec.helmSecretName: %w", err)
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	if ca := sec.Data[api.SecretKeyCACerts]; len(ca) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(ca) {
			return nil, fmt.Errorf("spec.helmSecretName: %q holds no PEM certificate", api.SecretKeyCACerts)
		}
		base.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	var only *regexp.Regexp
	if spec.HelmRepoURLRegex != "" {
		if only, err = regexp.Compile(spec.HelmRepoURLRegex); err != nil {
			return nil, fmt.Errorf("spec.helmRepoURLRegex: %v", err)
		}
	}
	rt := &basicAuthTransport{base: base, user: string(sec.Data[api.SecretKeyUsername]), pass: string(sec.Data[api.SecretKeyPassword]), only: only}
	return &http.Client{Transport: rt, Timeout: c.cfg.HTTPClient.Timeout}, nil
}

type basicAuthTransport struct {
	base       http.RoundTripper
	user, pass string
	only       *regexp.Regexp
}

func (t *basicAuthTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.user != "" && (t.only == nil || t.only.MatchString(r.URL.String())) {
		r = r.Clone(r.Context())
		r.SetBasicAuth(t.user, t.pass)
	}
	return t.base.RoundTrip(r)
}

// setStatus changes the GitRepo's status through the store, reading it again when another
// writer got there first. Fields this controller does not own are kept.
func (c *Controller) setStatus(ctx context.Context, obj *api.Object, fn func(*api.GitRepoStatus)) {
	key := store.KeyOf(obj)
	for attempt := 0; attempt < 10; attempt++ {
		cur, err := c.cfg.Store.Get(ctx, key)
		if err != nil || cur.Metadata.UID != obj.Metadata.UID {
			return
		}
		var st api.GitRepoStatus
		if len(cur.Status) > 0 {
			json.Unmarshal(cur.Status, &st)
		}
		before, _ := json.Marshal(st)
		fn(&st)
		after, _ := json.Marshal(st)
		if string(before) == string(after) {
			return
		}
		cur.Status = after
		_, err = c.cfg.Store.Update(ctx, cur)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil && ctx.Err() == nil {
			c.log.Warn("writing GitRepo status", "gitrepo", key.Namespace+"/"+key.Name, "err", err)
		}
		return
	}
}

// clearCondition sets a condition that is present to False, as it no longer holds.
func clearCondition(conds *[]api.Condition, typ string, now time.Time) {
	if slices.ContainsFunc(*conds, func(c api.Condition) bool { return c.Type == typ }) {
		setCondition(conds, typ, false, "", "", now)
	}
}

// setCondition sets one condition, moving its transition time only when its status changes.
func setCondition(conds *[]api.Condition, typ string, ok bool, reason, msg string, now time.Time) {
	status := "False"
	if ok {
		status = "True"
	}
	for i := range *conds {
		c := &(*conds)[i]
		if c.Type != typ {
			continue
		}
		if c.Status != status {
			c.LastTransitionTime = &now
		}
		c.Status, c.Reason, c.Message = status, reason, msg
		return
	}
	*conds = append(*conds, api.Condition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: &now})
}

var _ Secrets = (*secrets.Keeper)(nil)
