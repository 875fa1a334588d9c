package apply

import (
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage/driver"
	helmtime "helm.sh/helm/v3/pkg/time"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func testRelease(version int, st release.Status) *release.Release {
	now := helmtime.Now()
	return &release.Release{
		Name:      "web",
		Namespace: "apps",
		Version:   version,
		Chart:     &chart.Chart{Metadata: &chart.Metadata{APIVersion: "v2", Name: "web", Version: "1.2.3"}},
		Config:    map[string]any{"replicas": float64(2)},
		Manifest:  "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
		Info:      &release.Info{FirstDeployed: now, LastDeployed: now, Status: st, Description: "Install complete"},
		Labels:    map[string]string{labelHelmDigest: "abc", labelHelmRevision: "1"},
	}
}

// The Secret the agent writes is what Helm's own Secret driver reads, and the other way
// round.
func TestReleaseSecretIsHelms(t *testing.T) {
	rel := testRelease(1, release.StatusDeployed)
	sec, err := secretFor(rel, map[string]string{"createdAt": "1"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sec.Name, "sh.helm.release.v1.web.v1"; got != want {
		t.Errorf("name %q, want %q", got, want)
	}
	if got, want := string(sec.Type), "helm.sh/release.v1"; got != want {
		t.Errorf("type %q, want %q", got, want)
	}
	for k, want := range map[string]string{"name": "web", "owner": "helm", "status": "deployed", "version": "1", "createdAt": "1", labelHelmDigest: "abc"} {
		if got := sec.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}

	secrets := fake.NewClientset(sec).CoreV1().Secrets("apps")
	helms := driver.NewSecrets(secrets)
	got, err := helms.Get(sec.Name)
	if err != nil {
		t.Fatalf("helm's driver reading the agent's Secret: %v", err)
	}
	if got.Name != rel.Name || got.Version != 1 || got.Info.Status != release.StatusDeployed || got.Manifest != rel.Manifest ||
		got.Chart.Metadata.Version != "1.2.3" || got.Config["replicas"] != float64(2) || got.Labels[labelHelmDigest] != "abc" {
		t.Errorf("helm's driver read %+v", got)
	}

	// Helm's driver writes, the agent reads.
	if err := helms.Create("sh.helm.release.v1.web.v2", testRelease(2, release.StatusPendingUpgrade)); err != nil {
		t.Fatal(err)
	}
	s2, err := secrets.Get(t.Context(), "sh.helm.release.v1.web.v2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	back, err := decodeRelease(string(s2.Data[releaseDataKey]))
	if err != nil {
		t.Fatalf("decoding a release Helm stored: %v", err)
	}
	if back.Version != 2 || back.Info.Status != release.StatusPendingUpgrade || back.Manifest != rel.Manifest {
		t.Errorf("decoded %+v", back)
	}
	if got := customLabels(s2.Labels); len(got) != 2 || got[labelHelmDigest] != "abc" {
		t.Errorf("custom labels of a Secret Helm wrote: %v, want the digest and revision only", got)
	}
}

func TestLastDeployed(t *testing.T) {
	tests := []struct {
		name string
		hist []revision
		want int // 0: none
	}{
		{"empty", nil, 0},
		{"one", []revision{{Version: 1, Status: release.StatusDeployed}}, 1},
		{"latest failed", []revision{{Version: 1, Status: release.StatusSuperseded}, {Version: 2, Status: release.StatusDeployed}, {Version: 3, Status: release.StatusFailed}}, 2},
		{"none deployed", []revision{{Version: 1, Status: release.StatusFailed}}, 0},
	}
	for _, tt := range tests {
		got := 0
		if r := lastDeployed(tt.hist); r != nil {
			got = r.Version
		}
		if got != tt.want {
			t.Errorf("%s: lastDeployed = %d, want %d", tt.name, got, tt.want)
		}
	}
}
