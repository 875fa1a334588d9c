package rbac

import (
	"fmt"
	"sync"
	"testing"

	"flotilla.dev/api"
)

// TestConcurrentUse runs decisions, filters and compilations while bindings and roles
// change; run with -race it checks the locking, and at the end the index must be as the
// writers left it.
func TestConcurrentUse(t *testing.T) {
	a := fixture(t)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				a.Decide(Subject{User: "w0", Groups: []string{"ops"}}, Request{Verb: "get", Kind: api.KindCluster, Namespace: "fleet-default", Name: "shop-1", Cluster: prodShop})
				a.ClusterFilter(Subject{User: "w1"}, "list").Matches(*prodShop)
				a.Compile(*prodShop, DefaultCompileOptions())
			}
		})
	}
	for w := range 2 {
		for i := range 50 {
			scope := api.BindingScope{Cluster: "shop-1"}
			if i%3 == 0 {
				scope = api.BindingScope{ClusterSelector: &api.LabelSelector{}}
			}
			name := fmt.Sprintf("w%d-%d", w, i)
			if _, err := a.PutBinding(name, api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: fmt.Sprintf("w%d", w)}, RoleRef: RoleClusterMember, Scope: scope}); err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 {
				if _, err := a.DeleteBinding(name); err != nil {
					t.Fatal(err)
				}
			}
			mustRole(t, a, "log-reader", a.roles["log-reader"].spec)
		}
	}
	close(stop)
	wg.Wait()
	if d := a.Decide(Subject{User: "w1"}, Request{Verb: "get", Kind: api.KindCluster, Namespace: "fleet-default", Name: "shop-1", Cluster: prodShop}); !d.Allowed {
		t.Fatalf("after the writers: %s", d.Reason())
	}
	if got := len(a.BindingsOf(api.SubjectUser, "w0")); got != 25 {
		t.Fatalf("w0 has %d bindings, want 25", got)
	}
}
