package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
)

// A desired state larger than an agent reads is not sent: the answer says why, with a
// Status the agent recognises. Archives that would push a state over the limit are left out
// for the agent to fetch, rather than the state refused.
func TestDesiredStateBounded(t *testing.T) {
	e := newAgentEnv(t)
	ctx := context.Background()
	n := 1 // app
	addBundle := func(valueBytes int) {
		t.Helper()
		n++
		now := time.Now().UTC()
		spec := fmt.Sprintf(`{"contentHash":"sha256:%04d","helm":{"values":{"v":%q}},"targets":[{"clusterName":"edge-1"}]}`,
			n, strings.Repeat("x", valueBytes))
		if _, err := e.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
			Metadata: api.ObjectMeta{Namespace: envNS, Name: fmt.Sprintf("big%d", n), Generation: 1, CreationTimestamp: &now},
			Spec:     json.RawMessage(spec)}); err != nil {
			t.Fatal(err)
		}
	}
	// get polls until the model holds n deployments for the cluster (or refuses a state
	// that large); it returns the answer's code and body.
	get := func(query string) (int, []byte) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, body := e.fetch(api.PathDesired + "?" + query)
			var ds api.DesiredState
			if code != http.StatusOK || json.Unmarshal(body, &ds) == nil && len(ds.Deployments) == n {
				return code, body
			}
			if time.Now().After(deadline) {
				t.Fatalf("the model did not take the %d bundles", n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Just under the limit, with room for less than an archive in base64.
	const archive = 900 << 10
	for range 4 {
		addBundle((api.MaxDesiredBytes - archive) / 4)
	}
	code, body := get("since=0")
	if code != http.StatusOK {
		t.Fatalf("a state under the limit: %d %s", code, body)
	}
	if resp, _ := e.pollQuery("since=0"); resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("a desired state sent as %q", resp.Header.Get("Content-Type"))
	}
	if room := api.MaxDesiredBytes - len(body); room <= 0 || room >= archive*4/3 {
		t.Fatalf("the state is %d bytes: the test wants it within an archive of the limit", len(body))
	}
	data := bytes.Repeat([]byte{'a'}, archive)
	if err := e.st.PutContent(ctx, "sha256:0123", data); err != nil {
		t.Fatal(err)
	}
	e.srv.InlineContent = api.MaxInlineContent
	code, body = get("since=0&inline=1")
	var ds api.DesiredState
	if code != http.StatusOK || json.Unmarshal(body, &ds) != nil {
		t.Fatalf("a state that fits only without its archive: %d", code)
	}
	if ds.Contents != nil {
		t.Errorf("an archive was sent that made the answer %d bytes", len(body))
	}
	if len(body) > api.MaxDesiredBytes {
		t.Errorf("an answer of %d bytes was sent", len(body))
	}
	// Over the limit: refused, however it is asked for.
	addBundle(2 * archive)
	for _, q := range []string{"since=0", "since=0&inline=1"} {
		code, body = get(q)
		var st api.Status
		if code != http.StatusInternalServerError || json.Unmarshal(body, &st) != nil || st.Reason != api.ReasonDesiredTooLarge {
			t.Errorf("%s, a state over the limit: %d %.200s; want 500 %s", q, code, body, api.ReasonDesiredTooLarge)
		} else if !strings.Contains(st.Message, "edge-1") {
			t.Errorf("the refusal does not name the cluster: %q", st.Message)
		}
	}
}
