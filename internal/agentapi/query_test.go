package agentapi

import (
	"net/url"
	"testing"
)

func TestQueryValue(t *testing.T) {
	for _, raw := range []string{
		"", "since=42", "wait=30&since=42", "since=42&since=7", "sincex=1&since=5", "since", "since=",
		"a=1&&since=%34%32", "since=4+2", "wait=&since=9", "since=%zz",
	} {
		want := ""
		if q, err := url.ParseQuery(raw); err == nil || raw == "since=%zz" {
			want = q.Get("since")
		}
		if got := queryValue(raw, "since"); got != want {
			t.Errorf("queryValue(%q, since) = %q; url.Values says %q", raw, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { queryValue("wait=30&since=1234567", "since") }); n != 0 {
		t.Errorf("queryValue allocated %v times; want none", n)
	}
}
