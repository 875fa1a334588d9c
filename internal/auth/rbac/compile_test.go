package rbac

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"flotilla.dev/api"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// fixture is a small organisation: an admin, an ops group owning production, a member of
// the shops group, and two projects on production clusters, one of them claiming a namespace
// the other has.
func fixture(t testing.TB) *Authorizer {
	a := New()
	q := func(kv ...string) *api.ResourceQuotaSpec { return &api.ResourceQuotaSpec{Hard: sel(kv...).MatchLabels} }
	mustProject(t, a, "web", api.ProjectSpec{
		ClusterSelector:   sel("env", "prod"),
		Namespaces:        []api.ProjectNamespace{{Name: "web"}, {Name: "web-batch", Quota: q("requests.cpu", "1")}},
		NamespaceSelector: sel("team", "web"),
		NamespaceQuota:    q("requests.cpu", "2", "pods", "20"),
		Quota:             q("requests.cpu", "4"),
		ContainerDefaults: &api.ContainerLimits{Default: map[string]string{"cpu": "500m", "memory": "256Mi"}, DefaultRequest: map[string]string{"cpu": "100m"}},
	})
	mustProject(t, a, "shared", api.ProjectSpec{ClusterSelector: &api.LabelSelector{}, Namespaces: []api.ProjectNamespace{{Name: "web"}, {Name: "tools"}}})
	mustProject(t, a, "lab", api.ProjectSpec{ClusterSelector: sel("env", "lab"), Namespaces: []api.ProjectNamespace{{Name: "lab"}}})
	mustRole(t, a, "log-reader", api.RoleSpec{Context: api.RoleContextCluster, KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "pods/log"}, Verbs: []string{"get", "list"}}}})
	mustBind(t, a, "root-admin", "root", RoleAdmin, api.BindingScope{Global: true})
	mustBind(t, a, "everyone-ro", "group:everyone", RoleReadOnly, api.BindingScope{Global: true})
	mustBind(t, a, "ops-prod", "group:ops", RoleClusterOwner, api.BindingScope{ClusterSelector: sel("env", "prod")})
	mustBind(t, a, "alice-shops", "alice", RoleClusterMember, api.BindingScope{ClusterGroup: "shops"})
	mustBind(t, a, "alice-logs", "alice", "log-reader", api.BindingScope{Cluster: "shop-1"})
	mustBind(t, a, "bob-web", "bob", RoleProjectOwner, api.BindingScope{Project: "web"})
	mustBind(t, a, "devs-web", "group:devs", RoleProjectMember, api.BindingScope{Project: "web"})
	mustBind(t, a, "carol-web", "carol", RoleProjectMember, api.BindingScope{Project: "web"})
	mustBind(t, a, "carol-lab", "carol", RoleProjectOwner, api.BindingScope{Project: "lab"})
	return a
}

func TestCompileGolden(t *testing.T) {
	a := fixture(t)
	for _, tt := range []struct {
		name string
		c    Cluster
	}{
		{"shop", *prodShop},
		{"dev", *devBox},
		{"edge", *edgeBox},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := json.MarshalIndent(a.Compile(tt.c, DefaultCompileOptions()), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", "compile", tt.name+".json")
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("reading golden file (run with -update to create it): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("output differs from %s (run with -update to accept); got:\n%s", golden, got)
			}
		})
	}
}

// TestCompileNothingBound checks that a cluster nobody is bound on holds nothing, and above
// all no impersonation rule: one without resourceNames would let the agent be anybody.
func TestCompileNothingBound(t *testing.T) {
	a := New()
	mustBind(t, a, "ro", "group:everyone", RoleReadOnly, api.BindingScope{Global: true})
	got := a.Compile(*devBox, DefaultCompileOptions())
	if len(got.Objects) != 0 || len(got.Templates) != 0 {
		t.Fatalf("got objects %+v", got.Objects)
	}
	if got.Digest != New().Compile(*devBox, DefaultCompileOptions()).Digest {
		t.Fatal("the digest of nothing depends on unrelated bindings")
	}
}

func TestCompileImpersonatorNamesEverySubject(t *testing.T) {
	a := fixture(t)
	for _, c := range []Cluster{*prodShop, *devBox, *edgeBox} {
		out := a.Compile(c, DefaultCompileOptions())
		for _, m := range out.Objects {
			if m.Kind != "ClusterRole" || !strings.HasPrefix(m.Name, ImpersonatorName) {
				continue
			}
			var cr struct {
				Rules []struct {
					Resources     []string `json:"resources"`
					ResourceNames []string `json:"resourceNames"`
				} `json:"rules"`
			}
			if err := json.Unmarshal(m.Object, &cr); err != nil {
				t.Fatal(err)
			}
			for _, r := range cr.Rules {
				if (r.Resources[0] == "users" || r.Resources[0] == "groups") && len(r.ResourceNames) == 0 {
					t.Fatalf("%s: impersonation of any %s", c.Name, r.Resources[0])
				}
			}
		}
		// Every subject of every binding compiled here may be impersonated.
		s := string(mustJSON(t, out))
		for _, want := range []string{`"flotilla:user:root"`} {
			if strings.Count(s, want) < 2 {
				t.Errorf("%s: %s is bound but not in the impersonator", c.Name, want)
			}
		}
	}
}

func mustJSON(t testing.TB, v any) []byte {
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestCompileDigest checks that a cluster's digest follows its content: the same for the
// same bindings added in another order, unchanged by a binding elsewhere, changed by one here.
func TestCompileDigest(t *testing.T) {
	a, b := fixture(t), New()
	// b gets the same objects in reverse order.
	for _, n := range []string{"lab", "shared", "web"} {
		mustProject(t, b, n, a.projects[n].spec)
	}
	mustRole(t, b, "log-reader", a.roles["log-reader"].spec)
	names := sortedKeys(a.bindings)
	for i := len(names) - 1; i >= 0; i-- {
		x := a.bindings[names[i]]
		s := api.RoleBindingSpec{Subject: api.Subject{Kind: x.subj.kind(), Name: x.subj.name}, RoleRef: x.role.name}
		switch x.scope {
		case scopeGlobal:
			s.Scope.Global = true
		case scopeSelector:
			s.Scope.ClusterSelector = x.sel.src
		case scopeGroup:
			s.Scope.ClusterGroup = x.target
		case scopeCluster:
			s.Scope.Cluster = x.target
		case scopeProject:
			s.Scope.Project = x.target
		}
		if _, err := b.PutBinding(x.name, s); err != nil {
			t.Fatal(err)
		}
	}
	opts := DefaultCompileOptions()
	before := a.Compile(*prodShop, opts).Digest
	if got := b.Compile(*prodShop, opts).Digest; got != before {
		t.Fatalf("same content, other order: digest %s, want %s", got, before)
	}
	mustBind(t, a, "elsewhere", "zed", RoleClusterOwner, api.BindingScope{Cluster: "dev-1"})
	if got := a.Compile(*prodShop, opts).Digest; got != before {
		t.Fatal("a binding on another cluster changed the digest")
	}
	mustBind(t, a, "here", "zed", RoleClusterOwner, api.BindingScope{Cluster: "shop-1"})
	if got := a.Compile(*prodShop, opts).Digest; got == before {
		t.Fatal("a binding on this cluster left the digest unchanged")
	}
	if _, err := a.DeleteBinding("here"); err != nil {
		t.Fatal(err)
	}
	if got := a.Compile(*prodShop, opts).Digest; got != before {
		t.Fatal("removing the binding did not restore the digest")
	}
	other := opts
	other.AgentServiceAccount = "agent"
	if got := a.Compile(*prodShop, other).Digest; got == before {
		t.Fatal("the agent's service account is not part of the digest")
	}
}

// TestSharedLayer checks that bindings reaching every cluster are compiled once per change:
// other changes keep the cached layer, and a change to it re-versions every cluster.
func TestSharedLayer(t *testing.T) {
	a := fixture(t)
	opts := DefaultCompileOptions()
	before := map[string]string{}
	for _, c := range []Cluster{*prodShop, *devBox, *edgeBox} {
		before[c.Workspace+"/"+c.Name] = a.Digest(c, opts)
		if got := a.Compile(c, opts).Digest; got != before[c.Workspace+"/"+c.Name] {
			t.Fatalf("Digest %s and Compile %s disagree", before[c.Workspace+"/"+c.Name], got)
		}
	}
	shared := a.shared
	mustBind(t, a, "one", "zed", RoleClusterOwner, api.BindingScope{Cluster: "dev-1"})
	a.Compile(*devBox, opts)
	if a.shared != shared {
		t.Fatal("a binding on one cluster recomputed the shared layer")
	}
	cov := mustBind(t, a, "all", "group:sre", RoleClusterOwner, api.BindingScope{ClusterSelector: &api.LabelSelector{}})
	if !cov.All() {
		t.Fatalf("covers %+v", cov.Sets)
	}
	for _, c := range []Cluster{*prodShop, *edgeBox} {
		out := a.Compile(c, opts)
		if out.Digest == before[c.Workspace+"/"+c.Name] {
			t.Fatalf("%s: digest unchanged by a binding covering every cluster", c.Name)
		}
		var names []string
		for _, m := range out.Objects {
			if m.Kind == "ClusterRoleBinding" {
				names = append(names, m.Name)
			}
		}
		if !slices.Contains(names, "flotilla-cluster-owner:all") || !slices.Contains(names, ImpersonatorName+SharedSuffix) {
			t.Fatalf("%s: ClusterRoleBindings %v", c.Name, names)
		}
	}
	if a.shared == shared {
		t.Fatal("the shared layer was not recomputed")
	}
	if _, err := a.DeleteBinding("all"); err != nil {
		t.Fatal(err)
	}
	if got := a.Digest(*prodShop, opts); got != before[prodShop.Workspace+"/"+prodShop.Name] {
		t.Fatal("deleting the binding did not restore the digest")
	}
}

func TestCombineDigests(t *testing.T) {
	for _, n := range []int{0, 71, 127, 128, 200} {
		shared, own := strings.Repeat("a", n), strings.Repeat("b", n)
		sum := sha256.Sum256([]byte(shared + "\n" + own))
		if got, want := CombineDigests(shared, own), "sha256:"+hex.EncodeToString(sum[:]); got != want {
			t.Errorf("%d bytes each: got %s, want %s", n, got, want)
		}
	}
}

// TestOwnLayerCache: clusters with the same bindings and projects share one built own layer,
// and every change to the index is seen by the next compile: each result equals that of an
// index built afresh from the same objects, which has no cache.
func TestOwnLayerCache(t *testing.T) {
	opts := DefaultCompileOptions()
	a := fixture(t)
	twin := &Cluster{Name: "shop-2", Workspace: "fleet-default", Labels: map[string]string{"env": "prod", "site": "shop"}, Groups: []string{"shops"}}
	if got, want := a.Compile(*twin, opts).Digest, a.Compile(*prodShop, opts).Digest; got == want {
		t.Fatal("shop-1 has a binding of its own (alice-logs), yet compiles like shop-2")
	}
	other := &Cluster{Name: "shop-3", Workspace: "fleet-default", Labels: map[string]string{"env": "prod", "site": "shop"}, Groups: []string{"shops"}}
	a.Compile(*other, opts)
	if n := len(a.own.m); n != 2 {
		t.Errorf("%d own layers cached for two sets of bindings (shop-1's, shop-2's and shop-3's)", n)
	}
	check := func(step string, fresh *Authorizer) {
		t.Helper()
		for _, c := range []*Cluster{prodShop, twin, devBox, edgeBox} {
			got, want := a.Compile(*c, opts), fresh.Compile(*c, opts)
			if !bytes.Equal(mustJSON(t, got), mustJSON(t, want)) {
				t.Errorf("after %s, %s/%s compiles to a stale layer:\n%s\nwant\n%s", step, c.Workspace, c.Name, mustJSON(t, got), mustJSON(t, want))
			}
		}
	}
	// Each step changes a and a fresh index alike; a has compiled (and cached) before each.
	steps := []struct {
		name string
		do   func(*Authorizer)
	}{
		{"a role's rules change", func(x *Authorizer) {
			mustRole(t, x, "log-reader", api.RoleSpec{Context: api.RoleContextCluster, KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}})
		}},
		{"a subject is bound by the selector", func(x *Authorizer) {
			mustBind(t, x, "dave-prod", "dave", RoleClusterOwner, api.BindingScope{ClusterSelector: sel("env", "prod")})
		}},
		{"a binding goes", func(x *Authorizer) {
			if _, err := x.DeleteBinding("ops-prod"); err != nil {
				t.Fatal(err)
			}
		}},
		{"a project's namespaces change", func(x *Authorizer) {
			mustProject(t, x, "web", api.ProjectSpec{ClusterSelector: sel("env", "prod"), Namespaces: []api.ProjectNamespace{{Name: "web-2"}}})
		}},
		{"a project-scoped binding comes", func(x *Authorizer) {
			mustBind(t, x, "erin-web", "erin", RoleProjectMember, api.BindingScope{Project: "web"})
		}},
	}
	for i, st := range steps {
		for _, c := range []*Cluster{prodShop, twin, devBox, edgeBox} {
			a.Compile(*c, opts)
		}
		st.do(a)
		fresh := fixture(t)
		for _, s := range steps[:i+1] {
			s.do(fresh)
		}
		check(st.name, fresh)
	}
}
