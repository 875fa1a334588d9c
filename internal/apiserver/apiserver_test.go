package apiserver_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/agentapi"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/secrets"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// env is an API server over a real SQLite store, with the hooks the server installs.
type env struct {
	t     testing.TB
	st    *sqlite.Store
	url   string
	token string
	auth  *auth.Authenticator
	authz *rbac.Authorizer
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ctx := context.Background()
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = slog.New(slog.DiscardHandler)
	st, err := sqlite.Open(ctx, t.TempDir(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a := auth.NewAuthenticator(st)
	token, err := a.Bootstrap(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	keeper, err := secrets.Open(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	s := apiserver.New(st, a, slog.New(slog.DiscardHandler))
	s.BookmarkInterval = time.Hour
	s.SetHooks(api.KindRegistrationToken, agentapi.NewTokenHooks(st))
	s.SetHooks(api.KindBundle, agentapi.NewBundleHooks(st))
	s.SetHooks(api.KindSecret, keeper)
	authz := rbac.New()
	if err := s.EnableAccess(ctx, apiserver.Access{Authorizer: authz}, a.UserHooks()); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	s.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return &env{t: t, st: st, url: hs.URL, token: token, auth: a, authz: authz}
}

const base = "/apis/flotilla.dev/v1alpha1"

// do sends a request and returns the status code and body.
func (e *env) do(method, path, contentType string, body []byte) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	// A bound, so that a request that hangs (as a watch from the future did) fails the test.
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, out
}

func (e *env) json(method, path string, v any) (int, []byte) {
	e.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.do(method, path, "application/json", b)
}

// snapshot is every object of every kind the API serves: a refusal must leave it unchanged.
// (The store's revision is no such witness: a create refused by the store uses one up.)
func (e *env) snapshot() string {
	e.t.Helper()
	var b strings.Builder
	for _, k := range api.Kinds {
		res, err := e.st.List(context.Background(), store.ListOptions{Kind: k.Kind})
		if err != nil {
			e.t.Fatal(err)
		}
		for _, it := range res.Items {
			b.Write(it)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func (e *env) revision() int64 {
	e.t.Helper()
	rev, err := e.st.Revision(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return rev
}

// refused checks a refusal: its code, that its Status message contains want, and that the
// store did not change.
func (e *env) refused(what string, code int, body []byte, before string, wantCode int, want string) {
	e.t.Helper()
	var st api.Status
	if err := json.Unmarshal(body, &st); err != nil {
		e.t.Errorf("%s: body %q is not a Status: %v", what, body, err)
		return
	}
	if code != wantCode || st.Code != wantCode || !strings.Contains(st.Message, want) {
		e.t.Errorf("%s: got %d %q, want %d with %q", what, code, st.Message, wantCode, want)
	}
	if after := e.snapshot(); after != before {
		e.t.Errorf("%s: the store changed:\n%s\nbecame\n%s", what, before, after)
	}
}

func decodeObject(t testing.TB, b []byte) *api.Object {
	t.Helper()
	var o api.Object
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatalf("decoding %q: %v", b, err)
	}
	return &o
}

func group(name string, labels map[string]string) api.Object {
	spec, _ := json.Marshal(api.ClusterGroupSpec{Selector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}})
	return api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindClusterGroup},
		Metadata: api.ObjectMeta{Name: name, Labels: labels}, Spec: spec}
}

func TestCreateGetUpdate(t *testing.T) {
	e := newEnv(t)
	p := base + "/namespaces/ws/clustergroups"
	code, body := e.json("POST", p, group("g", map[string]string{"tier": "a"}))
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	created := decodeObject(t, body)
	if created.Metadata.UID == "" || created.Metadata.ResourceVersion == "" || created.Metadata.Generation != 1 || created.Metadata.Namespace != "ws" {
		t.Errorf("created metadata %+v: want uid, resourceVersion, generation 1, namespace ws", created.Metadata)
	}
	code, body = e.do("GET", p+"/g", "", nil)
	if got := decodeObject(t, body); code != http.StatusOK || got.Metadata.ResourceVersion != created.Metadata.ResourceVersion || got.Metadata.UID != created.Metadata.UID {
		t.Errorf("get: %d %s, want the created object", code, body)
	}

	snap := e.snapshot()
	code, body = e.json("POST", p, group("g", nil))
	e.refused("create again", code, body, snap, http.StatusConflict, "already exists")

	// An update at a stale resourceVersion is refused; at the current one it applies.
	next := group("g", map[string]string{"tier": "b"})
	next.Spec = json.RawMessage(`{"selector":{"matchLabels":{"env":"dev"}}}`)
	next.Metadata.ResourceVersion = "1"
	code, body = e.json("PUT", p+"/g", next)
	e.refused("stale update", code, body, snap, http.StatusConflict, "the object has been modified")
	next.Metadata.ResourceVersion = created.Metadata.ResourceVersion
	code, body = e.json("PUT", p+"/g", next)
	updated := decodeObject(t, body)
	if code != http.StatusOK || updated.Metadata.Generation != 2 || updated.Metadata.Labels["tier"] != "b" || updated.Metadata.UID != created.Metadata.UID {
		t.Errorf("update: %d %s; want generation 2, tier b, the same uid", code, body)
	}
	if updated.Metadata.ResourceVersion == created.Metadata.ResourceVersion {
		t.Errorf("update kept resourceVersion %s", updated.Metadata.ResourceVersion)
	}
	// The same object again changes nothing.
	rev := e.revision()
	next.Metadata.ResourceVersion = ""
	req, _ := json.Marshal(next)
	hreq, _ := http.NewRequest("PUT", e.url+p+"/g", bytes.NewReader(req))
	hreq.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get(apiserver.ResultHeader); resp.StatusCode != http.StatusOK || got != "unchanged" || e.revision() != rev {
		t.Errorf("unchanged update: %d, %s %q, revision %d → %d", resp.StatusCode, apiserver.ResultHeader, got, rev, e.revision())
	}

	// A PUT to a new name creates it; DELETE removes it, and a GET then finds nothing.
	if code, body = e.json("PUT", p+"/h", group("h", nil)); code != http.StatusCreated {
		t.Errorf("PUT to a new name: %d %s, want 201", code, body)
	}
	if code, body = e.do("DELETE", p+"/h", "", nil); code != http.StatusOK {
		t.Errorf("delete: %d %s", code, body)
	}
	snap = e.snapshot()
	code, body = e.do("GET", p+"/h", "", nil)
	e.refused("get deleted", code, body, snap, http.StatusNotFound, "not found")
}

func TestErrors(t *testing.T) {
	e := newEnv(t)
	snap := e.snapshot()
	for _, tt := range []struct {
		name, method, path string
		body               any
		token              string
		code               int
		want               string
	}{
		{"no token", "GET", base + "/namespaces/ws/clusters", nil, "-", 401, "Unauthorized: no bearer token"},
		{"bad token", "GET", base + "/namespaces/ws/clusters", nil, "nope", 401, "Unauthorized: invalid token"},
		{"unknown resource", "GET", base + "/namespaces/ws/pods", nil, "", 404, `the server doesn't have a resource type "pods"`},
		{"unknown version", "GET", "/apis/flotilla.dev/v9/namespaces/ws/clusters", nil, "", 404, `API version "v9" is not served`},
		{"system namespace", "GET", base + "/namespaces/flotilla-system/clusters", nil, "", 403, "is reserved for Flotilla itself"},
		{"missing", "GET", base + "/namespaces/ws/clusters/nope", nil, "", 404, "not found"},
		{"kind mismatch", "POST", base + "/namespaces/ws/clusters", group("g", nil), "", 400, `kind "ClusterGroup" sent to the clusters endpoint`},
		{"namespace mismatch", "POST", base + "/namespaces/ws/clustergroups", func() api.Object { g := group("g", nil); g.Metadata.Namespace = "other"; return g }(), "", 400, `metadata.namespace "other" does not match the namespace "ws" in the URL`},
		{"name mismatch", "PUT", base + "/namespaces/ws/clustergroups/x", group("g", nil), "", 400, `metadata.name "g" does not match the name "x" in the URL`},
		{"invalid name", "POST", base + "/namespaces/ws/clustergroups", group("G_!", nil), "", 422, `metadata.name`},
		{"unknown field", "POST", base + "/namespaces/ws/clustergroups", map[string]any{"metadata": map[string]any{"name": "g"}, "spek": 1}, "", 400, `unknown field "spek"`},
		{"unknown spec field", "POST", base + "/namespaces/ws/clustergroups", map[string]any{"metadata": map[string]any{"name": "g"}, "spec": map[string]any{"x": 1}}, "", 422, `spec.x: unknown field`},
		{"status of missing", "PUT", base + "/namespaces/ws/clustergroups/g/status", func() api.Object { g := group("g", nil); g.Status = json.RawMessage(`{}`); return g }(), "", 404, "not found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := json.Marshal(tt.body)
			if tt.body == nil {
				b = nil
			}
			req, _ := http.NewRequest(tt.method, e.url+tt.path, bytes.NewReader(b))
			switch tt.token {
			case "":
				req.Header.Set("Authorization", "Bearer "+e.token)
			case "-":
			default:
				req.Header.Set("Authorization", "Bearer "+tt.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			(&env{t: t, st: e.st}).refused(tt.name, resp.StatusCode, body, snap, tt.code, tt.want)
		})
	}
}

func listOf(t testing.TB, b []byte) (names []string, meta api.ListMeta) {
	t.Helper()
	var l api.List
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatalf("list %q: %v", b, err)
	}
	for _, it := range l.Items {
		o := decodeObject(t, it)
		names = append(names, o.Metadata.Namespace+"/"+o.Metadata.Name)
	}
	return names, l.Metadata
}

func TestListSelectorsAndContinue(t *testing.T) {
	e := newEnv(t)
	for i := range 5 {
		env := "dev"
		if i%2 == 0 {
			env = "prod"
		}
		if code, body := e.json("POST", base+"/namespaces/a/clustergroups", group(fmt.Sprintf("g%d", i), map[string]string{"env": env})); code != 201 {
			t.Fatalf("create: %d %s", code, body)
		}
	}
	if code, body := e.json("POST", base+"/namespaces/b/clustergroups", group("other", map[string]string{"env": "prod"})); code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	get := func(q string) []string {
		t.Helper()
		code, body := e.do("GET", base+q, "", nil)
		if code != 200 {
			t.Fatalf("GET %s: %d %s", q, code, body)
		}
		names, _ := listOf(t, body)
		return names
	}
	if got, want := strings.Join(get("/namespaces/a/clustergroups?labelSelector=env%3Dprod"), ","), "a/g0,a/g2,a/g4"; got != want {
		t.Errorf("env=prod in a: %s, want %s", got, want)
	}
	if got, want := strings.Join(get("/namespaces/a/clustergroups?labelSelector=env+notin+(prod)"), ","), "a/g1,a/g3"; got != want {
		t.Errorf("env notin (prod) in a: %s, want %s", got, want)
	}
	if got, want := strings.Join(get("/clustergroups?labelSelector=env%3Dprod"), ","), "a/g0,a/g2,a/g4,b/other"; got != want {
		t.Errorf("env=prod everywhere: %s, want %s", got, want)
	}

	// Pages of two, each continuing the last, see every object once, as of the first page.
	var all []string
	q := "/namespaces/a/clustergroups?limit=2"
	var firstRV string
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("more pages than objects")
		}
		code, body := e.do("GET", base+q, "", nil)
		if code != 200 {
			t.Fatalf("GET %s: %d %s", q, code, body)
		}
		names, meta := listOf(t, body)
		if firstRV == "" {
			firstRV = meta.ResourceVersion
			// A change after the first page is not seen by the next ones.
			if code, body := e.json("POST", base+"/namespaces/a/clustergroups", group("late", nil)); code != 201 {
				t.Fatalf("create: %d %s", code, body)
			}
		}
		if meta.ResourceVersion != firstRV {
			t.Errorf("page at resourceVersion %s, want the first page's %s", meta.ResourceVersion, firstRV)
		}
		all = append(all, names...)
		if meta.Continue == "" {
			break
		}
		q = "/namespaces/a/clustergroups?limit=2&continue=" + meta.Continue
	}
	if got, want := strings.Join(all, ","), "a/g0,a/g1,a/g2,a/g3,a/g4"; got != want {
		t.Errorf("pages: %s, want %s", got, want)
	}

	snap := e.snapshot()
	for _, tt := range []struct{ q, want string }{
		{"?labelSelector=env%3D%3D%3D", "invalid label selector"},
		{"?limit=-1", `invalid limit "-1"`},
		{"?limit=x", `invalid limit "x"`},
		{"?continue=garbage", "invalid continue token"},
		{"?watch=true&resourceVersion=x", `invalid resourceVersion "x"`},
		{"?watch=true&resourceVersion=-3", `invalid resourceVersion "-3"`},
	} {
		code, body := e.do("GET", base+"/namespaces/a/clustergroups"+tt.q, "", nil)
		e.refused(tt.q, code, body, snap, 400, tt.want)
	}
}

// watchLines opens a watch and returns a reader of its events.
func (e *env) watch(ctx context.Context, q string) (*http.Response, *bufio.Scanner) {
	e.t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+base+q, nil)
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	return resp, bufio.NewScanner(resp.Body)
}

func TestWatch(t *testing.T) {
	e := newEnv(t)
	code, body := e.do("GET", base+"/namespaces/a/clustergroups", "", nil)
	_, meta := listOf(t, body)
	if code != 200 {
		t.Fatal(code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, sc := e.watch(ctx, "/namespaces/a/clustergroups?watch=true&labelSelector=env%3Dprod&resourceVersion="+meta.ResourceVersion)
	if resp.StatusCode != 200 {
		t.Fatalf("watch: %d", resp.StatusCode)
	}
	e.json("POST", base+"/namespaces/a/clustergroups", group("dev", map[string]string{"env": "dev"}))
	e.json("POST", base+"/namespaces/b/clustergroups", group("elsewhere", map[string]string{"env": "prod"}))
	e.json("POST", base+"/namespaces/a/clustergroups", group("prod", map[string]string{"env": "prod"}))
	if !sc.Scan() {
		t.Fatalf("watch ended: %v", sc.Err())
	}
	var ev api.WatchEvent
	if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
		t.Fatal(err)
	}
	if o := decodeObject(t, ev.Object); ev.Type != api.Added || o.Metadata.Name != "prod" || o.Metadata.Namespace != "a" {
		t.Errorf("first event %s %s/%s, want ADDED a/prod", ev.Type, o.Metadata.Namespace, o.Metadata.Name)
	}

	// A watch from a revision the store has not reached is answered at once, as Kubernetes
	// answers one too old: 410, list again.
	snap := e.snapshot()
	rev := e.revision()
	for _, rv := range []int64{rev + 1, rev + 1000, 1 << 62} {
		code, body := e.do("GET", fmt.Sprintf("%s/namespaces/a/clustergroups?watch=true&resourceVersion=%d", base, rv), "", nil)
		e.refused(fmt.Sprintf("watch from %d", rv), code, body, snap, http.StatusGone, fmt.Sprintf("too large resource version: %d, current: %d", rv, rev))
		// kubectl's watches (field selectors, tables) are served by another path: the same answer.
		code, body = e.do("GET", fmt.Sprintf("%s/namespaces/a/clustergroups?watch=true&fieldSelector=metadata.name%%3Dprod&resourceVersion=%d", base, rv), "", nil)
		e.refused(fmt.Sprintf("field-selected watch from %d", rv), code, body, snap, http.StatusGone, fmt.Sprintf("too large resource version: %d, current: %d", rv, rev))
	}
	// The current revision itself is fine.
	resp, _ = e.watch(ctx, fmt.Sprintf("/namespaces/a/clustergroups?watch=true&resourceVersion=%d", rev))
	if resp.StatusCode != 200 {
		t.Errorf("watch from the current revision: %d", resp.StatusCode)
	}
}

// Bodies hold one object: a second JSON value or YAML document is refused, not dropped.
func TestBodies(t *testing.T) {
	e := newEnv(t)
	p := base + "/namespaces/ws/clustergroups"
	one := `{"metadata":{"name":"a"},"spec":{"selector":{}}}`
	snap := e.snapshot()
	for _, tt := range []struct {
		name, ct, body string
		code           int
		want           string
	}{
		{"two JSON objects", "application/json", one + `{"metadata":{"name":"b"}}`, 400, "the request body holds more than one JSON value: send one object per request"},
		{"JSON then garbage", "application/json", one + ` x`, 400, "the request body holds more than one JSON value"},
		{"JSON then array", "", one + "\n[]", 400, "the request body holds more than one JSON value"},
		{"two YAML documents", "application/yaml", "metadata: {name: a}\n---\nmetadata: {name: b}\n", 400, "the request body holds more than one YAML document: send one object per request"},
		{"YAML documents, second a list", "application/yaml", "metadata: {name: a}\n---\n- 1\n", 400, "more than one YAML document"},
		{"YAML documents ended by ...", "application/yaml", "metadata: {name: a}\n...\nmetadata: {name: b}\n", 400, "malformed YAML"},
		{"YAML documents ended by ... and ---", "application/yaml", "metadata: {name: a}\n...\n---\nmetadata: {name: b}\n", 400, "more than one YAML document"},
		{"YAML flow mappings", "application/yaml", `{"metadata":{"name":"a"}}` + "\n" + `{"metadata":{"name":"b"}}`, 400, "malformed YAML"},
		{"empty", "application/json", "", 400, "empty request body: send one object"},
		{"null", "application/json", "null", 400, "empty request body"},
		{"empty YAML", "application/yaml", "---\n# nothing\n", 400, "empty request body"},
		{"malformed JSON", "application/json", `{"metadata":`, 400, "malformed object"},
		{"malformed YAML", "application/yaml", "metadata: [", 400, "malformed YAML"},
		{"unsupported type", "text/plain", one, 415, `unsupported Content-Type "text/plain": use application/json or application/yaml`},
		{"broken type", "application/", one, 415, "unsupported Content-Type"},
		{"too large", "application/json", `{"metadata":{"name":"a","annotations":{"x":"` + strings.Repeat("x", 1<<20) + `"}}}`, 413, "request body exceeds 1048576 bytes"},
	} {
		code, body := e.do("POST", p, tt.ct, []byte(tt.body))
		e.refused(tt.name, code, body, snap, tt.code, tt.want)
	}
	for i, tt := range []struct{ ct, body string }{
		{"application/json; charset=utf-8", `{"metadata":{"name":"j"},"spec":{}}` + "\n\n"},
		{"", `{"metadata":{"name":"none"}}`},
		{"application/yaml", "---\nmetadata:\n  name: yy\nspec: {}\n---\n"},
		{"application/x-yaml", "# a comment\nmetadata: {name: x}\n"},
	} {
		if code, body := e.do("POST", p, tt.ct, []byte(tt.body)); code != 201 {
			t.Errorf("body %d (%s): %d %s, want 201", i, tt.ct, code, body)
		}
	}
}

// One request of ten gzip'd resources, each 64 MiB of zeros, is refused while the first is
// decompressed: before, all ten were expanded (the server grew by a gigabyte) and then
// refused.
func TestBundleCompressedResourcesLimited(t *testing.T) {
	e := newEnv(t)
	var buf bytes.Buffer
	zw, _ := gzipWriter(&buf)
	zero := make([]byte, 1<<20)
	for range 64 {
		zw.Write(zero)
	}
	zw.Close()
	content := b64(buf.Bytes())
	var rs []api.BundleResource
	for i := range 10 {
		rs = append(rs, api.BundleResource{Name: fmt.Sprintf("r%d.yaml", i), Encoding: "base64+gz", Content: content})
	}
	spec, _ := json.Marshal(api.BundleSpec{Resources: rs})
	body, _ := json.Marshal(api.Object{Metadata: api.ObjectMeta{Name: "bomb"}, Spec: spec})
	t.Logf("request of %d bytes", len(body))
	snap := e.snapshot()
	var code int
	var resp []byte
	alloc := allocated(func() { code, resp = e.do("POST", base+"/namespaces/ws/bundles", "application/json", body) })
	e.refused("bundle of compressed zeros", code, resp, snap, http.StatusRequestEntityTooLarge,
		`Bundle "bomb": spec.resources[0]: r0.yaml: bundle content too large: file is over 16777216 bytes (uncompressed)`)
	const maxBytes = 64 << 20 // bundle.DefaultLimits().MaxBytes
	if ratio := float64(alloc) / maxBytes; ratio > 1 {
		t.Errorf("the request allocated %d bytes, %.2f times the bundle limit of %d; want at most 1", alloc, ratio, maxBytes)
	} else {
		t.Logf("the request allocated %d bytes, %.2f times the bundle limit", alloc, ratio)
	}
	if _, err := e.st.Get(context.Background(), store.Key{Kind: api.KindBundle, Namespace: "ws", Name: "bomb"}); err == nil {
		t.Error("the bundle was stored")
	}
}

func gzipWriter(w io.Writer) (*gzip.Writer, error) {
	return gzip.NewWriterLevel(w, gzip.BestCompression)
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// allocated returns the bytes allocated, by every goroutine, while fn ran.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// Values the validator refuses are answered 422 naming the field, on create and on update,
// and nothing is stored.
func TestRefusedValues(t *testing.T) {
	e := newEnv(t)
	valid := map[string]string{
		"gitrepos":           `{"repo":"https://git.example/r"}`,
		"bundles":            `{"resources":[{"name":"cm.yaml","content":"kind: ConfigMap"}]}`,
		"registrationtokens": `{"ttl":"1h"}`,
		"secrets":            `{"stringData":{"k":"v"}}`,
	}
	for plural, spec := range valid {
		if code, body := e.do("POST", base+"/namespaces/ws/"+plural, "application/json", []byte(`{"metadata":{"name":"existing"},"spec":`+spec+`}`)); code != 201 {
			t.Fatalf("creating a valid %s: %d %s", plural, code, body)
		}
	}
	for _, tt := range []struct{ plural, spec, want string }{
		{"gitrepos", `{"repo":"https://git.example/r","pollingInterval":"1ns"}`, `spec.pollingInterval: must be a duration of at least 1s such as 15s, not "1ns"`},
		{"bundles", `{"rolloutStrategy":{"maxUnavailable":-5},"resources":[{"name":"a","content":"x"}]}`, "spec.rolloutStrategy.maxUnavailable: must be a count of at least 0, not -5"},
		{"bundles", `{"rolloutStrategy":{"maxUnavailable":"-50%"},"resources":[{"name":"a","content":"x"}]}`, `spec.rolloutStrategy.maxUnavailable: must be a percentage from 0% to 100%, not "-50%"`},
		{"bundles", `{"rolloutStrategy":{"autoPartitionSize":0},"resources":[{"name":"a","content":"x"}]}`, "spec.rolloutStrategy.autoPartitionSize: must be a count of at least 1, not 0"},
		{"bundles", `{"rolloutStrategy":{"autoPartitionSize":"500%"},"resources":[{"name":"a","content":"x"}]}`, `spec.rolloutStrategy.autoPartitionSize: must be a percentage from 1% to 100%, not "500%"`},
		{"bundles", `{"helm":{"timeoutSeconds":-1},"resources":[{"name":"a","content":"x"}]}`, "spec.helm.timeoutSeconds: must be from 0 to 86400 seconds, not -1"},
		{"bundles", `{"helm":{"maxHistory":-1},"resources":[{"name":"a","content":"x"}]}`, "spec.helm.maxHistory: must not be negative, not -1"},
		{"bundles", `{"forceSyncGeneration":-1,"resources":[{"name":"a","content":"x"}]}`, "spec.forceSyncGeneration: must not be negative, not -1"},
		{"bundles", `{"resources":[{"name":"../../etc/passwd","content":"x"}]}`, "spec.resources[0].name"},
		{"registrationtokens", `{"maxUses":9223372036854775808}`, "spec.maxUses"},
		{"registrationtokens", `{"maxUses":9223372036854775807}`, "spec.maxUses: must be from 0 (unlimited) to 10000000"},
		{"secrets", `{"stringData":{"k":"**redacted**"}}`, "spec.stringData.k: " + api.SecretRedactedRefused},
	} {
		snap := e.snapshot()
		code, body := e.do("POST", base+"/namespaces/ws/"+tt.plural, "application/json", []byte(`{"metadata":{"name":"new"},"spec":`+tt.spec+`}`))
		e.refused("create "+tt.spec, code, body, snap, 422, tt.want)
		code, body = e.do("PUT", base+"/namespaces/ws/"+tt.plural+"/existing", "application/json", []byte(`{"metadata":{"name":"existing"},"spec":`+tt.spec+`}`))
		e.refused("update "+tt.spec, code, body, snap, 422, tt.want)
	}
	// "**redacted**" in data, for a key with nothing stored, is refused with the same words.
	snap := e.snapshot()
	code, body := e.do("POST", base+"/namespaces/ws/secrets", "application/json", []byte(`{"metadata":{"name":"new"},"spec":{"data":{"k":"**redacted**"}}}`))
	e.refused("data redacted", code, body, snap, 422, "spec.data.k: "+api.SecretRedactedRefused)
}
