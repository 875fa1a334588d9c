package e2e_test

import (
	"path/filepath"
	"testing"

	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/kube"
)

// kubectl explain prints the descriptions written as doc comments on package api's types,
// for top-level and nested fields, in Flotilla's group and in Fleet's.
func TestKubectlExplain(t *testing.T) {
	kubectl := filepath.Join(kube.Binaries(t), "kubectl")
	srv := e2e.StartServer(t, e2e.ServerOptions{})
	home := t.TempDir()
	kubeconfig := filepath.Join(home, "kubeconfig")
	mustRun(t, srv.CLI(t), "", "kubeconfig", "-o", kubeconfig)
	k := &kubectlT{t: t, bin: kubectl, home: home, env: []string{"KUBECONFIG=" + kubeconfig, "HOME=" + home}}

	contains(t, "explain gitrepos.spec", k.must("", "explain", "gitrepos.spec"),
		"GitRepoSpec is a git repository to deliver from", "repo\t<string>", "Repo is the git repository's URL")
	contains(t, "explain gitrepos.spec.repo", k.must("", "explain", "gitrepos.spec.repo"),
		"FIELD: repo <string>", "Repo is the git repository's URL: https://, http://, ssh:// or scp-like")
	contains(t, "explain in Fleet's group", k.must("", "explain", "gitrepos.spec.pollingInterval", "--api-version", "fleet.cattle.io/v1alpha1"),
		"PollingInterval is how often the repository is fetched")
	contains(t, "explain a nested field", k.must("", "explain", "bundles.spec.targets.clusterSelector.matchExpressions.operator"),
		"Operator is In, NotIn, Exists or DoesNotExist.")
	contains(t, "explain a status field", k.must("", "explain", "clusters.status.inventory"),
		"Inventory is what the agent last reported about the cluster.", "nodeCount", "NodeCount is the number of nodes.")
	contains(t, "explain metadata", k.must("", "explain", "clustergroups.metadata.resourceVersion"),
		"ResourceVersion changes on every write")
}
