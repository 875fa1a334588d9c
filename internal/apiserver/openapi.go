package apiserver

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"time"

	"k8s.io/kube-openapi/pkg/validation/spec"

	"flotilla.dev/api"
)

//go:generate go run flotilla.dev/hack/apidocs -src ../../api -out zz_generated_apidocs.go

// This file describes Flotilla's kinds as OpenAPI schemas, derived from the Go types in
// package api so that they cannot drift from what the server decodes. kubectl reads them
// (OpenAPI v3) for `explain` and to learn that the server validates fields itself; the
// server-side apply field manager types objects with them.

// kindTypes are each kind's spec and status types.
var kindTypes = map[string][2]reflect.Type{
	api.KindCluster:           {reflect.TypeFor[api.ClusterSpec](), reflect.TypeFor[api.ClusterStatus]()},
	api.KindClusterGroup:      {reflect.TypeFor[api.ClusterGroupSpec](), reflect.TypeFor[api.ClusterGroupStatus]()},
	api.KindRegistrationToken: {reflect.TypeFor[api.RegistrationTokenSpec](), reflect.TypeFor[api.RegistrationTokenStatus]()},
	api.KindGitRepo:           {reflect.TypeFor[api.GitRepoSpec](), reflect.TypeFor[api.GitRepoStatus]()},
	api.KindBundle:            {reflect.TypeFor[api.BundleSpec](), reflect.TypeFor[api.BundleStatus]()},
	api.KindSecret:            {reflect.TypeFor[api.SecretSpec](), nil},
	api.KindUser:              {reflect.TypeFor[api.UserSpec](), reflect.TypeFor[api.UserStatus]()},
	api.KindRole:              {reflect.TypeFor[api.RoleSpec](), reflect.TypeFor[api.RoleStatus]()},
	api.KindRoleBinding:       {reflect.TypeFor[api.RoleBindingSpec](), nil},
	api.KindProject:           {reflect.TypeFor[api.ProjectSpec](), reflect.TypeFor[api.ProjectStatus]()},
}

var (
	timeType        = reflect.TypeFor[time.Time]()
	rawType         = reflect.TypeFor[json.RawMessage]()
	intOrStringType = reflect.TypeFor[api.IntOrString]()
)

// schemaFor builds the schema of a Go type as encoding/json writes it.
func schemaFor(t reflect.Type) spec.Schema {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case timeType:
		return *spec.DateTimeProperty()
	case rawType:
		return preserveUnknown()
	case intOrStringType:
		s := spec.Schema{}
		s.AnyOf = []spec.Schema{*spec.Int64Property(), *spec.StringProperty()}
		s.AddExtension("x-kubernetes-int-or-string", true)
		return s
	}
	switch t.Kind() {
	case reflect.String:
		return *spec.StringProperty()
	case reflect.Bool:
		return *spec.BoolProperty()
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint32, reflect.Uint64:
		return *spec.Int64Property()
	case reflect.Float32, reflect.Float64:
		return *spec.Float64Property()
	case reflect.Interface:
		return preserveUnknown()
	case reflect.Slice:
		return *spec.ArrayProperty(ptr(schemaFor(t.Elem())))
	case reflect.Map:
		return *spec.MapProperty(ptr(schemaFor(t.Elem())))
	case reflect.Struct:
		s := spec.Schema{}
		s.Type = spec.StringOrArray{"object"}
		s.Description = typeDoc(t)
		s.Properties = map[string]spec.Schema{}
		addFields(&s, t)
		return s
	}
	return preserveUnknown()
}

func addFields(s *spec.Schema, t reflect.Type) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if f.Anonymous && (name == "" || strings.Contains(opts, "inline")) {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			addFields(s, ft)
			continue
		}
		if name == "" {
			name = f.Name
		}
		fs := schemaFor(f.Type)
		if d := fieldDoc(t, f.Name); d != "" {
			fs.Description = d
		} else if fs.Description == "" {
			// A list or map of a documented type: what one element is.
			if et := elemType(f.Type); et != nil {
				fs.Description = typeDoc(et)
			}
		}
		s.Properties[name] = fs
	}
}

// elemType is the element type of a list or map type, or nil.
func elemType(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Slice && t.Kind() != reflect.Map {
		return nil
	}
	t = t.Elem()
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// typeDoc is the doc comment of a type of package api (apiDocs, generated from the source).
func typeDoc(t reflect.Type) string {
	if t.PkgPath() != apiPkgPath {
		return ""
	}
	return apiDocs[t.Name()]
}

// fieldDoc is the doc comment of the field name of t, a struct type of package api.
func fieldDoc(t reflect.Type, name string) string {
	if t.PkgPath() != apiPkgPath {
		return ""
	}
	return apiDocs[t.Name()+"."+name]
}

var apiPkgPath = reflect.TypeFor[api.ObjectMeta]().PkgPath()

func preserveUnknown() spec.Schema {
	s := spec.Schema{}
	s.AddExtension("x-kubernetes-preserve-unknown-fields", true)
	return s
}

func ptr(s spec.Schema) *spec.Schema { return &s }

// or is a, or b when a is empty.
func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func withDescription(s spec.Schema, d string) spec.Schema {
	s.Description = d
	return s
}

// metadataSchema is ObjectMeta's schema. managedFields is opaque here: the field manager
// takes it off an object before typing it.
func metadataSchema() spec.Schema {
	s := schemaFor(reflect.TypeFor[api.ObjectMeta]())
	s.Properties["managedFields"] = withDescription(*spec.ArrayProperty(ptr(preserveUnknown())), fieldDoc(reflect.TypeFor[api.ObjectMeta](), "ManagedFields"))
	s.Description = "Standard object metadata: name, namespace, labels, annotations and the fields the server sets."
	return s
}

// gvkExtension names the kind a schema or operation is for, as Kubernetes does.
func gvkExtension(group, version, kind string) []any {
	return []any{map[string]any{"group": group, "version": version, "kind": kind}}
}

// definitionName is a kind's schema name in the Kubernetes style (reversed group).
func definitionName(group, version, kind string) string {
	parts := strings.Split(group, ".")
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	if group == "" {
		parts = []string{"io.k8s.api.core"}
	}
	return strings.Join(parts, ".") + "." + version + "." + kind
}

var kindDescriptions = map[string]string{
	api.KindCluster:           "A downstream Kubernetes cluster registered by its agent.",
	api.KindClusterGroup:      "A named label selector over clusters.",
	api.KindRegistrationToken: "A token agents exchange once for a per-cluster credential.",
	api.KindGitRepo:           "A git repository Flotilla deploys bundles from, in Fleet's shape.",
	api.KindBundle:            "One deployable unit: content stored by digest, and where and how to deploy it.",
	api.KindSecret:            "Credentials the server uses (git, Helm, webhooks); values are stored encrypted and never returned.",
}

// objectSchema is the full schema of one kind in one group.
func objectSchema(group, version, kind string) spec.Schema {
	s := spec.Schema{}
	s.Type = spec.StringOrArray{"object"}
	s.Description = kindDescriptions[kind]
	s.Properties = map[string]spec.Schema{
		"apiVersion": withDescription(*spec.StringProperty(), "The versioned schema of this object: "+groupVersion(group, version)+"."),
		"kind":       withDescription(*spec.StringProperty(), "The kind of this object: "+kind+"."),
		"metadata":   metadataSchema(),
	}
	types := kindTypes[kind]
	if group == "" && kind == api.KindSecret {
		// Kubernetes' own Secret shape: type, data and stringData at the top level.
		s.Properties["type"] = *spec.StringProperty()
		b := spec.StringProperty()
		b.Format = "byte"
		s.Properties["data"] = *spec.MapProperty(b)
		s.Properties["stringData"] = *spec.MapProperty(spec.StringProperty())
		s.Properties["immutable"] = *spec.BoolProperty()
	} else {
		s.Properties["spec"] = withDescription(schemaFor(types[0]), or(typeDoc(types[0]), "What the object should be."))
		if types[1] != nil {
			s.Properties["status"] = withDescription(schemaFor(types[1]), or(typeDoc(types[1]), "What the server observed.")+
				" Written by Flotilla, not by clients.")
		}
	}
	s.AddExtension("x-kubernetes-group-version-kind", gvkExtension(group, version, kind))
	return s
}

func groupVersion(group, version string) string {
	if group == "" {
		return version
	}
	return group + "/" + version
}

// servedGroup is one API group-version and the kinds served in it.
type servedGroup struct {
	group, version string
	kinds          []api.KindInfo
}

func (g servedGroup) gv() string { return groupVersion(g.group, g.version) }

// path is the group-version's URL path without its leading slash, as OpenAPI v3 names it.
func (g servedGroup) path() string {
	if g.group == "" {
		return "api/" + g.version
	}
	return "apis/" + g.gv()
}

// servedGroups lists what the server serves: Flotilla's group first, so that kubectl picks
// it for a name both groups have; Fleet's group for the kinds Fleet has; and core v1 for
// Kubernetes-shaped Secrets.
func servedGroups() []servedGroup {
	own := servedGroup{group: api.Group, version: api.Version, kinds: api.Kinds}
	fleet := servedGroup{group: api.FleetGroup, version: api.Version}
	for _, k := range api.Kinds {
		if api.KnownAPIVersion(api.FleetAPIVersion, k.Kind) {
			fleet.kinds = append(fleet.kinds, k)
		}
	}
	secret, _ := api.LookupKind(api.KindSecret)
	core := servedGroup{group: "", version: "v1", kinds: []api.KindInfo{secret}}
	return []servedGroup{own, fleet, core}
}

// openAPIDocs are the OpenAPI v3 documents, built once: they depend only on the code.
type openAPIDocs struct {
	once  sync.Once
	index []byte
	docs  map[string][]byte // by group-version path ("apis/flotilla.dev/v1alpha1")
	// schemas are Flotilla's group's definitions, for the field manager.
	schemas map[string]*spec.Schema
}

var openapi openAPIDocs

func (d *openAPIDocs) build() {
	d.once.Do(func() {
		d.docs = map[string][]byte{}
		d.schemas = map[string]*spec.Schema{}
		paths := map[string]any{}
		for _, g := range servedGroups() {
			doc := groupDocument(g)
			data, err := json.Marshal(doc)
			if err != nil {
				panic(fmt.Sprintf("encoding the OpenAPI document of %s: %v", g.gv(), err))
			}
			d.docs[g.path()] = data
			sum := sha512.Sum512(data)
			paths[g.path()] = map[string]string{"serverRelativeURL": "/openapi/v3/" + g.path() + "?hash=" + strings.ToUpper(hex.EncodeToString(sum[:]))}
			if g.group == api.Group {
				for _, k := range g.kinds {
					s := objectSchema(g.group, g.version, k.Kind)
					d.schemas[definitionName(g.group, g.version, k.Kind)] = &s
				}
			}
		}
		d.index, _ = json.Marshal(map[string]any{"paths": paths})
	})
}

// groupDocument is the OpenAPI v3 document of one group-version: each kind's schema and its
// object and collection paths. PATCH operations name the kind and take fieldValidation,
// which is how kubectl learns that the server validates fields itself.
func groupDocument(g servedGroup) map[string]any {
	schemas := map[string]any{}
	paths := map[string]any{}
	base := "/" + g.path()
	param := func(name, in, desc string, required bool) map[string]any {
		return map[string]any{"name": name, "in": in, "description": desc, "required": required, "schema": map[string]string{"type": "string"}}
	}
	writeParams := []any{
		param("dryRun", "query", "When present, the request is validated and nothing is stored.", false),
		param("fieldManager", "query", "The name of the actor making the change.", false),
		param("fieldValidation", "query", "Flotilla always rejects unknown and duplicate fields (Strict).", false),
	}
	for _, k := range g.kinds {
		name := definitionName(g.group, g.version, k.Kind)
		schemas[name] = objectSchema(g.group, g.version, k.Kind)
		ref := map[string]any{"$ref": "#/components/schemas/" + name}
		body := map[string]any{"content": map[string]any{"application/json": map[string]any{"schema": ref}}}
		ok := map[string]any{"200": map[string]any{"description": "OK", "content": map[string]any{"application/json": map[string]any{"schema": ref}}}}
		op := func(action, id string, extra map[string]any) map[string]any {
			o := map[string]any{"operationId": id + k.Kind, "responses": ok,
				"x-kubernetes-action":             action,
				"x-kubernetes-group-version-kind": gvkExtension(g.group, g.version, k.Kind)[0]}
			for key, v := range extra {
				o[key] = v
			}
			return o
		}
		patchBody := map[string]any{"content": map[string]any{}}
		for _, ct := range []string{"application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"} {
			patchBody["content"].(map[string]any)[ct] = map[string]any{"schema": map[string]string{"type": "object"}}
		}
		if g.group == "" {
			patchBody["content"].(map[string]any)["application/strategic-merge-patch+json"] = map[string]any{"schema": map[string]string{"type": "object"}}
		}
		item := base + "/namespaces/{namespace}/" + k.Plural + "/{name}"
		coll := base + "/namespaces/{namespace}/" + k.Plural
		nsParams := []any{param("namespace", "path", "The object's namespace.", true)}
		paths[coll] = map[string]any{
			"parameters": nsParams,
			"get":        op("list", "list", nil),
			"post":       op("post", "create", map[string]any{"requestBody": body, "parameters": writeParams}),
		}
		paths[item] = map[string]any{
			"parameters": append(nsParams, param("name", "path", "The object's name.", true)),
			"get":        op("get", "read", nil),
			"put":        op("put", "replace", map[string]any{"requestBody": body, "parameters": writeParams}),
			"patch": op("patch", "patch", map[string]any{"requestBody": patchBody,
				"parameters": append(writeParams, param("force", "query", "Take fields other managers own (server-side apply).", false))}),
			"delete": op("delete", "delete", nil),
		}
		paths[base+"/"+k.Plural] = map[string]any{"get": op("list", "listAllNamespaces", nil)}
	}
	return map[string]any{
		"openapi":    "3.0.0",
		"info":       map[string]string{"title": "Flotilla", "version": g.gv()},
		"paths":      paths,
		"components": map[string]any{"schemas": schemas},
	}
}

func (s *Server) openAPIIndex(w http.ResponseWriter, r *http.Request) {
	openapi.build()
	w.Header().Set("Content-Type", "application/json")
	w.Write(openapi.index)
}

func (s *Server) openAPIGroup(w http.ResponseWriter, r *http.Request) {
	openapi.build()
	p := strings.TrimPrefix(r.URL.Path, "/openapi/v3/")
	doc, ok := openapi.docs[p]
	if !ok {
		WriteError(w, statusErr(http.StatusNotFound, api.ReasonNotFound, fmt.Sprintf("no OpenAPI document for %q", p)))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Query().Get("hash") != "" {
		// The index names documents by their hash, so a hashed URL never changes.
		w.Header().Set("Cache-Control", "public, immutable")
	}
	w.Write(doc)
}
