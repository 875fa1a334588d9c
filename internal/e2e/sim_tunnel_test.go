package e2e_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/sim"
)

// TestSimTunnels runs simulated clusters against the real server and reaches each through
// the server's Kubernetes proxy: a user bound by RBAC gets each cluster's own answer through
// a tunnel its simulated agent (the real tunnel.Agent) opened on demand, impersonated as
// that user whatever the request claimed; a user bound nowhere is refused.
func TestSimTunnels(t *testing.T) {
	const n = 20
	ctx := testCtx(t, 3*time.Minute)
	began := time.Now()
	phase := func(what string) { t.Logf("%6.2fs %s", time.Since(began).Seconds(), what) }
	srv := e2e.StartServer(t, e2e.ServerOptions{Args: []string{"--agent-poll-interval", "1s", "--tunnel-wait", "60s"},
		Env: []string{"FLOTILLA_BOOTSTRAP_TOKEN=" + simAdminToken}})
	admin, err := client.New(client.Config{Server: srv.URL, Token: simAdminToken, CAChecksum: srv.Checksum})
	if err != nil {
		t.Fatal(err)
	}
	phase("server started")
	cfg := sim.DefaultConfig()
	cfg.Server, cfg.CAChecksum, cfg.AdminToken = srv.URL, srv.Checksum, simAdminToken
	cfg.Clusters, cfg.Prefix, cfg.Connections, cfg.Workers = n, "tunnels", 2, 16
	cfg.MinBackoff, cfg.MaxBackoff, cfg.RequestTimeout, cfg.Timeout = 200*time.Millisecond, 2*time.Second, 20*time.Second, time.Minute
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.CreateRegistrationToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.SetRegistrationToken(tok)
	fleetCtx, stop := context.WithCancel(ctx)
	defer func() { stop(); s.Wait() }()
	s.Start(fleetCtx)
	if _, err := s.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WaitPolled(ctx); err != nil {
		t.Fatal(err)
	}

	phase("fleet polling")
	alice := simTunnelUser(t, ctx, srv, admin, "alice", &api.LabelSelector{MatchLabels: map[string]string{sim.RunLabel: "tunnels"}})
	carol := simTunnelUser(t, ctx, srv, admin, "carol", nil)
	hc := simK8sClient(t, srv)
	url := func(i int, path string) string { return srv.URL + api.PathK8sClusters + s.ClusterName(i) + path }

	// The first call waits for the binding to be compiled, and the tunnel to open.
	eventually(t, 30*time.Second, "alice reaching cluster 0", func() error {
		_, _, err := simK8sGet(ctx, hc, url(0, "/version"), alice, nil)
		return err
	})
	phase("cluster 0 reached")
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			// A client-sent impersonation must not survive the proxy.
			body, h, err := simK8sGet(ctx, hc, url(i, "/version"), alice, http.Header{"Impersonate-User": {"system:admin"}})
			if err != nil {
				errs[i] = err
				return
			}
			var v struct{ GitVersion string }
			json.Unmarshal(body, &v)
			switch {
			case v.GitVersion != "v1.37.0+sim":
				errs[i] = fmt.Errorf("cluster %d: /version answered %s", i, body)
			case h.Get(sim.HeaderSimCluster) != s.ClientID(i):
				errs[i] = fmt.Errorf("cluster %d: answered by %q", i, h.Get(sim.HeaderSimCluster))
			case h.Get(sim.HeaderSimImpersonate) != rbac.UserPrefix+"alice":
				errs[i] = fmt.Errorf("cluster %d: reached as %q, want %q", i, h.Get(sim.HeaderSimImpersonate), rbac.UserPrefix+"alice")
			case h.Get("Audit-Id") == "":
				errs[i] = fmt.Errorf("cluster %d: no Audit-Id on the answer", i)
			}
		})
	}
	wg.Wait()
	phase("every cluster reached")
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}

	body, _, err := simK8sGet(ctx, hc, url(n-1, "/api/v1/namespaces/shop/pods"), alice, nil)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Kind  string
		Items []struct {
			Metadata struct{ Name, Namespace string }
		}
	}
	if err := json.Unmarshal(body, &list); err != nil || list.Kind != "PodList" || len(list.Items) != sim.SimPods || list.Items[0].Metadata.Namespace != "shop" {
		t.Errorf("pods list through the proxy: %v %s", err, body)
	}
	events := simK8sWatch(t, ctx, hc, url(n-1, "/api/v1/namespaces/shop/pods?watch=true"), alice)
	if want := []string{"ADDED", "ADDED", "ADDED", "MODIFIED"}; fmt.Sprint(events) != fmt.Sprint(want) {
		t.Errorf("watch through the proxy: events %v, want %v", events, want)
	}

	if _, _, err := simK8sGet(ctx, hc, url(1, "/version"), carol, nil); client.Code(err) != http.StatusForbidden {
		t.Errorf("carol, bound nowhere: %v, want 403", err)
	}
	if got := s.TunnelCounts(); got.Agents != n || got.Open != n || got.Dropped != 0 {
		t.Errorf("simulator's tunnels: %+v, want %d agents with a tunnel open each", got, n)
	}
	if open, err := s.ServerMetric(ctx, "flotilla_tunnels_open"); err != nil || open != n {
		t.Errorf("the server holds %v tunnels (%v), want %d", open, err, n)
	}
}

// simTunnelUser creates a local user, binds it as a cluster-member of the clusters sel
// selects (none: bound nowhere) and returns its session token.
func simTunnelUser(t *testing.T, ctx context.Context, srv *e2e.Server, admin *client.Client, name string, sel *api.LabelSelector) string {
	t.Helper()
	spec, _ := json.Marshal(api.UserSpec{Provider: api.ProviderLocal})
	if _, err := admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindUser}, Metadata: api.ObjectMeta{Name: name}, Spec: spec}); err != nil {
		t.Fatalf("creating user %s: %v", name, err)
	}
	const password = "correct horse battery staple 42"
	if err := admin.SetPassword(ctx, name, api.SetPasswordRequest{Password: password}); err != nil {
		t.Fatal(err)
	}
	if sel != nil {
		spec, _ := json.Marshal(api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: name}, RoleRef: rbac.RoleClusterMember,
			Scope: api.BindingScope{ClusterSelector: sel}})
		if _, err := admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
			Metadata: api.ObjectMeta{Name: name + "-clusters"}, Spec: spec}); err != nil {
			t.Fatalf("binding %s: %v", name, err)
		}
	}
	anon, _ := client.New(client.Config{Server: srv.URL, CAChecksum: srv.Checksum})
	resp, err := anon.Login(ctx, api.LoginRequest{Username: name, Password: password})
	if err != nil {
		t.Fatalf("logging in as %s: %v", name, err)
	}
	return resp.Token
}

// simK8sClient reaches the server's Kubernetes proxy over HTTP/2, trusting its CA.
func simK8sClient(t *testing.T, srv *e2e.Server) *http.Client {
	t.Helper()
	ca, err := os.ReadFile(srv.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64}}
}

// simK8sGet makes a GET through the proxy as the holder of token and returns the body of a
// 200 answer; any other answer is an error with its status (client.Code).
func simK8sGet(ctx context.Context, hc *http.Client, url, token string, h http.Header) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, resp.Header, &api.Status{Code: resp.StatusCode, Message: fmt.Sprintf("GET %s: %s: %.300s", url, resp.Status, body)}
	}
	return body, resp.Header, nil
}

// simK8sWatch follows a watch through the proxy to its end and returns its event types.
func simK8sWatch(t *testing.T, ctx context.Context, hc *http.Client, url, token string) []string {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: %s", resp.Status)
	}
	var types []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev struct{ Type string }
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("watch event %q: %v", sc.Text(), err)
		}
		types = append(types, ev.Type)
	}
	return types
}
