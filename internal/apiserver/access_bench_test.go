package apiserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"

	"flotilla.dev/api"
)

// BenchmarkFilteredClusterList lists, page by page as the CLI and kubectl do, the clusters a
// member of env=dev may see among FLOTILLA_LIST_CLUSTERS clusters (default 20,000; one in ten
// is env=dev), next to an admin listing the same clusters with the selector given by hand:
// the member's view is pushed into the store query, so both should cost about the same.
func BenchmarkFilteredClusterList(b *testing.B) {
	n := 20000
	if v := os.Getenv("FLOTILLA_LIST_CLUSTERS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	e := newEnv(b)
	ctx := context.Background()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := 0; i < n; i++ {
		env := "prod"
		if i%10 == 0 {
			env = "dev"
		}
		o := newObj(api.KindCluster, "fleet-default", fmt.Sprintf("c%07d", i), map[string]string{"env": env, "site": fmt.Sprint(i % 100)}, api.ClusterSpec{})
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := e.st.Create(ctx, o); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	e.mustDo("POST", base+"/rolebindings", binding("alice-dev", "cluster-member",
		api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusCreated)
	alice := e.as("alice")
	listAll := func(who *env, q string) int {
		total, cont := 0, ""
		for {
			body := who.mustDo("GET", base+"/clusters?limit=500"+q+"&continue="+cont, nil, http.StatusOK)
			var l struct {
				Metadata api.ListMeta     `json:"metadata"`
				Items    []map[string]any `json:"items"`
			}
			if err := json.Unmarshal(body, &l); err != nil {
				b.Fatal(err)
			}
			total += len(l.Items)
			if cont = l.Metadata.Continue; cont == "" {
				return total
			}
		}
	}
	b.Run("member-of-env=dev", func(b *testing.B) {
		for b.Loop() {
			if got := listAll(alice.with(b), ""); got != n/10 {
				b.Fatalf("alice listed %d clusters, want %d", got, n/10)
			}
		}
		b.ReportMetric(float64(n/10), "clusters/op")
	})
	b.Run("admin-with-selector", func(b *testing.B) {
		for b.Loop() {
			if got := listAll(e.with(b), "&labelSelector=env%3Ddev"); got != n/10 {
				b.Fatalf("admin listed %d clusters, want %d", got, n/10)
			}
		}
		b.ReportMetric(float64(n/10), "clusters/op")
	})
}
