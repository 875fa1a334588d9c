package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	jsonpatch "github.com/evanphx/json-patch"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/store"
)

// PATCH in Kubernetes' four flavours. A patch is computed over the object as the API shows
// it (a Secret's values redacted, in the shape of the URL's group), and the result goes
// through update like a PUT at the object's resourceVersion: one set of rules for every
// write, and a concurrent write makes the patch read again rather than be lost.

const (
	jsonPatchType      = "application/json-patch+json"
	mergePatchType     = "application/merge-patch+json"
	strategicPatchType = "application/strategic-merge-patch+json"
	applyPatchType     = "application/apply-patch+yaml"
)

func unsupportedPatch(ct string, core bool) error {
	accepted := jsonPatchType + ", " + mergePatchType + ", " + applyPatchType
	if core {
		accepted += ", " + strategicPatchType
	}
	return statusErr(http.StatusUnsupportedMediaType, "UnsupportedMediaType",
		fmt.Sprintf("%s is not supported here: the body of the request was in an unknown format - accepted media types include: %s", ct, accepted))
}

func (s *Server) patch(req *request) error {
	// The decision proper is update's, on the object as stored and as patched.
	if err := s.mayTry(req, api.VerbUpdate); err != nil {
		return err
	}
	core := isCoreV1(req.r)
	ct, _, _ := mime.ParseMediaType(req.r.Header.Get("Content-Type"))
	switch ct {
	case jsonPatchType, mergePatchType, applyPatchType:
	case strategicPatchType:
		if !core {
			return unsupportedPatch(ct, core)
		}
	default:
		return unsupportedPatch(ct, core)
	}
	body, err := io.ReadAll(http.MaxBytesReader(req.w, req.r.Body, resource.MaxObjectBytes))
	if err != nil {
		return statusErr(http.StatusRequestEntityTooLarge, api.ReasonTooLarge, fmt.Sprintf("request body exceeds %d bytes", resource.MaxObjectBytes))
	}
	// A patch that names a resourceVersion asks for that version: no second try.
	pinned := bytes.Contains(body, []byte("resourceVersion"))
	ctx := req.r.Context()
	for attempt := 0; ; attempt++ {
		cur, err := s.store.Get(ctx, req.key())
		if err != nil && !(errors.Is(err, store.ErrNotFound) && ct == applyPatchType) {
			if errors.Is(err, store.ErrNotFound) {
				// As for an existing object the caller may not update: 403, not 404.
				if _, aerr := s.authorizeObject(req, api.VerbUpdate); aerr != nil {
					return aerr
				}
			}
			return err
		}
		if cur != nil {
			if err := s.decideWrite(req, api.VerbUpdate, cur, nil); err != nil {
				return err
			}
		}
		var next []byte
		if ct == applyPatchType {
			next, err = s.applyPatch(req, cur, body, core)
		} else {
			next, err = s.mergePatch(req, cur, body, ct, core)
		}
		if err != nil {
			return err
		}
		pctx := ctx
		if !pinned && cur != nil {
			// The patch was applied to cur: written without a resourceVersion, with cur as
			// its base, it fails only if another user's write changed the object, never
			// because the server wrote its status in between.
			if next, err = withoutResourceVersion(next); err != nil {
				return err
			}
			pctx = withPatchBase(pctx, cur)
		}
		if ct == applyPatchType {
			pctx = withFieldsDone(pctx)
		}
		r2 := req.r.Clone(pctx)
		r2.Method = http.MethodPut
		r2.Header.Set("Content-Type", "application/json")
		r2.Body = io.NopCloser(bytes.NewReader(next))
		put := *req
		put.r = r2
		err = s.update(&put)
		if errors.Is(err, store.ErrConflict) && !pinned && attempt < 5 {
			continue
		}
		return err
	}
}

// mergePatch applies a JSON, merge or strategic merge patch and returns the new object in
// Flotilla's shape.
func (s *Server) mergePatch(req *request, cur *api.Object, patch []byte, ct string, core bool) ([]byte, error) {
	base, err := s.shaped(s.view(cur), core)
	if err != nil {
		return nil, err
	}
	var out []byte
	switch ct {
	case mergePatchType:
		out, err = jsonpatch.MergePatch(base, patch)
	case jsonPatchType:
		var p jsonpatch.Patch
		if p, err = jsonpatch.DecodePatch(patch); err == nil {
			out, err = p.Apply(base)
		}
	case strategicPatchType:
		out, err = strategicpatch.StrategicMergePatch(base, patch, &corev1.Secret{})
	}
	if err != nil {
		return nil, statusErr(http.StatusUnprocessableEntity, api.ReasonInvalid, "the patch cannot be applied: "+err.Error())
	}
	return unshaped(out, core)
}

// applyPatch merges an applied configuration (server-side apply) into cur with the field
// manager, which decides what the manager owns and refuses conflicts unless forced.
func (s *Server) applyPatch(req *request, cur *api.Object, patch []byte, core bool) ([]byte, error) {
	q := req.r.URL.Query()
	manager := q.Get("fieldManager")
	if manager == "" {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "fieldManager is required for apply requests")
	}
	js, err := yaml.YAMLToJSON(patch)
	if err != nil {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "malformed YAML: "+err.Error())
	}
	if core {
		obj, err := api.SecretFromCoreV1(js)
		if err != nil {
			return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		}
		if js, err = json.Marshal(obj); err != nil {
			return nil, err
		}
	}
	applied := &unstructured.Unstructured{}
	if err := applied.UnmarshalJSON(js); err != nil {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "malformed object: "+err.Error())
	}
	if applied.GetKind() != req.kind.Kind {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("kind %q sent to the %s endpoint", applied.GetKind(), req.kind.Plural))
	}
	if !api.KnownAPIVersion(applied.GetAPIVersion(), applied.GetKind()) {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("unsupported apiVersion %q for kind %s (want %s)", applied.GetAPIVersion(), applied.GetKind(), api.APIVersion))
	}
	applied.SetAPIVersion(api.APIVersion)
	if n := applied.GetName(); n != req.name {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("metadata.name %q does not match the name %q in the URL", n, req.name))
	}
	if ns := applied.GetNamespace(); ns == "" {
		applied.SetNamespace(req.ns)
	} else if ns != req.ns {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("metadata.namespace %q does not match the namespace %q in the URL", ns, req.ns))
	}
	fm, err := fieldManagerFor(req.kind.Kind)
	if err != nil {
		return nil, err
	}
	live := emptyObject(req.kind.Kind)
	if cur != nil {
		if live, err = toUnstructured(s.view(cur)); err != nil {
			return nil, err
		}
	}
	out, err := fm.Apply(live, applied, manager, q.Get("force") == "true")
	if err != nil {
		if st := fromAPIError(err); st != err {
			return nil, st
		}
		return nil, statusErr(http.StatusUnprocessableEntity, api.ReasonInvalid, fmt.Sprintf("%s %q is invalid: %v", req.kind.Kind, req.name, err))
	}
	data, err := out.(*unstructured.Unstructured).MarshalJSON()
	if err != nil {
		return nil, err
	}
	return data, nil
}

// shaped writes obj as the URL's group shows it.
func (s *Server) shaped(obj *api.Object, core bool) ([]byte, error) {
	if core {
		v1, err := obj.CoreV1()
		if err != nil {
			return nil, err
		}
		return json.Marshal(v1)
	}
	return json.Marshal(obj)
}

// unshaped turns a document in the URL's group's shape back into Flotilla's.
func unshaped(data []byte, core bool) ([]byte, error) {
	if !core {
		return data, nil
	}
	obj, err := api.SecretFromCoreV1(data)
	if err != nil {
		return nil, statusErr(http.StatusUnprocessableEntity, api.ReasonInvalid, err.Error())
	}
	return json.Marshal(obj)
}

type patchBaseKey struct{}

// withPatchBase marks an update computed from base by a patch.
func withPatchBase(ctx context.Context, base *api.Object) context.Context {
	return context.WithValue(ctx, patchBaseKey{}, base)
}

func patchBase(ctx context.Context) *api.Object {
	b, _ := ctx.Value(patchBaseKey{}).(*api.Object)
	return b
}

// withoutResourceVersion drops metadata.resourceVersion from a patched object.
func withoutResourceVersion(obj []byte) ([]byte, error) {
	// Numbers stay as written: through float64 a large integer would change.
	dec := json.NewDecoder(bytes.NewReader(obj))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("patched object: %w", err)
	}
	if md, ok := m["metadata"].(map[string]any); ok {
		delete(md, "resourceVersion")
	}
	return json.Marshal(m)
}
