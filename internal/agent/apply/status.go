package apply

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// status checks every object of an applied deployment.
func (a *Applier) status(ctx context.Context, d Deployment, items []item, appliedHash string) (Result, error) {
	res := Result{AppliedHash: appliedHash}
	for _, it := range items {
		nonReady, modified, err := a.objectStatus(ctx, it, d.ComparePatches)
		if err != nil {
			return Result{}, err
		}
		if modified != nil {
			res.Modified = append(res.Modified, *modified)
		}
		if nonReady != nil {
			res.NonReady = append(res.NonReady, *nonReady)
		}
	}
	res.summarize()
	return res, nil
}

// objectStatus reads one object back and says whether it is not ready and
// whether it drifted from what applying it would give.
//
// Drift is found with a dry-run server-side apply of the desired object:
// the server answers with the object as our apply would leave it, after its
// own defaulting, conversion and merging with other managers' fields. If
// that differs from the live object, someone changed or removed a field we
// set. Fields other managers added and we never set do not count, and no
// client-side model of defaulting is needed.
func (a *Applier) objectStatus(ctx context.Context, it item, patches []ComparePatch) (nonReady, modified *ObjectStatus, err error) {
	m, err := a.mapping(it.obj.GroupVersionKind())
	if err != nil {
		return nil, nil, err
	}
	ri := a.resource(m, it.ref.Namespace)
	os := ObjectStatus{APIVersion: it.ref.APIVersion, Kind: it.ref.Kind, Namespace: it.ref.Namespace, Name: it.ref.Name}
	live, err := ri.Get(ctx, it.ref.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		os.Missing, os.Message = true, "missing"
		return nil, &os, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", it.ref, err)
	}
	if st := readiness(live); st != nil {
		nonReady = st
	}
	want, err := ri.Apply(ctx, it.ref.Name, it.obj, metav1.ApplyOptions{FieldManager: a.fieldManager, Force: true, DryRun: []string{metav1.DryRunAll}})
	if apierrors.IsNotFound(err) {
		// Deleted between the two calls.
		os.Missing, os.Message = true, "missing"
		return nil, &os, nil
	}
	if err != nil {
		// An apply the server refuses (an immutable field was changed
		// under us) is drift that only recreating the object can fix.
		os.Message = "modified: " + shorten(err.Error(), 200)
		return nonReady, &os, nil
	}
	if fields := drift(live, want, matchingPatches(patches, it.ref)); len(fields) > 0 {
		os.Fields = fields
		os.Message = "modified"
		return nonReady, &os, nil
	}
	return nonReady, nil, nil
}

// readiness is nil for a ready object, else why it is not ready.
func readiness(live *unstructured.Unstructured) *ObjectStatus {
	ref := refOf(live)
	os := &ObjectStatus{APIVersion: ref.APIVersion, Kind: ref.Kind, Namespace: ref.Namespace, Name: ref.Name}
	res, err := status.Compute(live)
	if err != nil {
		os.Message = "not ready: " + err.Error()
		return os
	}
	if res.Status == status.CurrentStatus {
		return nil
	}
	msg := res.Message
	if msg == "" {
		msg = string(res.Status)
	}
	if res.Status == status.InProgressStatus {
		os.Message = "not ready: " + msg
	} else {
		os.Message = strings.ToLower(string(res.Status)) + ": " + msg
	}
	return os
}

// maxDriftFields is how many differing fields an ObjectStatus lists.
const maxDriftFields = 3

// drift returns the JSON pointers at which live differs from want, ignoring
// what the server changes on its own (resourceVersion, managedFields,
// generation, status) and the ignored paths.
func drift(live, want *unstructured.Unstructured, ignore []string) []string {
	l, w := normalize(live, ignore), normalize(want, ignore)
	var out []string
	diffPaths("", l, w, &out)
	if len(out) > maxDriftFields {
		out = append(out[:maxDriftFields], "…")
	}
	return out
}

func normalize(u *unstructured.Unstructured, ignore []string) map[string]any {
	obj := u.DeepCopy().Object
	delete(obj, "status")
	for _, f := range []string{"resourceVersion", "managedFields", "generation"} {
		unstructured.RemoveNestedField(obj, "metadata", f)
	}
	for _, p := range ignore {
		removePointer(obj, p)
	}
	return obj
}

// diffPaths appends the JSON pointers under path where a and b differ,
// stopping early once there are more than maxDriftFields.
func diffPaths(path string, a, b any, out *[]string) {
	if len(*out) > maxDriftFields {
		return
	}
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		keys := make([]string, 0, len(am)+len(bm))
		for k := range am {
			keys = append(keys, k)
		}
		for k := range bm {
			if _, ok := am[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			diffPaths(path+"/"+escapePointer(k), am[k], bm[k], out)
		}
		return
	}
	as, aok := a.([]any)
	bs, bok := b.([]any)
	if aok && bok && len(as) == len(bs) {
		for i := range as {
			diffPaths(path+"/"+strconv.Itoa(i), as[i], bs[i], out)
		}
		return
	}
	if !reflect.DeepEqual(a, b) {
		if path == "" {
			path = "/"
		}
		*out = append(*out, path)
	}
}

// matchingPatches returns the ignored paths of the patches that apply to ref.
func matchingPatches(patches []ComparePatch, ref objectRef) []string {
	var out []string
	for _, p := range patches {
		if p.Kind != "" && p.Kind != ref.Kind ||
			p.APIVersion != "" && p.APIVersion != ref.APIVersion ||
			p.Name != "" && p.Name != ref.Name ||
			p.Namespace != "" && p.Namespace != ref.Namespace {
			continue
		}
		for _, op := range p.Operations {
			out = append(out, op.Path)
		}
		out = append(out, p.JSONPointers...)
	}
	return slices.Compact(out)
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// removePointer deletes the value at a JSON pointer (RFC 6901) from obj, if
// there is one.
func removePointer(obj map[string]any, pointer string) {
	if pointer == "" || pointer == "/" {
		return
	}
	parts := strings.Split(strings.TrimPrefix(pointer, "/"), "/")
	for i, p := range parts {
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(p, "~1", "/"), "~0", "~")
	}
	var cur any = obj
	for i, p := range parts {
		last := i == len(parts)-1
		switch c := cur.(type) {
		case map[string]any:
			if last {
				delete(c, p)
				return
			}
			cur = c[p]
		case []any:
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 || n >= len(c) {
				return
			}
			if last {
				// Blank the element rather than shifting the others, so
				// that both sides stay aligned index by index.
				c[n] = nil
				return
			}
			cur = c[n]
		default:
			return
		}
	}
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
