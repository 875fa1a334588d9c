package e2e_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"flotilla.dev/api"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/gitserver"
)

// TestGitOpsToClusters follows commits from a real git server on loopback to real clusters:
// a Fleet GitRepo manifest and a credentials Secret applied with the CLI, the first commit
// deployed to the targeted cluster only, a second commit (announced by a GitHub webhook)
// updating it, and a third (announced by a GitLab webhook) removing a path, whose bundle's
// objects then leave the cluster.
func TestGitOpsToClusters(t *testing.T) {
	gs := gitserver.Start(t)
	clusters, kubes := startClusters(t, "git-prod", "git-dev")
	kprod, kdev := kubes[0], kubes[1]

	repo := gs.NewRepo(t, "fleet-apps")
	repo.WriteFiles(map[string]string{
		"apps/web/fleet.yaml": "defaultNamespace: gitops-web\n" +
			"targetCustomizations:\n- name: prod\n  clusterSelector: {matchLabels: {env: prod}}\n  yaml: {overlays: [prod]}\n",
		"apps/web/configmap.yaml":           gitopsConfigMap("web-config", "1"),
		"apps/web/overlays/prod/extra.yaml": gitopsConfigMap("web-prod-only", "yes"),
		"apps/extra/fleet.yaml":             "defaultNamespace: gitops-extra\n",
		"apps/extra/configmap.yaml":         gitopsConfigMap("extra-config", "1"),
		"README.md":                         "outside spec.paths\n",
	})
	c1 := repo.Commit("first")

	srv := e2e.StartServer(t, e2e.ServerOptions{Args: []string{"--agent-poll-interval", "1s"}})
	cl := srv.CLI(t)
	admin := adminClient(t, srv)
	ctx := testCtx(t, 10*time.Minute)
	tok := newToken(t, cl, "--ttl", "1h")
	for i, labels := range []string{"env=prod", "env=dev"} {
		startAgent(t, t.TempDir(), "--server", srv.URL, "--ca-checksum", srv.Checksum, "--token", tok,
			"--kubeconfig", clusters[i].KubeconfigPath(), "--labels", labels, "--status-interval", "2s")
	}

	// The credentials and the GitRepo, as a Fleet user would write them.
	cli(t, cl, fmt.Sprintf(`apiVersion: flotilla.dev/v1alpha1
kind: Secret
metadata: {name: git-creds}
spec:
  type: kubernetes.io/basic-auth
  stringData: {username: %s, password: %s}
---
apiVersion: flotilla.dev/v1alpha1
kind: Secret
metadata: {name: webhook}
spec:
  stringData: {github: gh-key, gitlab: gl-token}
---
apiVersion: fleet.cattle.io/v1alpha1
kind: GitRepo
metadata: {name: apps}
spec:
  repo: %s
  branch: main
  paths: [apps/*]
  clientSecretName: git-creds
  webhookSecret: webhook
  disablePolling: true
  targets:
  - clusterSelector: {matchLabels: {env: prod}}
`, gs.User, gs.Password, repo.HTTPURL()), "apply", "-f", "-")
	if out := cli(t, cl, "", "get", "secret", "git-creds", "-o", "yaml"); strings.Contains(out, gs.Password) || !strings.Contains(out, api.SecretRedacted) {
		t.Errorf("flotilla get secret shows:\n%s", out)
	}

	waitGitRepo(t, ctx, admin, "apps", c1)
	eventually(t, 2*time.Minute, "first commit applied in the prod cluster", func() error {
		return configMaps(ctx, kprod, map[string]string{"gitops-web/web-config": "1", "gitops-web/web-prod-only": "yes", "gitops-extra/extra-config": "1"})
	})
	if err := configMaps(ctx, kdev, map[string]string{"gitops-web/web-config": "", "gitops-extra/extra-config": ""}); err != nil {
		t.Errorf("dev cluster, which the GitRepo does not target: %v", err)
	}
	if out := cli(t, cl, "", "get", "gitrepo", "apps", "-o", "yaml"); !strings.Contains(out, c1) || !strings.Contains(out, "apps-apps-web") {
		t.Errorf("flotilla get gitrepo does not show the commit and bundles:\n%s", out)
	}

	// A second commit, announced by a GitHub push webhook.
	repo.Write("apps/web/configmap.yaml", gitopsConfigMap("web-config", "2"))
	c2 := repo.Commit("web v2")
	body, _ := json.Marshal(map[string]any{"ref": "refs/heads/main", "repository": map[string]any{"clone_url": repo.HTTPURL()}})
	mac := hmac.New(sha256.New, []byte("gh-key"))
	mac.Write(body)
	if code := postWebhook(t, srv, body, map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + hex.EncodeToString(mac.Sum(nil))}); code != http.StatusAccepted {
		t.Fatalf("GitHub webhook: HTTP %d", code)
	}
	waitGitRepo(t, ctx, admin, "apps", c2)
	eventually(t, 2*time.Minute, "second commit applied", func() error {
		return configMaps(ctx, kprod, map[string]string{"gitops-web/web-config": "2", "gitops-extra/extra-config": "1"})
	})

	// A third commit removes apps/extra, announced by GitLab; a forged one first is refused.
	repo.Remove("apps/extra")
	c3 := repo.Commit("drop extra")
	body, _ = json.Marshal(map[string]any{"ref": "refs/heads/main", "project": map[string]any{"git_http_url": repo.HTTPURL()}})
	if code := postWebhook(t, srv, body, map[string]string{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "forged"}); code != http.StatusUnauthorized {
		t.Errorf("forged GitLab webhook: HTTP %d, want 401", code)
	}
	if code := postWebhook(t, srv, body, map[string]string{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "gl-token"}); code != http.StatusAccepted {
		t.Fatalf("GitLab webhook: HTTP %d", code)
	}
	waitGitRepo(t, ctx, admin, "apps", c3)
	eventually(t, 2*time.Minute, "removed path's objects gone from the cluster", func() error {
		return configMaps(ctx, kprod, map[string]string{"gitops-web/web-config": "2", "gitops-extra/extra-config": ""})
	})
	if out := cli(t, cl, "", "get", "bundles"); strings.Contains(out, "apps-apps-extra") {
		t.Errorf("bundle of the removed path still listed:\n%s", out)
	}
}

func gitopsConfigMap(name, v string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\ndata:\n  v: %q\n", name, v)
}

// configMaps checks ConfigMaps' value v by namespace/name; "" means the ConfigMap must not exist.
func configMaps(ctx context.Context, k kubernetes.Interface, want map[string]string) error {
	for key, v := range want {
		ns, name, _ := strings.Cut(key, "/")
		data, err := configMapData(ctx, k, ns, name)
		if err != nil {
			return err
		}
		switch {
		case v == "" && data != nil:
			return fmt.Errorf("ConfigMap %s exists", key)
		case v != "" && data == nil:
			return fmt.Errorf("ConfigMap %s missing", key)
		case v != "" && data["v"] != v:
			return fmt.Errorf("ConfigMap %s has v=%q, want %q", key, data["v"], v)
		}
	}
	return nil
}

func waitGitRepo(t *testing.T, ctx context.Context, c interface {
	Get(ctx context.Context, kind, ns, name string) (*api.Object, error)
}, name, commit string) {
	t.Helper()
	eventually(t, time.Minute, "GitRepo "+name+" at commit "+commit[:12], func() error {
		o, err := c.Get(ctx, api.KindGitRepo, api.DefaultNamespace, name)
		if err != nil {
			return err
		}
		var st api.GitRepoStatus
		json.Unmarshal(o.Status, &st)
		if st.Commit != commit || st.Error != "" {
			return fmt.Errorf("status: commit %s, error %q", st.Commit, st.Error)
		}
		return nil
	})
}

// postWebhook sends a push event to the server's webhook endpoint, with no bearer token.
func postWebhook(t *testing.T, srv *e2e.Server, body []byte, headers map[string]string) int {
	t.Helper()
	ca, err := os.ReadFile(srv.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/webhooks/git", bytes.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}
