package agentapi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/tunnel"
)

func (e *agentEnv) poll(since int64, wait int) (*http.Response, *api.DesiredState) {
	e.t.Helper()
	return e.pollQuery(fmt.Sprintf("since=%d&wait=%d", since, wait))
}

// pollQuery asks for the desired state with a query string of its own.
func (e *agentEnv) pollQuery(query string) (*http.Response, *api.DesiredState) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.url+api.PathDesired+"?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+e.cred)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp, nil
	}
	var ds api.DesiredState
	if err := json.NewDecoder(resp.Body).Decode(&ds); err != nil {
		e.t.Fatal(err)
	}
	return resp, &ds
}

// A wanted tunnel wakes the cluster's held long poll, whose 304 carries the one-time token;
// the tunnel is dialled with the cluster credential and that token.
func TestWantedTunnelWakesTheHeldPoll(t *testing.T) {
	e := newAgentEnv(t)
	reg := tunnel.NewServer(tunnel.Config{Logger: slog.New(slog.DiscardHandler)})
	e.srv.Tunnels = reg
	resp, ds := e.poll(0, 0)
	if ds == nil || resp.Header.Get(api.HeaderTunnelToken) != "" {
		t.Fatalf("first poll: %d, token %q", resp.StatusCode, resp.Header.Get(api.HeaderTunnelToken))
	}
	type answer struct {
		code  int
		token string
	}
	held := make(chan answer, 1)
	go func() {
		resp, _ := e.poll(ds.Revision, 60)
		held <- answer{resp.StatusCode, resp.Header.Get(api.HeaderTunnelToken)}
	}()
	select {
	case a := <-held:
		t.Fatalf("the poll was not held: %+v", a)
	case <-time.After(50 * time.Millisecond):
	}
	opened := make(chan error, 1)
	go func() { opened <- reg.Await(context.Background(), envNS+"/edge-1", time.Minute) }()
	var a answer
	select {
	case a = <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("a wanted tunnel did not wake the held poll")
	}
	if a.code != http.StatusNotModified || len(a.token) != 64 {
		t.Fatalf("woken poll: %d, token %q", a.code, a.token)
	}
	// An unheld poll carries the token too, until it is used.
	if resp, _ := e.poll(ds.Revision, 0); resp.Header.Get(api.HeaderTunnelToken) != a.token {
		t.Fatalf("next poll's token %q", resp.Header.Get(api.HeaderTunnelToken))
	}

	wsURL := strings.Replace(e.url, "http", "ws", 1) + api.PathTunnel
	dial := func(cred, token string) int {
		h := http.Header{"Authorization": {"Bearer " + cred}, api.HeaderTunnelToken: {token}}
		c, resp, err := websocket.Dial(context.Background(), wsURL, &websocket.DialOptions{HTTPHeader: h})
		if err == nil {
			t.Cleanup(func() { c.CloseNow() })
			return http.StatusSwitchingProtocols
		}
		return resp.StatusCode
	}
	if code := dial("not-a-credential", a.token); code != http.StatusUnauthorized {
		t.Fatalf("dial without a cluster credential: %d", code)
	}
	if code := dial(e.cred, a.token); code != http.StatusSwitchingProtocols {
		t.Fatalf("dial: %d", code)
	}
	if err := <-opened; err != nil {
		t.Fatal(err)
	}
	if code := dial(e.cred, a.token); code != http.StatusForbidden {
		t.Fatalf("a reused token: %d", code)
	}
	if resp, _ := e.poll(ds.Revision, 0); resp.Header.Get(api.HeaderTunnelToken) != "" {
		t.Fatal("a poll still carries the used token")
	}
}

// A cluster labelled to keep its tunnel is asked for it at every poll, with nobody calling.
func TestKeptTunnelIsAskedForAtThePoll(t *testing.T) {
	e := newAgentEnv(t)
	reg := tunnel.NewServer(tunnel.Config{Logger: slog.New(slog.DiscardHandler)})
	e.srv.Tunnels = reg
	if resp, _ := e.poll(0, 0); resp.Header.Get(api.HeaderTunnelToken) != "" {
		t.Fatal("a token for a cluster that does not keep its tunnel")
	}
	ctx := context.Background()
	obj, err := e.st.Get(ctx, store.Key{Kind: api.KindCluster, Namespace: envNS, Name: "edge-1"})
	if err != nil {
		t.Fatal(err)
	}
	obj.Metadata.Labels = map[string]string{api.LabelTunnel: api.TunnelAlways}
	if _, err := e.st.Update(ctx, obj); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); e.srv.fleet.Label(envNS, "edge-1", api.LabelTunnel) != api.TunnelAlways; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the fleet model did not take the label")
		}
	}
	if resp, _ := e.poll(0, 0); len(resp.Header.Get(api.HeaderTunnelToken)) != 64 {
		t.Fatalf("no token for a cluster keeping its tunnel: %q", resp.Header.Get(api.HeaderTunnelToken))
	}
}
