package apply

import (
	"bytes"
	"fmt"
	"strings"

	chart "helm.sh/helm/v4/pkg/chart/v2"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Deployment is one bundle's desired state on this cluster.
type Deployment struct {
	// ID is the stable bundle identity, e.g. "fleet-default/my-bundle". It
	// names the inventory and the Helm release's owner and is stamped on
	// every applied object.
	ID string
	// Hash is the digest of the desired state (content and options); it is
	// reported back as the applied hash. When empty, a digest of Objects is
	// used instead.
	Hash string
	// Objects are applied for raw and Kustomize bundles.
	Objects []*unstructured.Unstructured
	// Helm is non-nil for Helm-chart bundles, which are installed as a real
	// Helm release instead of Objects.
	Helm *HelmRelease
	// DefaultNamespace is given to namespaced objects without a namespace,
	// and created when missing.
	DefaultNamespace string
	// CorrectDrift makes Apply re-apply objects that were changed or deleted
	// by someone else; ForceDrift lets it delete and recreate an object whose
	// change cannot be undone in place (immutable fields), and forces Helm
	// upgrades.
	CorrectDrift bool
	ForceDrift   bool
	// KeepResources leaves the objects (and Helm release) in place when the
	// deployment is removed.
	KeepResources bool
	// ComparePatches name fields that drift detection ignores.
	ComparePatches []ComparePatch
}

// HelmRelease describes a Helm release to install or upgrade.
type HelmRelease struct {
	ReleaseName string
	// Namespace is the release namespace; DefaultNamespace, then "default",
	// when empty.
	Namespace string
	// Chart is the chart as bundle.Render loads it (Helm v4's chart API v2 type).
	Chart  *chart.Chart
	Values map[string]any
	// PostRenderer, when set, rewrites the chart's rendered manifest before
	// the engine stamps and applies it, as Helm's --post-renderer does (the
	// agent passes the bundle's Kustomize and namespace rules).
	PostRenderer PostRenderer
	// RenderKey identifies whatever else the rendering depends on (what the
	// PostRenderer does). A release made with other chart, values or key is
	// rendered again, and upgraded only when the result differs.
	RenderKey string
	// Force, TakeOwnership, Atomic and MaxHistory are Helm's options of the
	// same names: Force recreates objects the server refuses to change in
	// place, TakeOwnership adopts existing objects that no release owns,
	// Atomic waits for readiness and undoes a failed install or upgrade.
	// MaxHistory defaults to 10 (as the helm CLI does), so that release
	// Secrets do not pile up on small clusters.
	Force, TakeOwnership, Atomic bool
	MaxHistory                   int
	// WaitForJobs waits, after applying, until the release's objects are
	// ready and its Jobs have completed (Atomic alone does not wait for
	// Jobs). DisableDNS turns off the getHostByName template function;
	// SkipSchemaValidation skips the chart's values.schema.json.
	WaitForJobs, DisableDNS, SkipSchemaValidation bool
	// TimeoutSeconds bounds each hook and the wait for readiness; 300 when
	// zero.
	TimeoutSeconds int
}

// PostRenderer rewrites a rendered manifest; Helm's postrender.PostRenderer
// has the same method.
type PostRenderer interface {
	Run(rendered *bytes.Buffer) (*bytes.Buffer, error)
}

// ComparePatch names fields of one object (or of every object of a kind when
// Name is empty) that drift detection ignores. It mirrors Fleet's
// diff.comparePatches: the path of every operation and every JSON pointer is
// removed from both the desired and the live object before they are
// compared, whatever the operation (Fleet's users write "remove").
type ComparePatch struct {
	APIVersion   string
	Kind         string
	Name         string
	Namespace    string
	Operations   []PatchOperation
	JSONPointers []string
}

// PatchOperation is one JSON patch operation of a ComparePatch.
type PatchOperation struct {
	Op    string
	Path  string
	Value string
}

// State is the summary state of a deployment on this cluster, in Fleet's
// vocabulary.
type State string

// States, from best to worst as the agent reports them.
const (
	// Ready: everything is applied, unmodified and ready.
	Ready State = "Ready"
	// NotReady: applied and unmodified, but some object is not ready yet.
	NotReady State = "NotReady"
	// Modified: some object differs from what was applied, or is missing.
	Modified State = "Modified"
	// WaitApplied: nothing of this deployment has been applied yet.
	WaitApplied State = "WaitApplied"
	// ErrApplied: applying failed; Message says why.
	ErrApplied State = "ErrApplied"
	// OutOfSync: an older version of the deployment is applied.
	OutOfSync State = "OutOfSync"
)

// Result is the outcome of Apply or Status.
type Result struct {
	State State
	// Message names the objects at fault, a few at most; empty when Ready.
	Message string
	// AppliedHash is the Hash of the deployment that is applied now.
	AppliedHash string
	NonReady    []ObjectStatus
	Modified    []ObjectStatus
}

// ObjectStatus describes one object that is not ready or modified.
type ObjectStatus struct {
	APIVersion string
	Kind       string
	Namespace  string
	Name       string
	// Missing is set when the object does not exist.
	Missing bool
	// Fields are JSON pointers of the fields that differ, a few at most.
	Fields []string
	// Message is the readiness message (from kstatus) or the drift summary.
	Message string
}

// String renders the object as in a status message, e.g.
// "Deployment default/web: not ready: Available: 0/3".
func (o ObjectStatus) String() string {
	return o.ref() + ": " + o.Message
}

func (o ObjectStatus) ref() string {
	if o.Namespace == "" {
		return o.Kind + " " + o.Name
	}
	return o.Kind + " " + o.Namespace + "/" + o.Name
}

// maxMessageObjects is how many objects a Result message names before it
// says "and N more": status messages travel to the server for every cluster
// and must stay short.
const maxMessageObjects = 3

// summarize fills State and Message from Modified and NonReady.
func (r *Result) summarize() {
	switch {
	case len(r.Modified) > 0:
		r.State = Modified
	case len(r.NonReady) > 0:
		r.State = NotReady
	default:
		r.State = Ready
		r.Message = ""
		return
	}
	all := append(append([]ObjectStatus(nil), r.Modified...), r.NonReady...)
	var b strings.Builder
	for i, o := range all {
		if i == maxMessageObjects {
			fmt.Fprintf(&b, "; and %d more", len(all)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(o.String())
	}
	if d := driftSummary(r.Modified); d != "" {
		b.WriteString("; ")
		b.WriteString(d)
	}
	r.Message = b.String()
}

// The drifted fields a Result message lists: at most maxMessagePaths paths in at most
// maxMessagePathBytes bytes, then "and N more", so that the message stays short.
const (
	maxMessagePaths     = 10
	maxMessagePathBytes = 512
)

// driftSummary lists the drifted fields of the modified objects, e.g.
// "drifted: Deployment/default/web: spec.replicas, ConfigMap/default/cfg: data.key".
func driftSummary(modified []ObjectStatus) string {
	var paths []string
	more := false // an object had more drifted fields than it lists
	for _, o := range modified {
		for _, f := range o.Fields {
			if f == "…" {
				more = true
				continue
			}
			paths = append(paths, o.slashRef()+": "+dottedPath(f))
		}
	}
	if len(paths) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("drifted: ")
	for i, p := range paths {
		if i == maxMessagePaths || (i > 0 && b.Len()+len(p)+2 > maxMessagePathBytes) {
			fmt.Fprintf(&b, " and %d more", len(paths)-i)
			return b.String()
		}
		if i > 0 {
			b.WriteString(", ")
		}
		if len(p) > maxMessagePathBytes/2 {
			p = strings.ToValidUTF8(p[:maxMessagePathBytes/2], "") + "…"
		}
		b.WriteString(p)
	}
	if more {
		b.WriteString(" and more")
	}
	return b.String()
}

// slashRef names the object as Kind/namespace/name (Kind/name when cluster-scoped).
func (o ObjectStatus) slashRef() string {
	if o.Namespace == "" {
		return o.Kind + "/" + o.Name
	}
	return o.Kind + "/" + o.Namespace + "/" + o.Name
}

// dottedPath turns a JSON pointer into the dotted form people read in kubectl's docs:
// /spec/replicas is spec.replicas; a key containing a dot or a slash is bracketed, as in
// metadata.annotations[example.com/owner].
func dottedPath(pointer string) string {
	var b strings.Builder
	for i, seg := range strings.Split(strings.TrimPrefix(pointer, "/"), "/") {
		seg = strings.ReplaceAll(strings.ReplaceAll(seg, "~1", "/"), "~0", "~")
		switch {
		case strings.ContainsAny(seg, "./"):
			b.WriteString("[" + seg + "]")
		case i > 0:
			b.WriteString("." + seg)
		default:
			b.WriteString(seg)
		}
	}
	return b.String()
}
