package agentapi

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"flotilla.dev/api"
)

// A changed desired state carries the content its cluster has not applied, within the
// budget; content the store lacks, content over the budget, and content the cluster
// reported applied are left for the agent to fetch, and the answer is the same otherwise.
func TestInlineContent(t *testing.T) {
	e := newAgentEnv(t)
	const digest = "sha256:0123"
	contents := func() map[string][]byte {
		t.Helper()
		resp, ds := e.poll(0, 0)
		if ds == nil {
			t.Fatalf("poll answered %d, want a desired state", resp.StatusCode)
		}
		if len(ds.Deployments) != 1 || ds.Deployments[0].ContentHash != digest {
			t.Fatalf("deployments %+v, want app's", ds.Deployments)
		}
		return ds.Contents
	}
	if c := contents(); c != nil {
		t.Errorf("content the store lacks was sent: %v", c)
	}
	data := bytes.Repeat([]byte("archive "), 100)
	if err := e.st.PutContent(context.Background(), digest, data); err != nil {
		t.Fatal(err)
	}
	if c := contents(); len(c) != 1 || !bytes.Equal(c[digest], data) {
		t.Errorf("contents %v, want app's archive", c)
	}
	e.srv.InlineContent = len(data) - 1
	if c := contents(); c != nil {
		t.Errorf("content over the budget was sent: %d archives", len(c))
	}
	// Served from the cache the inlining filled.
	req, _ := http.NewRequest(http.MethodGet, e.url+api.PathContent+digest, nil)
	req.Header.Set("Authorization", "Bearer "+e.cred)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
		t.Errorf("fetching the archive not sent: %d, %d bytes", resp.StatusCode, len(got))
	}
	e.srv.InlineContent = 0
	if c := contents(); c != nil {
		t.Errorf("inlining off, yet %d archives were sent", len(c))
	}
	e.srv.InlineContent = DefaultInlineContent
	_, ds := e.poll(0, 0)
	body := fmt.Sprintf(`{"seq":1,"deployments":[{"bundle":%q,"id":%q,"state":"Ready"}]}`, ds.Deployments[0].Bundle, ds.Deployments[0].ID)
	if code, st := e.post([]byte(body)); code != http.StatusOK {
		t.Fatalf("report: %d %+v", code, st)
	}
	if c := contents(); c != nil {
		t.Errorf("content the cluster reported applied was sent again: %d archives", len(c))
	}
}
