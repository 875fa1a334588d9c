package server_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/server"
)

const adminToken = "test-admin-token-0123456789"

type testServer struct {
	url      string
	checksum string
	admin    *client.Client
	cancel   context.CancelFunc
	done     chan error
	dir      string
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func start(t testing.TB, dir string) *testServer {
	t.Helper()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cfg := server.Config{Listen: addr, DataDir: dir, BootstrapToken: adminToken,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Fleet:  fleet.Config{PollInterval: time.Second, StatusInterval: 100 * time.Millisecond}}
	s, err := server.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{url: "https://" + addr, checksum: s.CAChecksum(), cancel: cancel, done: make(chan error, 1), dir: dir}
	go func() { ts.done <- s.Serve(ctx) }()
	ts.admin, err = client.New(client.Config{Server: ts.url, Token: adminToken, CAChecksum: ts.checksum})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := ts.admin.List(context.Background(), api.KindCluster, "", client.ListOptions{Limit: 1}); err == nil && ready(ts) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(ts.stop)
	return ts
}

func ready(ts *testServer) bool {
	_, err := ts.admin.Do(context.Background(), "GET", "/readyz", nil, nil)
	return err == nil
}

func (ts *testServer) stop() {
	if ts.cancel != nil {
		ts.cancel()
		<-ts.done
		ts.cancel = nil
	}
}

func (ts *testServer) agent(t testing.TB, credential string) *client.Client {
	c, err := client.New(client.Config{Server: ts.url, Token: credential, CAChecksum: ts.checksum})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func createToken(t testing.TB, ts *testServer, name string, spec api.RegistrationTokenSpec) string {
	t.Helper()
	raw, _ := json.Marshal(spec)
	out, err := ts.admin.Create(ctxT(t), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRegistrationToken},
		Metadata: api.ObjectMeta{Name: name, Namespace: api.DefaultNamespace}, Spec: raw})
	if err != nil {
		t.Fatal(err)
	}
	var st api.RegistrationTokenStatus
	json.Unmarshal(out.Status, &st)
	if !strings.HasPrefix(st.Token, "frt_") {
		t.Fatalf("token create returned %q", st.Token)
	}
	// Shown once: reading it back does not reveal it.
	got, _ := ts.admin.Get(ctxT(t), api.KindRegistrationToken, api.DefaultNamespace, name)
	if strings.Contains(string(got.Status), st.Token) || strings.Contains(string(got.Spec), st.Token) {
		t.Fatal("the token value is readable after creation")
	}
	return st.Token
}

func applyBundle(t *testing.T, ts *testServer, name string, selector map[string]string, cm string) {
	t.Helper()
	spec := map[string]any{
		"resources": []map[string]string{{"name": "cm.yaml", "content": cm}},
		"targets":   []map[string]any{{"clusterSelector": map[string]any{"matchLabels": selector}}},
	}
	raw, _ := json.Marshal(spec)
	if _, _, err := ts.admin.Apply(ctxT(t), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Name: name, Namespace: api.DefaultNamespace}, Spec: raw}, false); err != nil {
		t.Fatal(err)
	}
}

// waitDesired polls until cond holds for the cluster's desired state.
func waitDesired(t testing.TB, c *client.Client, cond func(*api.DesiredState) bool) *api.DesiredState {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ds, _, _, err := c.Desired(ctxT(t), 0)
		if err == nil && ds != nil && cond(ds) {
			return ds
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("desired state did not reach the expected shape")
	return nil
}

func TestAgentProtocol(t *testing.T) {
	ts := start(t, t.TempDir())
	ctx := ctxT(t)
	tok := createToken(t, ts, "edge", api.RegistrationTokenSpec{TTL: "1h", MaxUses: 2, Labels: map[string]string{"fleet": "edge"}})
	anon := ts.agent(t, "")

	// Registration: unknown token, then a real one; the same cluster again reuses its Cluster.
	if _, err := anon.Register(ctx, "frt_nope", api.RegisterRequest{ClientID: "x"}); client.Reason(err) != api.ReasonTokenInvalid {
		t.Errorf("unknown token: %v", err)
	}
	regA, err := anon.Register(ctx, tok, api.RegisterRequest{ClientID: "uid-a", Labels: map[string]string{"env": "prod"}, Inventory: &api.ClusterInventory{KubernetesVersion: "v1.37.2", NodeCount: 1, Architecture: "arm64"}})
	if err != nil {
		t.Fatal(err)
	}
	again, err := anon.Register(ctx, tok, api.RegisterRequest{ClientID: "uid-a", Credential: regA.Credential})
	if err != nil || again.ClusterName != regA.ClusterName {
		t.Fatalf("re-registration: %+v, %v; want cluster %s", again, err, regA.ClusterName)
	}
	regB, err := anon.Register(ctx, tok, api.RegisterRequest{ClientID: "uid-b", Labels: map[string]string{"env": "dev"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anon.Register(ctx, tok, api.RegisterRequest{ClientID: "uid-c"}); client.Reason(err) != api.ReasonTokenInvalid || !strings.Contains(err.Error(), "used up") {
		t.Errorf("third cluster on a 2-use token: %v", err)
	}
	l, _ := ts.admin.List(ctx, api.KindCluster, "", client.ListOptions{})
	if len(l.Items) != 2 {
		t.Errorf("%d clusters after registering two (one twice), want 2", len(l.Items))
	}
	a, b := ts.agent(t, regA.Credential), ts.agent(t, regB.Credential)
	obj, _ := ts.admin.Get(ctx, api.KindCluster, api.DefaultNamespace, regA.ClusterName)
	if obj.Metadata.Labels["fleet"] != "edge" || obj.Metadata.Labels["env"] != "prod" {
		t.Errorf("cluster labels %v: want the agent's and the token's", obj.Metadata.Labels)
	}

	// A bundle for env=prod reaches A only.
	applyBundle(t, ts, "web", map[string]string{"env": "prod"}, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {v: \"1\"}\n")
	ds := waitDesired(t, a, func(ds *api.DesiredState) bool { return len(ds.Deployments) == 1 })
	dep := ds.Deployments[0]
	if dep.Bundle != "fleet-default/web" || !strings.HasPrefix(dep.ContentHash, "sha256:") {
		t.Errorf("deployment %+v", dep)
	}
	if ds2, _, _, _ := b.Desired(ctx, 0); ds2 == nil || len(ds2.Deployments) != 0 {
		t.Errorf("cluster B got %+v, want nothing", ds2)
	}
	// Unchanged: 304.
	if same, rev, after, err := a.Desired(ctx, ds.Revision); err != nil || same != nil || rev != ds.Revision || after <= 0 {
		t.Errorf("unchanged poll: %v %d %v %v", same, rev, after, err)
	}
	// Content: A may read it, B may not.
	data, err := a.Content(ctx, dep.ContentHash)
	if err != nil || len(data) == 0 {
		t.Fatalf("content: %v", err)
	}
	if _, err := b.Content(ctx, dep.ContentHash); client.Code(err) != http.StatusForbidden {
		t.Errorf("B reading A's content: %v, want 403", err)
	}
	// The content came with the state too, A not having applied it yet.
	if len(ds.Contents) != 1 || !bytes.Equal(ds.Contents[dep.ContentHash], data) {
		t.Errorf("desired state carried %d archives, want the deployment's", len(ds.Contents))
	}

	// Status: reported, rolled up, idempotent.
	rep := api.StatusReport{Seq: 1, Time: time.Now(), Deployments: []api.DeploymentStatus{{Bundle: dep.Bundle, ID: dep.ID, State: api.StateReady}}}
	if err := a.ReportStatus(ctx, rep); err != nil {
		t.Fatal(err)
	}
	waitBundle(t, ts, "web", func(s *api.Summary) bool { return s.Ready == 1 && s.DesiredReady == 1 })
	if full, _, _, err := a.Desired(ctx, 0); err != nil || full == nil || len(full.Contents) != 0 {
		t.Errorf("after A reported the deployment applied: %+v, %v; want the state without its content", full, err)
	}
	stale := api.StatusReport{Seq: 1, Deployments: []api.DeploymentStatus{{Bundle: dep.Bundle, ID: dep.ID, State: api.StateErrApplied}}}
	if err := a.ReportStatus(ctx, stale); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	waitBundle(t, ts, "web", func(s *api.Summary) bool { return s.Ready == 1 && s.ErrApplied == 0 })

	// Isolation: a report about another workspace's bundle is ignored, a forged credential refused.
	forged := ts.agent(t, regA.Credential[:len(regA.Credential)-2]+"xx")
	if _, _, _, err := forged.Desired(ctx, 0); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("forged credential: %v, want 401", err)
	}
	payload := strings.Split(strings.TrimPrefix(regA.Credential, "fc2."), ".")[0]
	raw, _ := base64.RawURLEncoding.DecodeString(payload)
	other := strings.Replace(string(raw), regA.ClusterName, regB.ClusterName, 1)
	tampered := ts.agent(t, "fc2."+base64.RawURLEncoding.EncodeToString([]byte(other))+"."+strings.Split(regA.Credential, ".")[2])
	if _, _, _, err := tampered.Desired(ctx, 0); client.Code(err) != http.StatusUnauthorized {
		t.Errorf("A's signature on B's name: %v, want 401", err)
	}

	// A label change moves the bundle from A to B.
	for _, c := range []struct{ name, env string }{{regA.ClusterName, "dev"}, {regB.ClusterName, "prod"}} {
		o, _ := ts.admin.Get(ctx, api.KindCluster, api.DefaultNamespace, c.name)
		o.Metadata.Labels["env"] = c.env
		if _, err := ts.admin.Update(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	dsB := waitDesired(t, b, func(ds *api.DesiredState) bool { return len(ds.Deployments) == 1 })
	if !bytes.Equal(dsB.Contents[dep.ContentHash], data) {
		t.Errorf("B's first desired state with the bundle carried %d archives, want its content", len(dsB.Contents))
	}
	waitDesired(t, a, func(ds *api.DesiredState) bool { return len(ds.Deployments) == 0 })
	if _, err := b.Content(ctx, dep.ContentHash); err != nil {
		t.Errorf("B reading content it now deploys: %v", err)
	}

	// A server restart loses no accepted report.
	if err := b.ReportStatus(ctx, api.StatusReport{Seq: 5, Deployments: []api.DeploymentStatus{{Bundle: dep.Bundle, ID: dep.ID, State: api.StateModified, Message: "ConfigMap web: modified"}}}); err != nil {
		t.Fatal(err)
	}
	ts.stop()
	ts2 := start(t, ts.dir)
	waitBundle(t, ts2, "web", func(s *api.Summary) bool {
		return s.Modified == 1 && len(s.NonReadyResources) == 1 && s.NonReadyResources[0].Message == "ConfigMap web: modified"
	})
	b2 := ts2.agent(t, regB.Credential)
	if err := b2.ReportStatus(ctx, api.StatusReport{Seq: 5}); err != nil {
		t.Fatal(err)
	}

	// Deleting a cluster revokes its credential.
	if _, err := ts2.admin.Delete(ctx, api.KindCluster, api.DefaultNamespace, regB.ClusterName, ""); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, _, err := b2.Desired(ctx, 0)
		if client.Reason(err) == api.ReasonClusterDeleted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deleted cluster's poll: %v, want %s", err, api.ReasonClusterDeleted)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitBundle(t *testing.T, ts *testServer, name string, cond func(*api.Summary) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last api.BundleStatus
	for time.Now().Before(deadline) {
		o, err := ts.admin.Get(ctxT(t), api.KindBundle, api.DefaultNamespace, name)
		if err == nil {
			last = api.BundleStatus{}
			json.Unmarshal(o.Status, &last)
			if last.Summary != nil && cond(last.Summary) {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	raw, _ := json.Marshal(last)
	t.Fatalf("bundle %s status never matched; last %s", name, raw)
}

func TestRegistrationTokenExpiry(t *testing.T) {
	ts := start(t, t.TempDir())
	tok := createToken(t, ts, "short", api.RegistrationTokenSpec{TTL: "1s"})
	time.Sleep(1500 * time.Millisecond)
	_, err := ts.agent(t, "").Register(ctxT(t), tok, api.RegisterRequest{ClientID: "late"})
	if client.Reason(err) != api.ReasonTokenInvalid || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired token: %v", err)
	}
	var st *api.Status
	if !errors.As(err, &st) {
		t.Fatal("not an API status")
	}
}

func TestConcurrentRegistration(t *testing.T) {
	ts := start(t, t.TempDir())
	limited := createToken(t, ts, "limited", api.RegistrationTokenSpec{MaxUses: 5})
	unlimited := createToken(t, ts, "unlimited", api.RegistrationTokenSpec{})
	anon := ts.agent(t, "")
	type result struct{ err error }
	results := make(chan result, 40)
	for i := range 20 {
		go func() {
			_, err := anon.Register(ctxT(t), limited, api.RegisterRequest{ClientID: "limited-" + string(rune('a'+i))})
			results <- result{err}
		}()
		go func() {
			_, err := anon.Register(ctxT(t), unlimited, api.RegisterRequest{ClientID: "free-" + string(rune('a'+i))})
			results <- result{err}
		}()
	}
	ok, refused := 0, 0
	for range 40 {
		r := <-results
		switch {
		case r.err == nil:
			ok++
		case client.Reason(r.err) == api.ReasonTokenInvalid:
			refused++
		default:
			t.Errorf("registration failed: %v", r.err)
		}
	}
	if ok != 25 || refused != 15 {
		t.Errorf("%d registered, %d refused; want 25 (5 limited + 20 unlimited) and 15", ok, refused)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		o, _ := ts.admin.Get(ctxT(t), api.KindRegistrationToken, api.DefaultNamespace, "unlimited")
		var st api.RegistrationTokenStatus
		json.Unmarshal(o.Status, &st)
		if st.Uses == 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unlimited token shows %d uses, want 20", st.Uses)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
