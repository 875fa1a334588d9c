package apiserver_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"

	"flotilla.dev/api"
)

// FuzzCreate sends bodies to the create endpoints of every kind over a real store: a refused
// body leaves the store as it was and is answered with a 4xx Status; an accepted one reads
// back as it was answered, and sent again as an update changes nothing.
func FuzzCreate(f *testing.F) {
	e := newEnv(f)
	for i, s := range []string{
		`{"metadata":{"name":"a"},"spec":{"selector":{"matchLabels":{"env":"prod"}}}}`,
		`{"metadata":{"name":"a"},"spec":{"repo":"https://h/r","pollingInterval":"30s"}}`,
		`{"metadata":{"name":"a"},"spec":{"resources":[{"name":"a.yaml","content":"kind: X"}],"rolloutStrategy":{"maxUnavailable":"50%"}}}`,
		`{"metadata":{"name":"a"},"spec":{"maxUses":3,"ttl":"1h"}}`,
		`{"metadata":{"name":"a"},"spec":{"stringData":{"k":"v"}}}`,
		`{"metadata":{"name":"a"}}{"metadata":{"name":"b"}}`,
		"metadata: {name: a}\n---\nmetadata: {name: b}\n",
		`{"metadata":{"name":"a"},"spec":{"stringData":{"k":"**redacted**"}}}`,
		`{"metadata":{"name":"a","namespace":"b"}}`,
		`{"kind":"Cluster","metadata":{"name":"a"},"spec":{"displayName":"x"}}`,
	} {
		f.Add([]byte(s), i%2 == 1, uint8(i))
	}
	f.Fuzz(func(t *testing.T, body []byte, isYAML bool, kind uint8) {
		e := e.with(t)
		k := api.Kinds[int(kind)%len(api.Kinds)]
		ct := "application/json"
		if isYAML {
			ct = "application/yaml"
		}
		p := base + "/namespaces/ws/" + k.Plural
		snap := e.snapshot()
		code, resp := e.do("POST", p, ct, body)
		if code != http.StatusCreated {
			var st api.Status
			if err := json.Unmarshal(resp, &st); err != nil || st.Code != code || code < 400 || code >= 500 {
				t.Fatalf("refusal %d %s is not a 4xx Status", code, resp)
			}
			if after := e.snapshot(); after != snap {
				t.Fatalf("refused with %d %s, yet the store changed:\n%s\nbecame\n%s", code, resp, snap, after)
			}
			return
		}
		created := decodeObject(t, resp)
		name := created.Metadata.Name
		t.Cleanup(func() { e.do("DELETE", p+"/"+url.PathEscape(name), "", nil) })
		if k.Kind == api.KindRegistrationToken {
			return // its create answer alone shows the token
		}
		code, got := e.do("GET", p+"/"+url.PathEscape(name), "", nil)
		if code != http.StatusOK || string(got) != string(resp) {
			t.Fatalf("read back %d:\n%s\nwant what create answered:\n%s", code, got, resp)
		}
		if k.Kind == api.KindSecret {
			return // its answers hide the values, which an update cannot send back
		}
		before := e.revision()
		code, again := e.do("PUT", p+"/"+url.PathEscape(name), "application/json", resp)
		if code != http.StatusOK || e.revision() != before {
			t.Fatalf("sending the created object back: %d %s, revision %d → %d; want it unchanged", code, again, before, e.revision())
		}
	})
}

// FuzzListQuery sends list queries, forged continue tokens among them, to one namespace: the
// answer is a list or a 4xx Status, and a list holds only objects of that namespace and kind.
func FuzzListQuery(f *testing.F) {
	e := newEnv(f)
	for i := range 3 {
		e.json("POST", base+"/namespaces/a/clustergroups", group(fmt.Sprintf("g%d", i), map[string]string{"env": "prod"}))
		e.json("POST", base+"/namespaces/b/clustergroups", group(fmt.Sprintf("secret%d", i), map[string]string{"env": "prod"}))
	}
	e.do("POST", base+"/namespaces/b/secrets", "application/json", []byte(`{"metadata":{"name":"s"},"spec":{"stringData":{"k":"v"}}}`))
	for _, s := range []struct {
		q         string
		rev, from int64
		raw       string
	}{
		{"labelSelector=env%3Dprod&limit=1", 0, 0, ""},
		{"limit=2", 1, 0, ""},
		{"limit=1", 1 << 40, 3, ""},
		{"", -1, 0, ""},
		{"labelSelector=env+in+(a,b),!x", 2, -5, ""},
		{"fieldSelector=metadata.name%3Dg1", 0, 0, "eyJyIjoxLCJhIjowfQ"},
		{"limit=99999999999999999999", 0, 0, "!!"},
		{"labelSelector=%00", 0, 0, "e30"},
	} {
		f.Add(s.q, s.rev, s.from, s.raw)
	}
	f.Fuzz(func(t *testing.T, rawQuery string, rev, after int64, rawToken string) {
		e := e.with(t)
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			q = url.Values{}
		}
		q.Del("watch") // a watch streams; FuzzWatchResourceVersion covers its parameters
		switch {
		case rawToken != "":
			q.Set("continue", rawToken)
		case rev != 0:
			tok, _ := json.Marshal(map[string]int64{"r": rev, "a": after})
			q.Set("continue", base64.RawURLEncoding.EncodeToString(tok))
		}
		code, body := e.do("GET", base+"/namespaces/a/clustergroups?"+q.Encode(), "", nil)
		if code != http.StatusOK {
			var st api.Status
			if err := json.Unmarshal(body, &st); err != nil || st.Code != code || code < 400 || code >= 500 {
				t.Fatalf("GET ?%s: %d %s, want a list or a 4xx Status", q.Encode(), code, body)
			}
			return
		}
		var l api.List
		if err := json.Unmarshal(body, &l); err != nil {
			t.Fatalf("list %s: %v", body, err)
		}
		limit, _ := strconv.Atoi(q.Get("limit"))
		if limit > 0 && len(l.Items) > limit {
			t.Fatalf("%d items, more than limit %d", len(l.Items), limit)
		}
		for _, it := range l.Items {
			o := decodeObject(t, it)
			if o.Metadata.Namespace != "a" || o.Kind != api.KindClusterGroup {
				t.Fatalf("GET ?%s in namespace a answered %s %s/%s", q.Encode(), o.Kind, o.Metadata.Namespace, o.Metadata.Name)
			}
		}
	})
}

// FuzzWatchResourceVersion opens watches from any resourceVersion: one the store has reached
// streams, one it has not is 410, anything else 400; none hangs before answering.
func FuzzWatchResourceVersion(f *testing.F) {
	e := newEnv(f)
	e.json("POST", base+"/namespaces/a/clustergroups", group("g", nil))
	for _, s := range []string{"", "0", "1", "2", "3", "99", "-1", "1e3", "0x10", "9223372036854775807", "9223372036854775808", " 1", "+1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rv string) {
		e := e.with(t)
		cur := e.revision()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", e.url+base+"/namespaces/a/clustergroups?watch=true&resourceVersion="+url.QueryEscape(rv), nil)
		req.Header.Set("Authorization", "Bearer "+e.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		n, perr := strconv.ParseInt(rv, 10, 64)
		want := http.StatusOK
		switch {
		case rv != "" && (perr != nil || n < 0):
			want = http.StatusBadRequest
		case n > cur:
			want = http.StatusGone
		}
		if resp.StatusCode != want {
			t.Fatalf("watch from %q (store at %d): %d, want %d", rv, cur, resp.StatusCode, want)
		}
	})
}

// with is e reporting to t, for use inside a fuzz target.
func (e *env) with(t testing.TB) *env {
	c := *e
	c.t = t
	return &c
}
