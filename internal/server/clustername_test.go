package server_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/agentapi"
)

// TestRegistrationChosenName: an agent may ask for its cluster's name. The name is granted
// when the token allows it and no other cluster has it; a name another cluster has is never
// handed over, whatever the token; and an agent registering again as its own cluster keeps
// its name.
func TestRegistrationChosenName(t *testing.T) {
	ts := start(t, t.TempDir())
	ctx := ctxT(t)
	anon := ts.agent(t, "")
	open := createToken(t, ts, "open", api.RegistrationTokenSpec{Labels: map[string]string{"site": "berlin"}})

	clusterOf := func(name string) (*api.Object, api.ClusterSpec, bool) {
		t.Helper()
		o, err := ts.admin.Get(ctx, api.KindCluster, api.DefaultNamespace, name)
		if client.Code(err) == http.StatusNotFound {
			return nil, api.ClusterSpec{}, false
		}
		if err != nil {
			t.Fatal(err)
		}
		var spec api.ClusterSpec
		json.Unmarshal(o.Spec, &spec)
		return o, spec, true
	}

	// The chosen name is the Cluster's name, and the credential works for it.
	reg, err := anon.Register(ctx, open, api.RegisterRequest{ClientID: "uid-a", ClusterName: "prod-eu-1"})
	if err != nil {
		t.Fatal(err)
	}
	if reg.ClusterName != "prod-eu-1" || reg.Namespace != api.DefaultNamespace {
		t.Fatalf("registered as %s/%s, want %s/prod-eu-1", reg.Namespace, reg.ClusterName, api.DefaultNamespace)
	}
	first, spec, ok := clusterOf("prod-eu-1")
	if !ok || spec.ClientID != "uid-a" || first.Metadata.Labels["site"] != "berlin" {
		t.Fatalf("Cluster prod-eu-1: %+v %+v", first, spec)
	}
	if _, _, ok := clusterOf(agentapi.ClusterName("uid-a")); ok {
		t.Error("a Cluster with the derived name was made too")
	}
	if ds := waitDesired(t, ts.agent(t, reg.Credential), func(*api.DesiredState) bool { return true }); ds.ClusterName != "prod-eu-1" {
		t.Errorf("desired state for %q, want prod-eu-1", ds.ClusterName)
	}

	// The same agent registering again with its credential keeps its Cluster.
	again, err := anon.Register(ctx, open, api.RegisterRequest{ClientID: "uid-a", ClusterName: "prod-eu-1", Credential: reg.Credential})
	if err != nil || again.ClusterName != "prod-eu-1" {
		t.Fatalf("registering again with the credential: %+v, %v", again, err)
	}
	if o, _, _ := clusterOf("prod-eu-1"); o.Metadata.UID != first.Metadata.UID {
		t.Error("registering again made a new Cluster")
	}
	// Without the credential, the client ID (no secret) proves nothing, as for derived names.
	if _, err := anon.Register(ctx, open, api.RegisterRequest{ClientID: "uid-a", ClusterName: "prod-eu-1"}); client.Reason(err) != api.ReasonRegistrationRefused {
		t.Errorf("registering again without the credential: %v; want %s", err, api.ReasonRegistrationRefused)
	}

	// Another cluster asking for the name is refused (409), with any token, any credential.
	boundToTaken := createToken(t, ts, "bound-to-taken", api.RegistrationTokenSpec{ClusterName: "prod-eu-1", Labels: map[string]string{"tier": "payments"}})
	for _, try := range []struct {
		what, token, cred string
	}{
		{"an unbound token", open, ""},
		{"a token bound to the name", boundToTaken, ""},
		{"the cluster's own credential", open, reg.Credential},
	} {
		_, err := anon.Register(ctx, try.token, api.RegisterRequest{ClientID: "uid-b", ClusterName: "prod-eu-1", Credential: try.cred,
			Labels: map[string]string{"env": "dev"}})
		if client.Code(err) != http.StatusConflict || !strings.Contains(err.Error(), "taken by another cluster") {
			t.Errorf("another cluster asking for a taken name with %s: %v; want 409 saying it is taken", try.what, err)
		}
	}
	if o, spec, _ := clusterOf("prod-eu-1"); spec.ClientID != "uid-a" || o.Metadata.UID != first.Metadata.UID ||
		o.Metadata.Labels["env"] != "" || o.Metadata.Labels["tier"] != "" {
		t.Errorf("the taken Cluster changed: %+v %+v", o.Metadata, spec)
	}

	// A token bound to a name registers under that name, and under no other.
	edge := createToken(t, ts, "edge", api.RegistrationTokenSpec{ClusterName: "edge-7", Labels: map[string]string{"role": "edge"}})
	if _, err := anon.Register(ctx, edge, api.RegisterRequest{ClientID: "uid-c", ClusterName: "edge-8"}); client.Reason(err) != api.ReasonTokenInvalid ||
		!strings.Contains(err.Error(), "bound to cluster "+api.DefaultNamespace+"/edge-7") {
		t.Errorf("a bound token asking for another name: %v", err)
	}
	if _, err := anon.Register(ctx, edge, api.RegisterRequest{ClientID: "uid-c"}); client.Reason(err) != api.ReasonTokenInvalid ||
		!strings.Contains(err.Error(), "--cluster-name edge-7") {
		t.Errorf("a bound token without a chosen name: %v; want a hint at --cluster-name", err)
	}
	if _, _, ok := clusterOf("edge-8"); ok {
		t.Error("a refused name was registered")
	}
	bound, err := anon.Register(ctx, edge, api.RegisterRequest{ClientID: "uid-c", ClusterName: "edge-7"})
	if err != nil || bound.ClusterName != "edge-7" {
		t.Fatalf("a bound token asking for its name: %+v, %v", bound, err)
	}
	if o, spec, _ := clusterOf("edge-7"); spec.ClientID != "uid-c" || o.Metadata.Labels["role"] != "edge" {
		t.Errorf("Cluster edge-7: %+v %+v", o.Metadata, spec)
	}

	// Names that are no DNS label, or another cluster's derived name, are refused (400) and
	// register nothing; a cluster may ask for its own derived name.
	for _, name := range []string{"Prod", "prod_eu", "prod.eu", "-prod", strings.Repeat("a", 64), agentapi.ClusterName("uid-victim")} {
		_, err := anon.Register(ctx, open, api.RegisterRequest{ClientID: "uid-d", ClusterName: name})
		if client.Code(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "cluster name") {
			t.Errorf("asking for %q: %v; want 400", name, err)
		}
	}
	own := agentapi.ClusterName("uid-d")
	if r, err := anon.Register(ctx, open, api.RegisterRequest{ClientID: "uid-d", ClusterName: own}); err != nil || r.ClusterName != own {
		t.Errorf("asking for its own derived name: %+v, %v", r, err)
	}
	list, err := ts.admin.List(ctx, api.KindCluster, api.DefaultNamespace, client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 3 {
		var names []string
		for _, raw := range list.Items {
			var o api.Object
			json.Unmarshal(raw, &o)
			names = append(names, o.Metadata.Name)
		}
		t.Errorf("clusters %v, want prod-eu-1, edge-7 and %s", names, own)
	}

	// Without a chosen name nothing changed: the name is derived from the client ID.
	if r, err := anon.Register(ctx, open, api.RegisterRequest{ClientID: "uid-e"}); err != nil || r.ClusterName != agentapi.ClusterName("uid-e") {
		t.Errorf("registering without a chosen name: %+v, %v", r, err)
	}
}

// TestRegistrationChosenNameRace: clusters asking for one free name at once get it once;
// the others are refused and none gets a credential for the winner's Cluster.
func TestRegistrationChosenNameRace(t *testing.T) {
	ts := start(t, t.TempDir())
	ctx := ctxT(t)
	anon := ts.agent(t, "")
	open := createToken(t, ts, "open", api.RegistrationTokenSpec{})
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = anon.Register(ctx, open, api.RegisterRequest{ClientID: "uid-" + string(rune('a'+i)), ClusterName: "contested"})
		})
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case client.Code(err) != http.StatusConflict:
			t.Errorf("a loser got %v; want 409", err)
		}
	}
	if won != 1 {
		t.Errorf("%d registrations got the name, want 1", won)
	}
}
