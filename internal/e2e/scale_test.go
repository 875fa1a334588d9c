package e2e_test

import (
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/postgres"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/testenv/pg"
)

// TestStoreScale measures the store at fleet scale: inserting N Cluster objects with five
// labels each, listing 10,000 of them by label (in the store and through the API), point
// gets, bytes on disk per cluster, and a cold start of the real server binary with N
// clusters stored. It reports figures and asserts only correctness.
//
//	FLOTILLA_SCALE_CLUSTERS=1000000 go test -run TestStoreScale -v -timeout 2h ./internal/e2e/
func TestStoreScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("FLOTILLA_SCALE_CLUSTERS"))
	if n == 0 {
		t.Skip("set FLOTILLA_SCALE_CLUSTERS=N to run the store scale benchmark")
	}
	if n < 20000 {
		t.Fatalf("FLOTILLA_SCALE_CLUSTERS=%d: use at least 20000 so that a label selects 10,000", n)
	}
	drivers := os.Getenv("FLOTILLA_SCALE_DRIVERS")
	if drivers == "" {
		drivers = "sqlite,postgres"
	}
	for _, d := range []string{"sqlite", "postgres"} {
		if !slices.Contains(strings.Split(drivers, ","), d) {
			continue
		}
		t.Run(d, func(t *testing.T) { scaleRun(t, d, n) })
	}
}

// scaleLabels gives cluster i five labels; group g<k> holds exactly 10,000 clusters.
func scaleLabels(i int) map[string]string {
	envs := []string{"prod", "staging", "dev"}
	return map[string]string{
		"env":      envs[i%3],
		"region":   "region-" + strconv.Itoa(i%10),
		"customer": "customer-" + strconv.Itoa(i%1000),
		"arch":     []string{"amd64", "arm64"}[i%2],
		"group":    "g" + strconv.Itoa(i/10000),
	}
}

func scaleRun(t *testing.T, driver string, n int) {
	ctx := context.Background()
	dataDir := t.TempDir()
	var st store.Store
	var dbURL string
	var err error
	open := func() {
		cfg := sqlstore.DefaultConfig()
		// Write as the server does, summaries included.
		cfg.Summaries = map[string]store.Summarizer{api.KindCluster: fleet.SummarizeCluster}
		if driver == "sqlite" {
			st, err = sqlite.Open(ctx, dataDir, cfg)
		} else {
			st, err = postgres.Open(ctx, dbURL, cfg)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if driver == "postgres" {
		dbURL = pg.Start(t).NewDatabase(t)
	}
	open()

	// Insert.
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	now := time.Now().UTC().Truncate(time.Second)
	for w := 0; w < 256; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				name := fmt.Sprintf("cluster-%07d", i)
				_, err := st.Create(ctx, &api.Object{
					TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
					Metadata: api.ObjectMeta{Name: name, Namespace: api.DefaultNamespace, UID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i),
						Generation: 1, CreationTimestamp: &now, Labels: scaleLabels(i)},
					Spec: json.RawMessage(`{"clientID":"` + fmt.Sprintf("%036d", i) + `"}`),
				})
				if err != nil {
					t.Error(err)
					return
				}
				if i > 0 && i%200000 == 0 {
					t.Logf("%d inserted, %.0f/s", i, float64(i)/time.Since(start).Seconds())
				}
			}
		}()
	}
	wg.Wait()
	insert := time.Since(start)
	t.Logf("FIGURE %s insert %d clusters: %v (%.0f clusters/s)", driver, n, insert.Round(time.Millisecond), float64(n)/insert.Seconds())

	// List 10,000 by label, in the store.
	sel, _ := labels.Parse("group=g1")
	var durs []time.Duration
	for range 7 {
		s := time.Now()
		res, err := st.List(ctx, store.ListOptions{Kind: api.KindCluster, Selector: sel})
		d := time.Since(s)
		if err != nil || len(res.Items) != 10000 {
			t.Fatalf("list group=g1: %d items, %v", len(res.Items), err)
		}
		durs = append(durs, d)
	}
	t.Logf("FIGURE %s store list 10,000 of %d by label: median %v (min %v, max %v)", driver, n, median(durs), minD(durs), maxD(durs))
	sel2, _ := labels.Parse("group=g1,env=prod")
	durs = nil
	for range 7 {
		s := time.Now()
		res, err := st.List(ctx, store.ListOptions{Kind: api.KindCluster, Selector: sel2})
		durs = append(durs, time.Since(s))
		if err != nil || len(res.Items) < 3000 {
			t.Fatalf("list group=g1,env=prod: %d items, %v", len(res.Items), err)
		}
	}
	t.Logf("FIGURE %s store list by two labels (≈3,334 of %d): median %v", driver, n, median(durs))

	// Point gets.
	const gets = 20000
	s := time.Now()
	for range gets {
		i := rand.IntN(n)
		if _, err := st.Get(ctx, store.Key{Kind: api.KindCluster, Namespace: api.DefaultNamespace, Name: fmt.Sprintf("cluster-%07d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("FIGURE %s point get (%d random of %d, one goroutine): %v each", driver, gets, n, time.Since(s)/gets)

	// Bytes on disk.
	if driver == "sqlite" {
		st.Close()
		// Checkpoint the WAL into the database file so the size is the settled one.
		db, _ := sql.Open("sqlite", filepath.Join(dataDir, sqlite.FileName))
		db.Exec("PRAGMA wal_checkpoint(TRUNCATE)")
		db.Close()
		size := dirSize(dataDir)
		t.Logf("FIGURE %s bytes on disk: %d total, %d per cluster (including the change history not yet compacted)", driver, size, size/int64(n))
	} else {
		db, _ := sql.Open("pgx", dbURL)
		var size int64
		db.QueryRow("SELECT pg_database_size(current_database())").Scan(&size)
		db.Close()
		t.Logf("FIGURE %s bytes on disk: %d total, %d per cluster (including the change history not yet compacted)", driver, size, size/int64(n))
		st.Close()
	}

	// Cold start of the real server with N clusters, then the list through the API.
	open()
	a := auth.NewAuthenticator(st)
	if err := a.CreateToken(ctx, "scale-admin-token", "admin", true, 0); err != nil {
		t.Fatal(err)
	}
	st.Close()
	args := []string{}
	if driver == "postgres" {
		args = append(args, "--db", dbURL)
	}
	addr := e2e.FreePort(t)
	bin := e2e.Binary(t, "flotilla")
	cmd := exec.Command(bin, append([]string{"server", "--listen", addr, "--data-dir", dataDir, "--bootstrap-token", "scale-admin-token"}, args...)...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	s = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for {
		resp, err := hc.Get("https://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Since(s) > 5*time.Minute {
			t.Fatal("server not ready after 5 minutes")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("FIGURE %s cold start with %d clusters (process start to /readyz 200): %v", driver, n, time.Since(s).Round(time.Millisecond))
	durs = nil
	var bytes int
	for range 7 {
		req, _ := http.NewRequest("GET", "https://"+addr+"/apis/flotilla.dev/v1alpha1/namespaces/fleet-default/clusters?labelSelector=group%3Dg2", nil)
		req.Header.Set("Authorization", "Bearer scale-admin-token")
		s := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var l api.List
		err = json.NewDecoder(resp.Body).Decode(&l)
		resp.Body.Close()
		durs = append(durs, time.Since(s))
		if err != nil || len(l.Items) != 10000 {
			t.Fatalf("API list: %d items, %v", len(l.Items), err)
		}
		bytes = 0
		for _, it := range l.Items {
			bytes += len(it)
		}
	}
	t.Logf("FIGURE %s API list 10,000 of %d by label over HTTPS, decoded by the client: median %v (min %v), %d KB of items", driver, n, median(durs), minD(durs), bytes/1024)
}

func median(d []time.Duration) time.Duration {
	c := append([]time.Duration(nil), d...)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	return c[len(c)/2].Round(100 * time.Microsecond)
}

func minD(d []time.Duration) time.Duration {
	m := d[0]
	for _, x := range d {
		m = min(m, x)
	}
	return m.Round(100 * time.Microsecond)
}

func maxD(d []time.Duration) time.Duration {
	m := d[0]
	for _, x := range d {
		m = max(m, x)
	}
	return m.Round(100 * time.Microsecond)
}

func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			n += info.Size()
		}
		return nil
	})
	return n
}
