package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"flotilla.dev/api"
)

// This file keeps metadata.managedFields as Kubernetes does, with its own field manager
// (k8s.io/apimachinery managedfields over structured-merge-diff), typed by the schemas in
// openapi.go. Server-side apply merges with it; every other write through the API records
// who changed which fields, so that a later apply by someone else sees the conflict.

var fieldManagers struct {
	once sync.Once
	err  error
	byKd map[string]*managedfields.FieldManager
}

func fieldManagerFor(kind string) (*managedfields.FieldManager, error) {
	fieldManagers.once.Do(func() {
		openapi.build()
		tc, err := managedfields.NewTypeConverter(openapi.schemas, false)
		if err != nil {
			fieldManagers.err = fmt.Errorf("typing Flotilla's kinds for server-side apply: %w", err)
			return
		}
		gv := schema.GroupVersion{Group: api.Group, Version: api.Version}
		// Status is the server's: a write to the object never takes ownership of it.
		reset := map[fieldpath.APIVersion]fieldpath.Filter{
			fieldpath.APIVersion(api.APIVersion): fieldpath.NewExcludeSetFilter(fieldpath.NewSet(fieldpath.MakePathOrDie("status"))),
		}
		fieldManagers.byKd = map[string]*managedfields.FieldManager{}
		for _, k := range api.Kinds {
			fm, err := managedfields.NewDefaultCRDFieldManager(tc, nopConverter{}, nopDefaulter{}, unstructuredCreator{}, gv.WithKind(k.Kind), gv, "", reset)
			if err != nil {
				fieldManagers.err = fmt.Errorf("field manager for %s: %w", k.Kind, err)
				return
			}
			fieldManagers.byKd[k.Kind] = fm
		}
	})
	if fieldManagers.err != nil {
		return nil, fieldManagers.err
	}
	return fieldManagers.byKd[kind], nil
}

// nopConverter converts between the one version each kind has.
type nopConverter struct{}

func (nopConverter) Convert(in, out, context any) error {
	return errors.New("unstructured objects are not converted in place")
}

func (nopConverter) ConvertToVersion(in runtime.Object, target runtime.GroupVersioner) (runtime.Object, error) {
	kind := in.GetObjectKind().GroupVersionKind()
	gvk, ok := target.KindForGroupVersionKinds([]schema.GroupVersionKind{kind})
	if !ok {
		return nil, fmt.Errorf("%v is not served in %v", kind, target)
	}
	in.GetObjectKind().SetGroupVersionKind(gvk)
	return in, nil
}

func (nopConverter) ConvertFieldLabel(gvk schema.GroupVersionKind, label, value string) (string, string, error) {
	return label, value, nil
}

type nopDefaulter struct{}

func (nopDefaulter) Default(runtime.Object) {}

type unstructuredCreator struct{}

func (unstructuredCreator) New(kind schema.GroupVersionKind) (runtime.Object, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(kind)
	return u, nil
}

func toUnstructured(o *api.Object) (*unstructured.Unstructured, error) {
	data, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	return u, nil
}

func emptyObject(kind string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{}}
	u.SetAPIVersion(api.APIVersion)
	u.SetKind(kind)
	return u
}

// managedFieldsOf returns u's managedFields, encoded for api.ObjectMeta.
func managedFieldsOf(u runtime.Object) (json.RawMessage, error) {
	uu, ok := u.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("unexpected %T from the field manager", u)
	}
	mf, found, err := unstructured.NestedFieldNoCopy(uu.Object, "metadata", "managedFields")
	if err != nil || !found {
		return nil, err
	}
	return json.Marshal(mf)
}

type fieldsDoneKey struct{}

// withFieldsDone marks a request whose object already carries its managedFields (an apply).
func withFieldsDone(ctx context.Context) context.Context {
	return context.WithValue(ctx, fieldsDoneKey{}, true)
}

// trackFields records in next.Metadata.ManagedFields that this request's manager set the
// fields it changed from cur (nil for a create). It cannot fail a write: on a problem the
// previous managedFields stay, as in Kubernetes.
func (s *Server) trackFields(req *request, cur, next *api.Object) {
	if done, _ := req.r.Context().Value(fieldsDoneKey{}).(bool); done {
		return
	}
	fm, err := fieldManagerFor(next.Kind)
	if err != nil || fm == nil {
		return
	}
	live := emptyObject(next.Kind)
	if cur != nil {
		if live, err = toUnstructured(cur); err != nil {
			return
		}
	}
	if next.Metadata.ManagedFields == nil && cur != nil {
		next.Metadata.ManagedFields = cur.Metadata.ManagedFields
	}
	next.Metadata.ManagedFields = ownGroup(next.Metadata.ManagedFields)
	n, err := toUnstructured(next)
	if err != nil {
		return
	}
	out := fm.UpdateNoErrors(live, n, managerName(req.r))
	if mf, err := managedFieldsOf(out); err == nil {
		next.Metadata.ManagedFields = mf
	}
}

// managerName is the fieldManager a request names, or Kubernetes' default: the first part
// of its User-Agent.
func managerName(r *http.Request) string {
	if m := r.URL.Query().Get("fieldManager"); m != "" {
		return m
	}
	ua, _, _ := strings.Cut(r.UserAgent(), "/")
	var b bytes.Buffer
	for _, c := range ua {
		if !unicode.IsPrint(c) {
			continue
		}
		if b.Len()+utf8.RuneLen(c) > 128 {
			break
		}
		b.WriteRune(c)
	}
	return b.String()
}

// fromAPIError turns an apimachinery error (the field manager's conflicts) into a Status.
func fromAPIError(err error) error {
	var se apierrors.APIStatus
	if !errors.As(err, &se) {
		return err
	}
	st := se.Status()
	out := statusErr(int(st.Code), string(st.Reason), st.Message)
	if st.Details != nil {
		out.Details = &api.StatusDetails{Name: st.Details.Name, Kind: st.Details.Kind}
		for _, c := range st.Details.Causes {
			out.Details.Causes = append(out.Details.Causes, api.StatusCause{Field: c.Field, Message: c.Message})
		}
	}
	return out
}

// ownGroup records entries a client read under Fleet's group (and sends back, as kubectl
// does when it moves client-side apply's fields to server-side apply) under Flotilla's,
// the one version the field manager knows.
func ownGroup(mf json.RawMessage) json.RawMessage {
	if len(mf) == 0 || !bytes.Contains(mf, []byte(api.FleetGroup)) {
		return mf
	}
	var entries []metav1.ManagedFieldsEntry
	if json.Unmarshal(mf, &entries) != nil {
		return mf
	}
	for i := range entries {
		if entries[i].APIVersion == api.FleetAPIVersion {
			entries[i].APIVersion = api.APIVersion
		}
	}
	out, err := json.Marshal(entries)
	if err != nil {
		return mf
	}
	return out
}
