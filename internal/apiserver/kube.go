package apiserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// This file gives list, get and watch what kubectl expects beyond Flotilla's own client:
// server-side tables (the columns `flotilla get` prints), field selectors on name and
// namespace, and a watch from resourceVersion 0 that starts with the current objects.

// registerKube adds the routes that only Kubernetes clients use: discovery, OpenAPI, PATCH
// and the core v1 Secret endpoints.
func (s *Server) registerKube(mux interface {
	HandleFunc(string, func(http.ResponseWriter, *http.Request))
}) {
	mux.HandleFunc("GET /api", s.authenticated(s.discoveryCore))
	mux.HandleFunc("GET /api/{coreversion}", s.authenticated(s.discoveryGroup))
	mux.HandleFunc("GET /apis", s.authenticated(s.discoveryGroups))
	mux.HandleFunc("GET /apis/{group}", s.authenticated(s.discoveryGroup))
	mux.HandleFunc("GET /apis/{group}/{version}", s.authenticated(s.discoveryGroup))
	mux.HandleFunc("GET /openapi/v3", s.authenticated(s.openAPIIndex))
	mux.HandleFunc("GET /openapi/v3/", s.authenticated(s.openAPIGroup))
	for _, g := range []string{api.Group, api.FleetGroup} {
		mux.HandleFunc("PATCH /apis/"+g+"/{version}/namespaces/{ns}/{plural}/{name}", s.handle(s.patch))
		mux.HandleFunc("PATCH /apis/"+g+"/{version}/{plural}/{name}", s.handle(s.patch))
	}
	s.registerCoreV1(mux)
	s.wrapSecretHooks()
}

// tableRequest is what a client asked for with Accept: application/json;as=Table.
type tableRequest struct {
	// include is None, Metadata (the default) or Object: what each row carries.
	include string
}

// wantsTable reports whether the client asked for a meta.k8s.io/v1 Table.
func wantsTable(r *http.Request) (*tableRequest, error) {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil || mt != "application/json" || params["as"] != "Table" || params["g"] != "meta.k8s.io" || params["v"] != "v1" {
			continue
		}
		t := &tableRequest{include: r.URL.Query().Get("includeObject")}
		switch t.include {
		case "":
			t.include = "Metadata"
		case "None", "Metadata", "Object":
		default:
			return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("invalid includeObject %q (use None, Metadata or Object)", t.include))
		}
		return t, nil
	}
	return nil, nil
}

const tableContentType = "application/json;as=Table;v=v1;g=meta.k8s.io"

// table builds the Table of objs. Rows carry the object as the client asked.
func (s *Server) table(kind api.KindInfo, objs []*api.Object, t *tableRequest, withColumns bool) (*metav1.Table, error) {
	tbl := &metav1.Table{TypeMeta: metav1.TypeMeta{APIVersion: "meta.k8s.io/v1", Kind: "Table"}}
	cols := api.Columns(kind.Kind)
	if withColumns {
		tbl.ColumnDefinitions = append(tbl.ColumnDefinitions, metav1.TableColumnDefinition{Name: "Name", Type: "string", Format: "name",
			Description: "The object's name, unique in its namespace."})
		for _, c := range cols {
			d := metav1.TableColumnDefinition{Name: c.Name, Type: c.Type}
			if c.Wide {
				d.Priority = 1
			}
			tbl.ColumnDefinitions = append(tbl.ColumnDefinitions, d)
		}
	}
	now := time.Now()
	tbl.Rows = []metav1.TableRow{}
	for _, o := range objs {
		row := metav1.TableRow{Cells: []any{o.Metadata.Name}}
		for _, c := range cols {
			row.Cells = append(row.Cells, c.Value(o, now))
		}
		var raw []byte
		var err error
		switch t.include {
		case "Metadata":
			raw, err = json.Marshal(struct {
				api.TypeMeta `json:",inline"`
				Metadata     api.ObjectMeta `json:"metadata"`
			}{api.TypeMeta{APIVersion: "meta.k8s.io/v1", Kind: "PartialObjectMetadata"}, o.Metadata})
		case "Object":
			raw, err = json.Marshal(o)
		}
		if err != nil {
			return nil, err
		}
		if raw != nil {
			row.Object = runtime.RawExtension{Raw: raw}
		}
		tbl.Rows = append(tbl.Rows, row)
	}
	return tbl, nil
}

// view returns obj as the API shows it: through its kind's response filter.
func (s *Server) view(obj *api.Object) *api.Object {
	if f, ok := s.hooks[obj.Kind].(ResponseFilter); ok {
		obj = obj.DeepCopy()
		f.FilterResponse(obj)
	}
	return obj
}

// kubeGet is get, with a Table when asked for one.
func (s *Server) kubeGet(req *request) error {
	t, err := wantsTable(req.r)
	if err != nil || t == nil {
		if err != nil {
			return err
		}
		return s.get(req)
	}
	obj, err := s.authorizeObject(req, api.VerbGet)
	if err != nil {
		return err
	}
	if obj == nil {
		if obj, err = s.store.Get(req.r.Context(), req.key()); err != nil {
			return err
		}
	}
	tbl, err := s.table(req.kind, []*api.Object{s.shown(obj)}, t, true)
	if err != nil {
		return err
	}
	tbl.ResourceVersion = obj.Metadata.ResourceVersion
	req.w.Header().Set("Content-Type", tableContentType)
	writeBody(req.w, http.StatusOK, tbl)
	return nil
}

// fieldFilter is a field selector over the fields Flotilla can select on.
type fieldFilter struct{ sel fields.Selector }

func parseFieldSelector(s string) (*fieldFilter, error) {
	if s == "" {
		return nil, nil
	}
	sel, err := fields.ParseSelector(s)
	if err != nil {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("invalid field selector %q: %v", s, err))
	}
	for _, r := range sel.Requirements() {
		if r.Field != "metadata.name" && r.Field != "metadata.namespace" {
			return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("field label not supported: %s (use metadata.name or metadata.namespace)", r.Field))
		}
	}
	return &fieldFilter{sel: sel}, nil
}

func (f *fieldFilter) matches(o *api.Object) bool {
	return f == nil || f.sel.Matches(fields.Set{"metadata.name": o.Metadata.Name, "metadata.namespace": o.Metadata.Namespace})
}

// kubeList is list, with tables, field selectors and Kubernetes' watch from "0"; a plain
// list or watch goes to list unchanged, so Flotilla's own clients keep its fast path.
func (s *Server) kubeList(req *request) error {
	q := req.r.URL.Query()
	t, err := wantsTable(req.r)
	if err != nil {
		return err
	}
	ff, err := parseFieldSelector(q.Get("fieldSelector"))
	if err != nil {
		return err
	}
	watch := q.Get("watch") == "true" || q.Get("watch") == "1"
	if t == nil && ff == nil && !(watch && q.Get("resourceVersion") == "0") {
		return s.list(req)
	}
	scope, err := s.listScopeOf(req, watch)
	if err != nil {
		return err
	}
	if watch {
		return s.kubeWatch(req, scope, ff, t)
	}
	limit := 0
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 0 {
			return statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("invalid limit %q", l))
		}
	}
	objs, res, err := s.listObjects(req, scope, ff, limit, q.Get("continue"))
	if err != nil {
		return err
	}
	meta := metav1.ListMeta{ResourceVersion: strconv.FormatInt(res.Revision, 10), Continue: res.Continue}
	if t == nil {
		items := make([]json.RawMessage, 0, len(objs))
		for _, o := range objs {
			raw, err := json.Marshal(o)
			if err != nil {
				return err
			}
			items = append(items, raw)
		}
		writeBody(req.w, http.StatusOK, struct {
			api.TypeMeta `json:",inline"`
			Metadata     metav1.ListMeta   `json:"metadata"`
			Items        []json.RawMessage `json:"items"`
		}{api.TypeMeta{APIVersion: api.APIVersion, Kind: req.kind.Kind + "List"}, meta, items})
		return nil
	}
	tbl, err := s.table(req.kind, objs, t, true)
	if err != nil {
		return err
	}
	tbl.ListMeta = meta
	req.w.Header().Set("Content-Type", tableContentType)
	writeBody(req.w, http.StatusOK, tbl)
	return nil
}

// listObjects reads one page, decoded, filtered for the response and by ff.
// listScope is what a list or watch reads: the namespace and selector asked for, narrowed
// to what the caller may see, and the per-object filter that remains.
type listScope struct {
	ns     string
	sel    labels.Selector
	filter *listFilter
}

// listScopeOf decides a list or watch and reads its label selector: what the store is asked
// for, narrowed to what the caller may see, and the filter left to apply.
func (s *Server) listScopeOf(req *request, watch bool) (listScope, error) {
	verb := api.VerbList
	if watch {
		verb = api.VerbWatch
	}
	filter, err := s.listFilterFor(req, verb)
	if err != nil {
		return listScope{}, err
	}
	q := req.r.URL.Query()
	sel, err := labels.Parse(q.Get("labelSelector"))
	if err != nil {
		return listScope{}, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("invalid label selector %q: %v", q.Get("labelSelector"), err))
	}
	ns, sel, overlap := filter.narrow(req.ns, sel)
	if !overlap {
		// Nothing the caller may see lies there. The store answers a selector of nothing
		// with nothing, and the filter keeps nothing besides.
		ns, sel = req.ns, labels.Nothing()
		filter = &listFilter{keep: func(string, string, map[string]string) bool { return false }}
	}
	return listScope{ns: ns, sel: sel, filter: filter}, nil
}

func (s *Server) listObjects(req *request, sc listScope, ff *fieldFilter, limit int, cont string) ([]*api.Object, *store.ListResult, error) {
	res, err := s.store.List(req.r.Context(), store.ListOptions{Kind: req.kind.Kind, Namespace: sc.ns, Selector: sc.sel, Limit: limit, Continue: cont})
	if err != nil {
		if errors.Is(err, store.ErrCompacted) {
			return nil, nil, statusErr(http.StatusGone, api.ReasonGone, "the continue token has expired: the list must be restarted without it")
		}
		if errors.Is(err, store.ErrInvalidContinue) {
			return nil, nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "invalid continue token")
		}
		return nil, nil, err
	}
	objs := make([]*api.Object, 0, len(res.Items))
	for _, it := range res.Items {
		o, err := store.Decode(it)
		if err != nil {
			return nil, nil, err
		}
		if ff.matches(o) && sc.filter.keepObject(o) {
			objs = append(objs, s.shown(o))
		}
	}
	return objs, res, nil
}

// kubeWatch streams changes as Kubernetes does: from resourceVersion 0 it first sends the
// current objects as ADDED; events pass the field selector; objects are Table rows when
// asked for; bookmarks only when the client allows them.
func (s *Server) kubeWatch(req *request, sc listScope, ff *fieldFilter, t *tableRequest) error {
	q := req.r.URL.Query()
	ctx := req.r.Context()
	var from int64
	var initial []*api.Object
	switch rv := q.Get("resourceVersion"); rv {
	case "":
	case "0":
		objs, res, err := s.listObjects(req, sc, ff, 0, "")
		if err != nil {
			return err
		}
		initial, from = objs, res.Revision
	default:
		var err error
		if from, err = strconv.ParseInt(rv, 10, 64); err != nil || from < 0 {
			return statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("invalid resourceVersion %q", rv))
		}
		if err := s.checkWatchFrom(ctx, from); err != nil {
			return err
		}
	}
	ch, err := s.store.Watch(ctx, store.WatchOptions{Kind: req.kind.Kind, Namespace: sc.ns, Selector: sc.sel, Revision: from})
	if err != nil {
		return err
	}
	bookmarks := q.Get("allowWatchBookmarks") == "true"
	w := req.w
	if t != nil {
		w.Header().Set("Content-Type", tableContentType+";stream=watch")
	} else {
		w.Header().Set("Content-Type", "application/json;stream=watch")
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	first := true
	build := func(typ string, o *api.Object) (*api.WatchEvent, error) {
		var obj any = o
		if t != nil {
			tbl, err := s.table(req.kind, []*api.Object{o}, t, first)
			if err != nil {
				return nil, err
			}
			tbl.ResourceVersion = o.Metadata.ResourceVersion
			obj = tbl
			first = false
		}
		raw, err := json.Marshal(obj)
		if err != nil {
			return nil, err
		}
		return &api.WatchEvent{Type: typ, Object: raw}, nil
	}
	for _, o := range initial {
		ev, err := build(api.Added, o)
		if err != nil {
			return nil
		}
		if err := enc.Encode(ev); err != nil {
			return nil
		}
	}
	event := func(ev store.Event) (*api.WatchEvent, error) {
		o, err := store.Decode(ev.Object)
		if err != nil || !ff.matches(o) || !sc.filter.keepObject(o) {
			return nil, nil
		}
		if ev.Type == api.Deleted && sc.filter.outOfView(ev.Object) {
			return build(ev.Type, tombstone(o))
		}
		return build(ev.Type, s.shown(o))
	}
	bookmark := func(last int64) *api.WatchEvent {
		if !bookmarks {
			return nil
		}
		var bm any = api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: req.kind.Kind},
			Metadata: api.ObjectMeta{ResourceVersion: strconv.FormatInt(last, 10)}}
		if t != nil {
			bm = metav1.Table{TypeMeta: metav1.TypeMeta{APIVersion: "meta.k8s.io/v1", Kind: "Table"},
				ListMeta: metav1.ListMeta{ResourceVersion: strconv.FormatInt(last, 10)}}
		}
		raw, _ := json.Marshal(bm)
		return &api.WatchEvent{Type: api.Bookmark, Object: raw}
	}
	s.streamWatch(ctx, w, enc, ch, from, event, bookmark)
	return nil
}

func jsonMarshal(v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}
