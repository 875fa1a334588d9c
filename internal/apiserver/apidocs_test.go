package apiserver

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"k8s.io/kube-openapi/pkg/validation/spec"

	"flotilla.dev/api"
	"flotilla.dev/internal/apidoc"
)

// TestAPIDocsGenerated fails when the generated descriptions no longer match the comments
// of package api.
func TestAPIDocsGenerated(t *testing.T) {
	docs, err := apidoc.Docs("../../api")
	if err != nil {
		t.Fatal(err)
	}
	want, err := apidoc.Source("apiserver", "apiDocs", apidoc.Generator, docs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("zz_generated_apidocs.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("zz_generated_apidocs.go is stale: run go generate ./internal/apiserver")
	}
}

// property follows a dotted path through a schema; "[]" steps into a list's items.
func property(t *testing.T, s spec.Schema, path string) spec.Schema {
	t.Helper()
	for _, p := range strings.Split(path, ".") {
		if p == "[]" {
			if s.Items == nil || s.Items.Schema == nil {
				t.Fatalf("%s: not a list at %q", path, p)
			}
			s = *s.Items.Schema
			continue
		}
		next, ok := s.Properties[p]
		if !ok {
			t.Fatalf("%s: no property %q", path, p)
		}
		s = next
	}
	return s
}

// TestSchemaDescriptions: fields, nested ones too, are described by their doc comments, in
// Fleet's group as in Flotilla's; a field with no comment of its own by its type's.
func TestSchemaDescriptions(t *testing.T) {
	for _, group := range []string{api.Group, api.FleetGroup} {
		for _, tc := range []struct{ kind, path, want string }{
			{api.KindGitRepo, "spec", apiDocs["GitRepoSpec"]},
			{api.KindGitRepo, "spec.repo", "Repo is the git repository's URL"},
			{api.KindGitRepo, "spec.targets.[].clusterSelector.matchLabels", apiDocs["LabelSelector.MatchLabels"]},
			{api.KindGitRepo, "spec.imageScanCommit", "Fleet fields accepted"},
			{api.KindGitRepo, "status.error", "why the latest fetch or commit was not deployed"},
			{api.KindGitRepo, "metadata.resourceVersion", apiDocs["ObjectMeta.ResourceVersion"]},
			{api.KindBundle, "spec.helm", apiDocs["HelmOptions"]},
			{api.KindBundle, "spec.helm.releaseName", "ReleaseName overrides"},
			{api.KindBundle, "spec.namespaceAnnotations", "NamespaceLabels and NamespaceAnnotations"},
			{api.KindBundle, "spec.targets.[]", apiDocs["BundleTarget"]},
			{api.KindBundle, "spec.targets.[].helm.values", apiDocs["HelmOptions.Values"]},
			{api.KindBundle, "spec.diff.comparePatches.[].kind", "APIVersion, Kind, Name and Namespace select"},
			{api.KindCluster, "status.inventory.nodeCount", "NodeCount is the number of nodes."},
		} {
			if tc.want == "" {
				t.Fatalf("%s %s: nothing to look for", tc.kind, tc.path)
			}
			s := property(t, objectSchema(group, api.Version, tc.kind), tc.path)
			if !strings.Contains(s.Description, tc.want) {
				t.Errorf("%s %s %s: description %q, want %q", group, tc.kind, tc.path, s.Description, tc.want)
			}
		}
	}
	// A comment describing one field is not shared with the next.
	if d := property(t, objectSchema(api.Group, api.Version, api.KindBundle), "spec.correctDrift").Description; d != apiDocs["CorrectDrift"] {
		t.Errorf("spec.correctDrift: %q, want CorrectDrift's doc", d)
	}
}

// TestEveryFieldDescribed: every field of these kinds has a description, so that a field
// added without a doc comment is noticed.
func TestEveryFieldDescribed(t *testing.T) {
	var missing []string
	var walk func(path string, s spec.Schema)
	walk = func(path string, s spec.Schema) {
		if s.Description == "" {
			missing = append(missing, path)
		}
		for name, p := range s.Properties {
			walk(path+"."+name, p)
		}
		if s.Items != nil && s.Items.Schema != nil {
			for name, p := range s.Items.Schema.Properties {
				walk(path+"[]."+name, p)
			}
		}
	}
	for _, kind := range []string{api.KindCluster, api.KindClusterGroup, api.KindRegistrationToken, api.KindGitRepo, api.KindBundle, api.KindSecret} {
		walk(kind, objectSchema(api.Group, api.Version, kind))
	}
	if len(missing) > 0 {
		t.Errorf("fields without a description (give their Go fields a doc comment, then go generate ./internal/apiserver):\n%s", strings.Join(missing, "\n"))
	}
}

// TestOpenAPISize keeps the documents kubectl downloads small.
func TestOpenAPISize(t *testing.T) {
	openapi.build()
	total := 0
	for path, doc := range openapi.docs {
		total += len(doc)
		t.Logf("%s: %d bytes", path, len(doc))
		if !json.Valid(doc) {
			t.Errorf("%s: not JSON", path)
		}
	}
	if total > 512<<10 {
		t.Errorf("the OpenAPI documents total %d bytes; keep them under 512 KiB", total)
	}
}
