package apply

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"

	"helm.sh/helm/v3/pkg/release"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
)

// Helm keeps each revision of a release in a Secret of its release's namespace. The agent
// writes them itself, in exactly the layout of Helm's Secret storage driver, because the
// Helm SDK's storage package also holds its SQL driver (and so lib/pq, sqlx, gorp and
// sql-migrate): linking it would put four SQL libraries into an edge binary that never uses
// them. Keeping the layout means `helm list`, `helm history`, `helm get`, `helm upgrade`
// and `helm uninstall` work on Flotilla's releases as on their own.
const (
	// releaseSecretType is the type of a release Secret: Helm 3's release object, version 1.
	releaseSecretType corev1.SecretType = "helm.sh/release.v1"
	// releaseDataKey holds base64(gzip(json(release))) — the base64 is Helm's own, inside
	// the bytes of the Secret's data (which the API encodes once more on the wire).
	releaseDataKey = "release"
	// defaultMaxHistory is how many revisions are kept when the bundle does not say, as
	// the helm CLI's default, so that Secrets do not pile up on small clusters.
	defaultMaxHistory = 10
)

// systemLabels are the labels of a release Secret that Helm sets itself; the others are
// the release's own labels (Release.Labels).
var systemLabels = []string{"name", "owner", "status", "version", "createdAt", "modifiedAt"}

var secretsGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

// releaseSecretName is the key under which Helm stores a revision.
func releaseSecretName(name string, version int) string {
	return "sh.helm.release.v1." + name + ".v" + strconv.Itoa(version)
}

// revision is one stored revision as its Secret's labels describe it, read without
// downloading and decoding the release (which carries the whole chart).
type revision struct {
	Version int
	Status  release.Status
	// Digest is labelHelmDigest, when the agent made this revision from it.
	Digest          string
	Secret          string
	ResourceVersion string
}

// releaseStore reads and writes the revisions of Helm releases in one namespace.
type releaseStore struct {
	kube      kubernetes.Interface
	metadata  metadata.Interface
	namespace string
	cache     *releaseCache
}

func (a *Applier) releases(ns string) releaseStore {
	return releaseStore{kube: a.kube, metadata: a.metadata, namespace: ns, cache: &a.releaseCache}
}

// history lists the revisions of a release, oldest first.
func (s releaseStore) history(ctx context.Context, name string) ([]revision, error) {
	list, err := s.metadata.Resource(secretsGVR).Namespace(s.namespace).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=" + name})
	if err != nil {
		return nil, fmt.Errorf("listing revisions of helm release %s/%s: %w", s.namespace, name, err)
	}
	var out []revision
	for _, m := range list.Items {
		l := m.Labels
		v, err := strconv.Atoi(l["version"])
		if err != nil || m.Name != releaseSecretName(name, v) {
			continue // not a release Secret of ours to reason about
		}
		r := revision{Version: v, Status: release.Status(l["status"]), Secret: m.Name, ResourceVersion: m.ResourceVersion}
		if l[labelHelmRevision] == l["version"] {
			r.Digest = l[labelHelmDigest]
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y revision) int { return x.Version - y.Version })
	return out, nil
}

// last is the latest revision; nil when there is none.
func last(hist []revision) *revision {
	if len(hist) == 0 {
		return nil
	}
	return &hist[len(hist)-1]
}

// lastDeployed is the latest deployed revision, as Helm's Storage.Deployed; nil when none.
func lastDeployed(hist []revision) *revision {
	for i := len(hist) - 1; i >= 0; i-- {
		if hist[i].Status == release.StatusDeployed {
			return &hist[i]
		}
	}
	return nil
}

// get reads and decodes one revision. Labels are the release's own, as Helm's driver
// returns them.
func (s releaseStore) get(ctx context.Context, name string, version int) (*release.Release, error) {
	key := releaseSecretName(name, version)
	sec, err := s.kube.CoreV1().Secrets(s.namespace).Get(ctx, key, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading helm release %s/%s revision %d: %w", s.namespace, name, version, err)
	}
	rel, err := decodeRelease(string(sec.Data[releaseDataKey]))
	if err != nil {
		return nil, fmt.Errorf("decoding helm release %s/%s revision %d: %w", s.namespace, name, version, err)
	}
	rel.Labels = customLabels(sec.Labels)
	return rel, nil
}

// manifest returns what the release of revision r applied, decoding its Secret only when
// it changed since the last call: status checks read it every few seconds.
func (s releaseStore) manifest(ctx context.Context, name string, r *revision) (string, error) {
	if m, ok := s.cache.get(s.namespace, name, r); ok {
		return m, nil
	}
	rel, err := s.get(ctx, name, r.Version)
	if err != nil {
		return "", err
	}
	s.cache.put(s.namespace, name, r, rel.Manifest)
	return rel.Manifest, nil
}

// create stores a new revision, first pruning the history to maxHistory-1 revisions (never
// the deployed one) as Helm's Storage.Create does.
func (s releaseStore) create(ctx context.Context, rel *release.Release, hist []revision, maxHistory int) error {
	if maxHistory > 0 {
		if err := s.prune(ctx, rel.Name, hist, maxHistory-1); err != nil {
			return err
		}
	}
	lbs := map[string]string{"createdAt": strconv.FormatInt(time.Now().Unix(), 10)}
	sec, err := secretFor(rel, lbs)
	if err != nil {
		return err
	}
	if _, err := s.kube.CoreV1().Secrets(s.namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("storing helm release %s/%s revision %d: %w", s.namespace, rel.Name, rel.Version, err)
	}
	return nil
}

// update replaces a stored revision, as Helm's driver does (labels and data rewritten).
func (s releaseStore) update(ctx context.Context, rel *release.Release) error {
	lbs := map[string]string{"modifiedAt": strconv.FormatInt(time.Now().Unix(), 10)}
	sec, err := secretFor(rel, lbs)
	if err != nil {
		return err
	}
	if _, err := s.kube.CoreV1().Secrets(s.namespace).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating helm release %s/%s revision %d: %w", s.namespace, rel.Name, rel.Version, err)
	}
	return nil
}

// setStatus changes a stored revision's status and description.
func (s releaseStore) setStatus(ctx context.Context, name string, version int, st release.Status, desc string) error {
	rel, err := s.get(ctx, name, version)
	if err != nil {
		return err
	}
	rel.SetStatus(st, desc)
	return s.update(ctx, rel)
}

// delete removes one revision; a missing one is already deleted.
func (s releaseStore) delete(ctx context.Context, name string, version int) error {
	err := s.kube.CoreV1().Secrets(s.namespace).Delete(ctx, releaseSecretName(name, version), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting helm release %s/%s revision %d: %w", s.namespace, name, version, err)
	}
	return nil
}

// prune deletes the oldest revisions until at most keep remain, sparing the latest deployed
// one, as Helm's Storage.removeLeastRecent does.
func (s releaseStore) prune(ctx context.Context, name string, hist []revision, keep int) error {
	if keep < 0 || len(hist) <= keep {
		return nil
	}
	deployed := lastDeployed(hist)
	var errs []error
	n := len(hist)
	for _, r := range hist {
		if n <= keep {
			break
		}
		if deployed != nil && r.Version == deployed.Version {
			continue
		}
		if err := s.delete(ctx, name, r.Version); err != nil {
			errs = append(errs, err)
			continue
		}
		n--
	}
	return errors.Join(errs...)
}

// secretFor builds the Secret holding rel, with Helm's labels over rel's own and extra.
func secretFor(rel *release.Release, extra map[string]string) (*corev1.Secret, error) {
	data, err := encodeRelease(rel)
	if err != nil {
		return nil, fmt.Errorf("encoding helm release %s revision %d: %w", rel.Name, rel.Version, err)
	}
	lbs := map[string]string{}
	for k, v := range extra {
		lbs[k] = v
	}
	for k, v := range rel.Labels {
		lbs[k] = v
	}
	lbs["name"] = rel.Name
	lbs["owner"] = "helm"
	lbs["status"] = rel.Info.Status.String()
	lbs["version"] = strconv.Itoa(rel.Version)
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: releaseSecretName(rel.Name, rel.Version), Namespace: rel.Namespace, Labels: lbs},
		Type:       releaseSecretType,
		Data:       map[string][]byte{releaseDataKey: []byte(data)},
	}, nil
}

// customLabels drops Helm's own labels.
func customLabels(lbs map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range lbs {
		if !slices.Contains(systemLabels, k) {
			out[k] = v
		}
	}
	return out
}

// encodeRelease is Helm's encoding of a stored release: JSON, gzipped at the best
// compression, in standard base64.
func encodeRelease(rel *release.Release) (string, error) {
	b, err := json.Marshal(rel)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	w, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return "", err
	}
	if _, err := w.Write(b); err != nil {
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes()), nil
}

// decodeRelease reverses encodeRelease. Like Helm it also reads releases stored before
// Helm compressed them.
func decodeRelease(data string) (*release.Release, error) {
	b, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return nil, err
	}
	if len(b) > 3 && bytes.Equal(b[:3], []byte{0x1f, 0x8b, 0x08}) {
		r, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		defer r.Close()
		if b, err = io.ReadAll(r); err != nil {
			return nil, err
		}
	}
	var rel release.Release
	if err := json.Unmarshal(b, &rel); err != nil {
		return nil, err
	}
	return &rel, nil
}

// releaseCache keeps the manifest of the latest revision of each release the Applier
// checks, keyed by its Secret's name and resourceVersion, so that a periodic status check
// of an unchanged release costs one small list instead of decoding the chart again.
type releaseCache struct {
	mu sync.Mutex
	m  map[string]cachedManifest // by namespace/release
}

type cachedManifest struct {
	secret, resourceVersion string
	manifest                string
}

func (c *releaseCache) get(ns, name string, r *revision) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[ns+"/"+name]
	return e.manifest, ok && e.secret == r.Secret && e.resourceVersion == r.ResourceVersion
}

func (c *releaseCache) put(ns, name string, r *revision, manifest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]cachedManifest{}
	}
	c.m[ns+"/"+name] = cachedManifest{secret: r.Secret, resourceVersion: r.ResourceVersion, manifest: manifest}
}

func (c *releaseCache) forget(ns, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, ns+"/"+name)
}
