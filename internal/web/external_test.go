package web_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/server"
)

// TestExternalURL: with --external-url the agent's install command and the kubeconfig name
// that address, whatever address the browser used; without it the command names the
// browser's address and the page warns that agents may not reach it. A bad URL stops the
// server from starting.
func TestExternalURL(t *testing.T) {
	const ext = "https://flotilla.example.com:9443"
	for _, external := range []bool{true, false} {
		r, _ := startServer(t, "", func(c *server.Config) {
			if external {
				c.ExternalURL = ext + "/"
			}
		})
		r.addUser(t, "ops", "admin")
		ops := r.browser(t)
		r.login(t, ops, "ops")
		_, _, page := get(t, ops, r.url+"/registration")
		code, _, body := post(t, ops, r.url+"/registration", url.Values{"csrf": {formValue(page, "csrf")}, "ttl": {"1h"}, "name": {"t"}}, nil)
		m := regexp.MustCompile(`flotilla-agent --server (\S+) `).FindStringSubmatch(body)
		if code != http.StatusCreated || m == nil {
			t.Fatalf("create token: %d\n%s", code, body)
		}
		warned := strings.Contains(body, `data-testid="guessed-server"`)
		if want := map[bool]string{true: ext, false: r.url}[external]; m[1] != want || warned == external {
			t.Errorf("external URL %v: the command names %s (want %s), warning shown %v", external, m[1], want, warned)
		}

		spec, _ := json.Marshal(api.ClusterSpec{})
		if _, err := r.admin.Create(context.Background(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
			Metadata: api.ObjectMeta{Name: "edge", Namespace: api.DefaultNamespace}, Spec: spec}); err != nil {
			t.Fatal(err)
		}
		_, _, page = get(t, ops, r.url+"/clusters/fleet-default/edge")
		code, _, body = post(t, ops, r.url+"/clusters/fleet-default/edge/kubeconfig", url.Values{"csrf": {formValue(page, "csrf")}}, nil)
		want := map[bool]string{true: ext, false: r.url}[external] + api.PathK8sClusters + "edge\n"
		if code != http.StatusOK || !strings.Contains(body, "server: "+want) {
			t.Errorf("external URL %v: kubeconfig %d, want server %s\n%s", external, code, want, body)
		}
	}
	for _, bad := range []string{"http://x.example", "https://", "https://x.example/path", "https://x.example?q=1", "https://u:p@x.example", "https://x.example:99999", "x.example"} {
		if _, err := server.ParseExternalURL(bad); err == nil {
			t.Errorf("external URL %q was accepted", bad)
		}
	}
}
