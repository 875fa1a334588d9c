package server_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/agentapi"
)

// TestRebuiltClusterIsReadopted: a cluster rebuilt from scratch (another client ID, its
// agent's state lost) registering with a token bound to its Cluster for replacement gets that
// Cluster back — name, labels, template values, bundles — under a new UID: the old
// credential stops working, and what the old cluster reported is forgotten.
func TestRebuiltClusterIsReadopted(t *testing.T) {
	ts := start(t, t.TempDir())
	ctx := ctxT(t)
	anon := ts.agent(t, "")
	open := createToken(t, ts, "open", api.RegistrationTokenSpec{Labels: map[string]string{"site": "berlin"}})
	old, err := anon.Register(ctx, open, api.RegisterRequest{ClientID: "uid-old"})
	if err != nil {
		t.Fatal(err)
	}
	name := old.ClusterName
	if name != agentapi.ClusterName("uid-old") {
		t.Fatalf("registered as %s", name)
	}
	// The operator's own changes: a label and template values. The server writes the
	// Cluster's status meanwhile: a conflict reads it again.
	var o *api.Object
	for attempt := 0; ; attempt++ {
		if o, err = ts.admin.Get(ctx, api.KindCluster, api.DefaultNamespace, name); err != nil {
			t.Fatal(err)
		}
		o.Metadata.Labels["env"] = "prod"
		o.Spec = json.RawMessage(`{"clientID":"uid-old","templateValues":{"replicas":3},"displayName":"shop 17"}`)
		if o, err = ts.admin.Update(ctx, o); err == nil {
			break
		}
		if client.Code(err) != http.StatusConflict || attempt == 10 {
			t.Fatal(err)
		}
	}
	first := o.Metadata.UID
	applyBundle(t, ts, "web", map[string]string{"env": "prod"}, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web, namespace: default}\n")
	oldAgent := &simAgent{name: name, cred: old.Credential, c: ts.agent(t, old.Credential)}
	d := oldAgent.deployment(t, api.DefaultNamespace+"/web")
	oldAgent.report(t, api.DefaultNamespace+"/web", d.ID, "Ready", "")
	waitBundle(t, ts, "web", func(s *api.Summary) bool { return s.DesiredReady == 1 && s.Ready == 1 })

	// A replacing token needs the name of the cluster it replaces.
	raw, _ := json.Marshal(api.RegistrationTokenSpec{Replace: true})
	if _, err := ts.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRegistrationToken},
		Metadata: api.ObjectMeta{Name: "unbound", Namespace: api.DefaultNamespace}, Spec: raw}); client.Code(err) != http.StatusUnprocessableEntity || !strings.Contains(err.Error(), "spec.replace") {
		t.Errorf("a replacing token without a cluster name: %v; want 422 about spec.replace", err)
	}
	// A token bound without replace still hands the (derived, reserved) name to no other
	// cluster.
	bound := createToken(t, ts, "bound", api.RegistrationTokenSpec{ClusterName: name})
	if _, err := anon.Register(ctx, bound, api.RegisterRequest{ClientID: "uid-new", ClusterName: name}); client.Code(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("another cluster with a token bound without replace: %v; want 400, the name is reserved", err)
	}

	// The rebuilt cluster: a new client ID, no credential, no chosen name.
	replace := createToken(t, ts, "replace", api.RegistrationTokenSpec{ClusterName: name, Replace: true, MaxUses: 1, Labels: map[string]string{"rebuilt": "yes", "env": "dev"}})
	reg, err := anon.Register(ctx, replace, api.RegisterRequest{ClientID: "uid-new", Inventory: &api.ClusterInventory{KubernetesVersion: "v1.37.2"}})
	if err != nil {
		t.Fatal(err)
	}
	if reg.ClusterName != name || reg.Namespace != api.DefaultNamespace {
		t.Fatalf("re-adopted as %s/%s, want %s", reg.Namespace, reg.ClusterName, name)
	}
	o, err = ts.admin.Get(ctx, api.KindCluster, api.DefaultNamespace, name)
	if err != nil {
		t.Fatal(err)
	}
	var spec api.ClusterSpec
	json.Unmarshal(o.Spec, &spec)
	if o.Metadata.UID == first || spec.ClientID != "uid-new" || spec.DisplayName != "shop 17" || spec.TemplateValues["replicas"] != float64(3) {
		t.Errorf("re-adopted Cluster: uid %s (was %s), spec %+v", o.Metadata.UID, first, spec)
	}
	if l := o.Metadata.Labels; l["env"] != "prod" || l["site"] != "berlin" || l["rebuilt"] != "yes" {
		t.Errorf("re-adopted Cluster's labels %v: want the operator's env=prod and site kept, the token's rebuilt=yes added", l)
	}
	list, err := ts.admin.List(ctx, api.KindCluster, api.DefaultNamespace, client.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Errorf("%d clusters after the re-adoption, want 1 (%v)", len(list.Items), err)
	}

	// The old credential is revoked; the new one gets the same bundles, which start afresh.
	if _, _, _, err := oldAgent.c.Desired(ctx, 0); client.Reason(err) != api.ReasonClusterDeleted || !strings.Contains(err.Error(), "replaced by a rebuilt cluster") {
		t.Errorf("the old cluster's credential: %v; want %s saying it was replaced", err, api.ReasonClusterDeleted)
	}
	newAgent := &simAgent{name: name, cred: reg.Credential, c: ts.agent(t, reg.Credential)}
	newAgent.deployment(t, api.DefaultNamespace+"/web")
	waitBundle(t, ts, "web", func(s *api.Summary) bool { return s.DesiredReady == 1 && s.Ready == 0 })
	newAgent.report(t, api.DefaultNamespace+"/web", d.ID, "Ready", "")
	waitBundle(t, ts, "web", func(s *api.Summary) bool { return s.DesiredReady == 1 && s.Ready == 1 })

	// The token was for one replacement.
	if _, err := anon.Register(ctx, replace, api.RegisterRequest{ClientID: "uid-third"}); client.Reason(err) != api.ReasonTokenInvalid {
		t.Errorf("a used-up replacing token: %v; want %s", err, api.ReasonTokenInvalid)
	}
}
