package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// seedStore writes n Clusters into a SQLite store in dir, as a server would have stored them
// after their agents reported: five Kubernetes versions, two architectures, three agent
// versions; most seen just now, a tenth not for a day (Offline), a twentieth never (Pending).
func seedStore(t testing.TB, dir string, n int) {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, dir, sqlstore.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Summaries: map[string]store.Summarizer{api.KindCluster: fleet.SummarizeCluster}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 64 {
				inv := fmt.Sprintf(`{"kubernetesVersion":"v1.3%d.%d","nodeCount":3,"architecture":"%s","allocatableCPU":"12","allocatableMemory":"48Gi","agentVersion":"v0.%d.0"}`,
					3+i%5, i%3, []string{"amd64", "arm64"}[i%7/5], 1+i%3)
				status := `{"state":"Ready","lastSeen":"` + now.Format(time.RFC3339Nano) + `","inventory":` + inv + `}`
				switch {
				case i%20 == 7:
					status = `{"state":"Pending"}`
				case i%10 == 1:
					status = `{"state":"Offline","lastSeen":"` + now.Add(-24*time.Hour).Format(time.RFC3339Nano) + `","inventory":` + inv + `}`
				}
				_, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
					Metadata: api.ObjectMeta{Name: fmt.Sprintf("c-%07d", i), Namespace: api.DefaultNamespace, UID: fmt.Sprintf("uid-%07d", i), CreationTimestamp: &now,
						Labels: map[string]string{"env": []string{"prod", "dev"}[i%5/3], "region": []string{"eu", "us", "ap"}[i%3], "group": "g" + strconv.Itoa(i/10000)}},
					Spec:   json.RawMessage(`{"clientID":"` + fmt.Sprintf("%036d", i) + `"}`),
					Status: json.RawMessage(status),
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestDashboardScale measures each page's time to the last byte and weight with
// FLOTILLA_WEB_SCALE clusters (e.g. 100000) stored before a real server starts on them, for
// an administrator and for a user who sees only the production clusters. It reports
// figures (docs/benchmarks.md); it asserts only that pages stay bounded in size.
func TestDashboardScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("FLOTILLA_WEB_SCALE"))
	if n <= 0 {
		t.Skip("set FLOTILLA_WEB_SCALE to a number of clusters, e.g. 100000")
	}
	start := time.Now()
	dir := t.TempDir()
	seedStore(t, dir, n)
	t.Logf("%d clusters stored in %v", n, time.Since(start).Round(time.Second))
	start = time.Now()
	r, _ := startServer(t, dir)
	t.Logf("server ready in %v", time.Since(start).Round(time.Millisecond))
	r.addUser(t, "ops", "admin")
	r.addUser(t, "prod", "")
	spec, _ := json.Marshal(api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "prod"}, RoleRef: "cluster-member",
		Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}})
	if _, err := r.admin.Create(context.Background(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
		Metadata: api.ObjectMeta{Name: "prod-member"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the binding reaches the index
	for _, who := range []string{"ops", "prod"} {
		c := r.browser(t)
		r.login(t, c, who)
		_, _, list := get(t, c, r.url+"/clusters?limit=50")
		next := regexp.MustCompile(`<a href="([^"]+)" rel="next"`).FindStringSubmatch(list)
		detail := regexp.MustCompile(`<td><a href="(/clusters/[^"]+)"`).FindStringSubmatch(list)
		if next == nil || detail == nil {
			t.Fatalf("%s: the first page has no next page or no cluster", who)
		}
		pages := []string{"/", "/clusters", "/clusters?selector=env%3Ddev", "/clusters?state=Offline&selector=region%3Deu",
			"/clusters?prefix=c-00001", "/clusters?reason=NeverConnected", "/clusters?version=v1.35.1&arch=arm64", strings.ReplaceAll(next[1], "&amp;", "&"), detail[1]}
		for _, p := range pages {
			var times []time.Duration
			size := 0
			for i := 0; i < 7; i++ {
				if p == "/" {
					// Past the overview's one-second cache: every sample computes it again.
					time.Sleep(1100 * time.Millisecond)
				}
				t0 := time.Now()
				res, err := c.Get(r.url + p)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				times = append(times, time.Since(t0))
				if res.StatusCode != http.StatusOK {
					t.Fatalf("%s GET %s: %d", who, p, res.StatusCode)
				}
				size = len(b)
			}
			slices.Sort(times)
			t.Logf("%-5s %-45s median %7.1f ms  max %7.1f ms  %7.1f KB", who, p, ms(times[len(times)/2]), ms(times[len(times)-1]), float64(size)/1024)
			if size > 300<<10 {
				t.Errorf("%s GET %s weighs %d bytes, over 300 KB", who, p, size)
			}
		}
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	t.Logf("process (server and simulator): heap %d MB; GOMAXPROCS %d; %s", m.HeapAlloc>>20, runtime.GOMAXPROCS(0), cpuModel())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	if m := regexp.MustCompile(`model name\s*:\s*(.*)`).FindSubmatch(b); m != nil {
		return fmt.Sprintf("%s × %d", m[1], runtime.NumCPU())
	}
	return fmt.Sprint(runtime.NumCPU(), " CPUs")
}
