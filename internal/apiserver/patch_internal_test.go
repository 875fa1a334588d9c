package apiserver

import (
	"strings"
	"testing"
)

// A patched object loses its resourceVersion and nothing else: large integers included.
func TestWithoutResourceVersionKeepsNumbers(t *testing.T) {
	in := `{"metadata":{"name":"a","resourceVersion":"7"},"spec":{"forceSyncGeneration":9007199254740993,"ratio":0.5}}`
	out, err := withoutResourceVersion([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	got := string(out)
	if strings.Contains(got, "resourceVersion") || !strings.Contains(got, "9007199254740993") || !strings.Contains(got, "0.5") {
		t.Errorf("withoutResourceVersion(%s) = %s", in, got)
	}
}
