package apiserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/api"
)

// BenchmarkLabelList lists the 10,000 clusters of one label value (group=b1, as the fleet
// simulator labels them: blocks of 10,000) among FLOTILLA_LIST_CLUSTERS registered clusters
// (default 100,000), through the API over HTTP, reading the answer to its last byte.
//
//	go test ./internal/apiserver -run '^$' -bench BenchmarkLabelList -benchtime 20x -cpuprofile cpu.out
func BenchmarkLabelList(b *testing.B) {
	n := 100000
	if v := os.Getenv("FLOTILLA_LIST_CLUSTERS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	e := newEnv(b)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	inv := api.ClusterInventory{KubernetesVersion: "v1.37.0+k3s1", NodeCount: 1, Architecture: "amd64"}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for i := 0; i < n; i++ {
		spec, _ := json.Marshal(api.ClusterSpec{ClientID: fmt.Sprintf("bench-%07d", i)})
		st, _ := json.Marshal(api.ClusterStatus{Inventory: &inv, State: "Ready"})
		o := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
			Metadata: api.ObjectMeta{Namespace: "fleet-default", Name: fmt.Sprintf("c-%016x", uint64(i)*0x9e3779b97f4a7c15), UID: fmt.Sprintf("5f0c7e3a-8d1b-4c1e-9a7e-%012d", i),
				Generation: 1, CreationTimestamp: &now,
				Labels: map[string]string{"group": "b" + strconv.Itoa(i/10000), "env": []string{"prod", "staging", "dev"}[i%3],
					"region": "r" + strconv.Itoa(i%7), "tier": "t" + strconv.Itoa(i%4), "flotilla.dev/sim": "bench"},
				Annotations: map[string]string{"flotilla.dev/registered-with": "bench"}},
			Spec: spec, Status: st}
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
	want := min(n, 10000)
	sel := "group%3Db0"
	if n >= 20000 {
		sel = "group%3Db1"
	}
	hc := &http.Client{Timeout: time.Minute}
	var bytes int64
	var durs []time.Duration
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		t0 := time.Now()
		req, _ := http.NewRequest(http.MethodGet, e.url+base+"/namespaces/fleet-default/clusters?labelSelector="+sel, nil)
		req.Header.Set("Authorization", "Bearer "+e.token)
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		bytes, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("list: %s, %v", resp.Status, err)
		}
		durs = append(durs, time.Since(t0))
	}
	b.StopTimer()
	// The process's CPU, server and client; the median, as other work shares the machine.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e6, "cpu-ms/list")
	slices.Sort(durs)
	b.ReportMetric(float64(durs[len(durs)/2])/1e6, "median-ms")
	// Checked once, outside the timing: the answer holds the clusters of the label.
	body := e.mustDo(http.MethodGet, base+"/namespaces/fleet-default/clusters?labelSelector="+sel, nil, http.StatusOK)
	var l struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(body, &l); err != nil || len(l.Items) != want {
		b.Fatalf("listed %d clusters (%v), want %d", len(l.Items), err, want)
	}
	b.ReportMetric(float64(bytes)/float64(want), "B/item")
}

// cpuTime is the CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
