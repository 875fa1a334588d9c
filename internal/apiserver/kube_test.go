package apiserver_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/csaupgrade"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/secrets"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

const token = "test-admin-token-0123456789"

type kubeEnv struct {
	url   string
	st    store.Store
	rest  *rest.Config
	dyn   *dynamic.DynamicClient
	disco *discovery.DiscoveryClient
}

// start serves the API over a real SQLite store, with Secrets sealed as the server does.
func start(t *testing.T, opts ...func(*apiserver.Server)) *kubeEnv {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, t.TempDir(), sqlstore.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a := auth.NewAuthenticator(st)
	if _, err := a.Bootstrap(ctx, token); err != nil {
		t.Fatal(err)
	}
	keeper, err := secrets.Open(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	s := apiserver.New(st, a, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.SetHooks(api.KindSecret, keeper)
	for _, o := range opts {
		o(s)
	}
	mux := http.NewServeMux()
	s.Register(mux)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	cfg := &rest.Config{Host: ts.URL, BearerToken: token}
	e := &kubeEnv{url: ts.URL, st: st, rest: cfg}
	if e.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if e.disco, err = discovery.NewDiscoveryClientForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *kubeEnv) raw(t *testing.T, method, path, accept, ctype, body string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(method, e.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(data)
}

var (
	gitrepos      = schema.GroupVersionResource{Group: api.Group, Version: api.Version, Resource: "gitrepos"}
	fleetGitrepos = schema.GroupVersionResource{Group: api.FleetGroup, Version: api.Version, Resource: "gitrepos"}
	coreSecrets   = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func obj(t *testing.T, y string) *unstructured.Unstructured {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		t.Fatal(err)
	}
	return u
}

// client-go finds every kind through aggregated discovery and through the legacy endpoints.
func TestDiscovery(t *testing.T) {
	e := start(t)
	groups, lists, err := e.disco.ServerGroupsAndResources()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range groups {
		names = append(names, g.Name)
	}
	if got := strings.Join(names, ","); got != ","+api.Group+","+api.FleetGroup {
		t.Errorf("groups %q, want the core group, %s and %s", got, api.Group, api.FleetGroup)
	}
	found := map[string]metav1.APIResource{}
	for _, l := range lists {
		for _, r := range l.APIResources {
			found[l.GroupVersion+"/"+r.Name] = r
		}
	}
	gr := found[api.APIVersion+"/gitrepos"]
	if gr.Kind != api.KindGitRepo || !gr.Namespaced || strings.Join(gr.ShortNames, ",") != "gr" || strings.Join(gr.Categories, ",") != "flotilla" {
		t.Errorf("gitrepos: %+v, want kind GitRepo, namespaced, short name gr, category flotilla", gr)
	}
	for _, want := range []string{api.FleetAPIVersion + "/gitrepos", api.FleetAPIVersion + "/clustergroups", "v1/secrets", api.APIVersion + "/bundles/status"} {
		if _, ok := found[want]; !ok {
			t.Errorf("discovery lacks %s", want)
		}
	}
	// The legacy form, for clients that do not ask for the aggregated one.
	code, h, body := e.raw(t, "GET", "/apis", "application/json", "", "")
	var gl metav1.APIGroupList
	if code != 200 || json.Unmarshal([]byte(body), &gl) != nil || len(gl.Groups) != 2 || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		t.Errorf("GET /apis: %d %s", code, body)
	}
	code, _, body = e.raw(t, "GET", "/apis/"+api.APIVersion, "application/json", "", "")
	var rl metav1.APIResourceList
	if code != 200 || json.Unmarshal([]byte(body), &rl) != nil || rl.GroupVersion != api.APIVersion || len(rl.APIResources) < len(api.Kinds) {
		t.Errorf("GET /apis/%s: %d %s", api.APIVersion, code, body)
	}
	// Without a token, nothing.
	req, _ := http.NewRequest("GET", e.url+"/apis", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Errorf("anonymous discovery: %v %v, want 401", resp.StatusCode, err)
	}
	// OpenAPI v3: kubectl explain and apply's validation read it.
	oa, err := e.disco.OpenAPIV3().Paths()
	if err != nil {
		t.Fatal(err)
	}
	gv, ok := oa["apis/"+api.APIVersion]
	if !ok {
		t.Fatalf("OpenAPI v3 paths %v lack %s", oa, api.APIVersion)
	}
	doc, err := gv.Schema("application/json")
	if err != nil || !strings.Contains(string(doc), `"dev.flotilla.v1alpha1.GitRepo"`) || !strings.Contains(string(doc), `"fieldValidation"`) {
		t.Errorf("OpenAPI document: %v\n%.300s", err, doc)
	}
}

// Tables carry the columns `flotilla get` prints, for get, list and watch.
func TestTable(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	_, err := e.dyn.Resource(fleetGitrepos).Namespace("ws").Create(ctx, obj(t, `
apiVersion: fleet.cattle.io/v1alpha1
kind: GitRepo
metadata: {name: apps, labels: {team: a}}
spec: {repo: https://git.example.com/apps.git}
`), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
	for _, path := range []string{"/apis/" + api.APIVersion + "/namespaces/ws/gitrepos", "/apis/" + api.APIVersion + "/gitrepos", "/apis/" + api.APIVersion + "/namespaces/ws/gitrepos/apps"} {
		code, h, body := e.raw(t, "GET", path, accept, "", "")
		var tbl metav1.Table
		if code != 200 || json.Unmarshal([]byte(body), &tbl) != nil {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		want := []string{"Name"}
		for _, c := range api.Columns(api.KindGitRepo) {
			want = append(want, c.Name)
		}
		var got []string
		for _, c := range tbl.ColumnDefinitions {
			got = append(got, c.Name)
		}
		if strings.Join(got, ",") != strings.Join(want, ",") || !strings.Contains(h.Get("Content-Type"), "as=Table") {
			t.Errorf("GET %s: columns %v, want %v", path, got, want)
		}
		if len(tbl.Rows) != 1 || tbl.Rows[0].Cells[0] != "apps" || tbl.Rows[0].Cells[1] != "https://git.example.com/apps.git" || tbl.Rows[0].Cells[4] != "GitUpdating" {
			t.Errorf("GET %s: rows %+v", path, tbl.Rows)
		}
		var meta metav1.PartialObjectMetadata
		if len(tbl.Rows) == 1 {
			json.Unmarshal(tbl.Rows[0].Object.Raw, &meta)
		}
		if meta.Namespace != "ws" || meta.Labels["team"] != "a" {
			t.Errorf("GET %s: row object %s, want its metadata", path, tbl.Rows[0].Object.Raw)
		}
	}
	// A field selector on the name, as kubectl sends to watch one object.
	code, _, body := e.raw(t, "GET", "/apis/"+api.APIVersion+"/gitrepos?fieldSelector=metadata.name%3Dother", accept, "", "")
	if code != 200 || !strings.Contains(body, `"rows":[]`) {
		t.Errorf("field selector: %d %s, want no rows", code, body)
	}
	if code, _, body := e.raw(t, "GET", "/apis/"+api.APIVersion+"/gitrepos?fieldSelector=spec.repo%3Dx", "", "", ""); code != 400 || !strings.Contains(body, "field label not supported") {
		t.Errorf("unsupported field selector: %d %s", code, body)
	}

	// A watch from "0" starts with the current object, as a Table row.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, _ := http.NewRequestWithContext(wctx, "GET", e.url+"/apis/"+api.APIVersion+"/namespaces/ws/gitrepos?watch=true&resourceVersion=0&fieldSelector=metadata.name%3Dapps", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", accept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	var ev struct {
		Type   string
		Object metav1.Table
	}
	if err := dec.Decode(&ev); err != nil || ev.Type != api.Added || len(ev.Object.Rows) != 1 || len(ev.Object.ColumnDefinitions) == 0 {
		t.Fatalf("first event %+v, %v: want ADDED with one row and the columns", ev, err)
	}
	if _, err := e.dyn.Resource(gitrepos).Namespace("ws").Patch(ctx, "apps", types.MergePatchType, []byte(`{"spec":{"branch":"main"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := dec.Decode(&ev); err != nil || ev.Type != api.Modified || len(ev.Object.Rows) != 1 {
		t.Fatalf("second event %+v, %v: want MODIFIED", ev, err)
	}
}

// Merge, JSON and apply patches; strategic merge only where Kubernetes has it.
func TestPatch(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	res := e.dyn.Resource(gitrepos).Namespace("ws")
	if _, err := res.Create(ctx, obj(t, `
apiVersion: flotilla.dev/v1alpha1
kind: GitRepo
metadata: {name: apps}
spec: {repo: https://git.example.com/apps.git, paths: [a]}
`), metav1.CreateOptions{FieldManager: "creator"}); err != nil {
		t.Fatal(err)
	}
	got, err := res.Patch(ctx, "apps", types.MergePatchType, []byte(`{"metadata":{"labels":{"env":"prod"}},"spec":{"paths":["b"]}}`), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if paths, _, _ := unstructured.NestedStringSlice(got.Object, "spec", "paths"); got.GetLabels()["env"] != "prod" || strings.Join(paths, ",") != "b" || got.GetGeneration() != 2 {
		t.Errorf("after merge patch: %v", got.Object)
	}
	got, err = res.Patch(ctx, "apps", types.JSONPatchType, []byte(`[{"op":"add","path":"/spec/paths/-","value":"c"},{"op":"replace","path":"/spec/branch","value":"main"}]`), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if paths, _, _ := unstructured.NestedStringSlice(got.Object, "spec", "paths"); strings.Join(paths, ",") != "b,c" {
		t.Errorf("after JSON patch: %v", got.Object)
	}
	// A bad patch changes nothing and names the field.
	_, err = res.Patch(ctx, "apps", types.MergePatchType, []byte(`{"spec":{"pollingInterval":"soon"}}`), metav1.PatchOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.pollingInterval") {
		t.Errorf("invalid patch: %v, want 422 naming spec.pollingInterval", err)
	}
	_, err = res.Patch(ctx, "apps", types.StrategicMergePatchType, []byte(`{"spec":{"branch":"x"}}`), metav1.PatchOptions{})
	if !apierrors.IsUnsupportedMediaType(err) {
		t.Errorf("strategic merge patch on a GitRepo: %v, want 415", err)
	}

	// Server-side apply: the manager owns what it applied; another manager's change to a
	// field it owns is a conflict until forced; dropping a field it owned removes it.
	apply := func(manager string, force bool, y string) (*unstructured.Unstructured, error) {
		js, _ := yaml.YAMLToJSON([]byte(y))
		return e.dyn.Resource(fleetGitrepos).Namespace("ws").Patch(ctx, "web", types.ApplyPatchType, js, metav1.PatchOptions{FieldManager: manager, Force: &force})
	}
	got, err = apply("alice", false, `
apiVersion: fleet.cattle.io/v1alpha1
kind: GitRepo
metadata: {name: web, labels: {a: "1"}}
spec: {repo: https://git.example.com/web.git, paths: [x], branch: main}
`)
	if err != nil {
		t.Fatal(err)
	}
	if mf := got.GetManagedFields(); len(mf) != 1 || mf[0].Manager != "alice" || mf[0].Operation != metav1.ManagedFieldsOperationApply {
		t.Errorf("managedFields after the first apply: %+v", mf)
	}
	// Served in the group it was written in, so that a client reads back what it applied.
	if got.GetAPIVersion() != api.FleetAPIVersion {
		t.Errorf("apiVersion under Fleet's group: %s", got.GetAPIVersion())
	}
	if own, err := res.Get(ctx, "web", metav1.GetOptions{}); err != nil || own.GetAPIVersion() != api.APIVersion {
		t.Errorf("apiVersion under Flotilla's group: %v %v", own, err)
	}
	_, err = apply("bob", false, `
apiVersion: flotilla.dev/v1alpha1
kind: GitRepo
metadata: {name: web}
spec: {repo: https://git.example.com/web.git, branch: dev}
`)
	if !apierrors.IsConflict(err) || !strings.Contains(err.Error(), "alice") {
		t.Fatalf("apply by another manager: %v, want a conflict naming alice", err)
	}
	if _, err = apply("bob", true, `
apiVersion: flotilla.dev/v1alpha1
kind: GitRepo
metadata: {name: web}
spec: {repo: https://git.example.com/web.git, branch: dev}
`); err != nil {
		t.Fatal(err)
	}
	got, err = apply("alice", false, `
apiVersion: fleet.cattle.io/v1alpha1
kind: GitRepo
metadata: {name: web}
spec: {repo: https://git.example.com/web.git}
`)
	if err != nil {
		t.Fatal(err)
	}
	branch, _, _ := unstructured.NestedString(got.Object, "spec", "branch")
	_, hasPaths, _ := unstructured.NestedFieldNoCopy(got.Object, "spec", "paths")
	if branch != "dev" || hasPaths || len(got.GetLabels()) != 0 {
		t.Errorf("after alice drops fields: branch %q (want bob's dev), paths kept %v, labels %v", branch, hasPaths, got.GetLabels())
	}
	// An update by another client is recorded, so apply conflicts with it too.
	if _, err := res.Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"paused":true}}`), metav1.PatchOptions{FieldManager: "carol"}); err != nil {
		t.Fatal(err)
	}
	if _, err = apply("alice", false, `
apiVersion: fleet.cattle.io/v1alpha1
kind: GitRepo
metadata: {name: web}
spec: {repo: https://git.example.com/web.git, paused: false}
`); !apierrors.IsConflict(err) || !strings.Contains(err.Error(), "carol") {
		t.Errorf("apply over carol's update: %v, want a conflict naming carol", err)
	}
	// Apply without a field manager, or with an unknown field, is refused.
	if _, err := apply("", false, "apiVersion: flotilla.dev/v1alpha1\nkind: GitRepo\nmetadata: {name: web}\n"); err == nil {
		t.Error("apply without a fieldManager succeeded")
	}
	if _, err := apply("alice", false, "apiVersion: flotilla.dev/v1alpha1\nkind: GitRepo\nmetadata: {name: web}\nspec: {repo: https://x/y.git, colour: blue}\n"); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("apply with an unknown field: %v, want an error naming it", err)
	}
	if err := res.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := res.Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get after delete: %v", err)
	}
}

// Kubernetes-shaped Secrets are accepted under /api/v1 and stored as Flotilla's sealed Secret;
// no value comes back, not even through kubectl's last-applied annotation.
func TestCoreV1Secret(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	res := e.dyn.Resource(coreSecrets).Namespace("ws")
	s := obj(t, `
apiVersion: v1
kind: Secret
metadata:
  name: git-auth
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"apiVersion":"v1","kind":"Secret","stringData":{"password":"hunter2-secret"},"type":"kubernetes.io/basic-auth"}'
type: kubernetes.io/basic-auth
data: {username: ZGVwbG95}
stringData: {password: hunter2-secret}
`)
	created, err := res.Create(ctx, s, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, u *unstructured.Unstructured) {
		t.Helper()
		data, _ := u.MarshalJSON()
		if strings.Contains(string(data), "hunter2") || strings.Contains(string(data), "ZGVwbG95") || strings.Contains(string(data), "sealed") {
			t.Errorf("%s shows a value: %s", what, data)
		}
		if u.GetAPIVersion() != "v1" || u.Object["type"] != api.SecretTypeBasicAuth {
			t.Errorf("%s: %s, want a v1 Secret of type %s", what, data, api.SecretTypeBasicAuth)
		}
		d, _, _ := unstructured.NestedStringMap(u.Object, "data")
		if d["username"] != api.CoreV1Redacted || d["password"] != api.CoreV1Redacted {
			t.Errorf("%s: data %v, want both keys redacted (and valid base64)", what, d)
		}
	}
	check("create", created)
	got, err := res.Get(ctx, "git-auth", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	check("get", got)
	l, err := e.dyn.Resource(coreSecrets).List(ctx, metav1.ListOptions{})
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("list: %v %v", err, l)
	}
	check("list", &l.Items[0])
	// Stored as Flotilla's Secret, sealed.
	stored, err := e.st.Get(ctx, store.Key{Kind: api.KindSecret, Namespace: "ws", Name: "git-auth"})
	if err != nil {
		t.Fatal(err)
	}
	var spec api.SecretSpec
	json.Unmarshal(stored.Spec, &spec)
	if spec.Sealed == "" || spec.Type != api.SecretTypeBasicAuth || strings.Contains(string(stored.Spec), "hunter2") {
		t.Errorf("stored spec %s, want it sealed", stored.Spec)
	}
	// Strategic merge patch, as client-side kubectl apply sends for a core kind: one value
	// changes, the other stays.
	if _, err := res.Patch(ctx, "git-auth", types.StrategicMergePatchType, []byte(`{"stringData":{"password":"new-secret"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	// What a client read and sends back keeps the stored values.
	got, err = res.Get(ctx, "git-auth", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sealed := func() string {
		o, err := e.st.Get(ctx, store.Key{Kind: api.KindSecret, Namespace: "ws", Name: "git-auth"})
		if err != nil {
			t.Fatal(err)
		}
		var spec api.SecretSpec
		json.Unmarshal(o.Spec, &spec)
		return spec.Sealed
	}
	before := sealed()
	got.SetLabels(map[string]string{"team": "a"})
	if _, err := res.Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if after := sealed(); after != before {
		t.Error("sending the redacted values back changed the stored ones")
	}
	// Flotilla's own endpoint sees the same Secret.
	code, _, body := e.raw(t, "GET", "/apis/"+api.APIVersion+"/namespaces/ws/secrets/git-auth", "", "", "")
	if code != 200 || !strings.Contains(body, `"spec":{"type":"kubernetes.io/basic-auth"`) || strings.Contains(body, "new-secret") {
		t.Errorf("Flotilla's view: %d %s", code, body)
	}
	// A shape Kubernetes would refuse is refused.
	if _, err := res.Create(ctx, obj(t, "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\nvalue: x\n"), metav1.CreateOptions{}); !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), "value") {
		t.Errorf("unknown field: %v, want 400 naming it", err)
	}
}

// An object written before managedFields were kept, sent back unchanged, stays unchanged
// (a regression test: the field manager leaves such objects alone).
func TestUnchangedWriteKeepsManagedFields(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	o := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindClusterGroup},
		Metadata: api.ObjectMeta{Name: "old", Namespace: "ws", UID: "u1"}, Spec: json.RawMessage(`{}`)}
	if _, err := e.st.Create(ctx, o); err != nil {
		t.Fatal(err)
	}
	code, h, body := e.raw(t, "PUT", "/apis/"+api.APIVersion+"/namespaces/ws/clustergroups/old", "", "application/json",
		`{"apiVersion":"flotilla.dev/v1alpha1","kind":"ClusterGroup","metadata":{"name":"old"},"spec":{}}`)
	if code != 200 || h.Get(apiserver.ResultHeader) != "unchanged" {
		t.Errorf("PUT of the same object: %d %s %s, want unchanged", code, h.Get(apiserver.ResultHeader), body)
	}
	// As in Kubernetes, updates of such an object are not tracked until someone applies;
	// an object created through the API is tracked from the start.
	code, _, body = e.raw(t, "POST", "/apis/"+api.APIVersion+"/namespaces/ws/clustergroups?fieldManager=ops", "", "application/json",
		`{"apiVersion":"flotilla.dev/v1alpha1","kind":"ClusterGroup","metadata":{"name":"new"},"spec":{}}`)
	if code != 201 || !strings.Contains(body, `"manager":"ops"`) || !strings.Contains(body, `"operation":"Update"`) {
		t.Errorf("POST: %d %s, want managedFields naming ops", code, body)
	}
}

// kubectl moves client-side apply's fields to its server-side apply manager with a JSON
// patch of managedFields as it read them, under Fleet's group too; afterwards a field the
// applier drops is removed.
func TestClientToServerSideApply(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	res := e.dyn.Resource(schema.GroupVersionResource{Group: api.FleetGroup, Version: api.Version, Resource: "clustergroups"}).Namespace("ws")
	const cg = "apiVersion: fleet.cattle.io/v1alpha1\nkind: ClusterGroup\nmetadata: {name: prod, labels: {%s}}\nspec: {selector: {matchLabels: {env: prod}}}\n"
	if _, err := res.Create(ctx, obj(t, strings.Replace(cg, "%s", "a: b", 1)), metav1.CreateOptions{FieldManager: "kubectl-client-side-apply"}); err != nil {
		t.Fatal(err)
	}
	apply := func(labels string) *unstructured.Unstructured {
		t.Helper()
		js, _ := yaml.YAMLToJSON([]byte(strings.Replace(cg, "%s", labels, 1)))
		got, err := res.Patch(ctx, "prod", types.ApplyPatchType, js, metav1.PatchOptions{FieldManager: "kubectl"})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	got := apply("a: b")
	patch, err := csaupgrade.UpgradeManagedFieldsPatch(got, sets.New("kubectl-client-side-apply"), "kubectl")
	if err != nil || patch == nil {
		t.Fatalf("upgrade patch: %s, %v", patch, err)
	}
	if _, err := res.Patch(ctx, "prod", types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: "kubectl"}); err != nil {
		t.Fatal(err)
	}
	if got := apply("c: d"); len(got.GetLabels()) != 1 || got.GetLabels()["c"] != "d" {
		t.Errorf("labels after dropping a: %v, want only c", got.GetLabels())
	}
}
