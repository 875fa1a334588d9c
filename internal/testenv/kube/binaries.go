// Package kube owns the real Kubernetes control planes that Flotilla's tests
// run against: etcd, kube-apiserver and, on request, kube-controller-manager,
// started as local processes on loopback addresses and stopped when the test
// ends. Several API servers can share one etcd, each under its own key
// prefix, so a test can have a fleet of clusters for about 300 MB each.
//
// Behind an API server a test can put a Kubelet (a test endpoint serving the kubelet's
// exec, attach, port-forward and log endpoints with the kubelet's own streaming code, for
// Go functions standing in for containers) and an Egress proxy (the API server's route to
// the cluster network, mapping made-up pod addresses to servers on loopback), so that
// kubectl exec, port-forward, logs and the service proxy run against a real API server.
//
// The binaries are not downloaded: hack/k8s-binaries.sh builds them from the
// Go module proxy into a cache outside the repository. Tests that need them
// skip when they are missing, except in CI (CI=true), where they fail.
//
// Only tests may import this package.
package kube

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Version is the Kubernetes version that hack/k8s-binaries.sh builds.
const Version = "v1.37.2"

// BinEnv names the environment variable that overrides the directory holding
// the binaries; hack/k8s-binaries.sh honours it too.
const BinEnv = "FLOTILLA_K8S_BIN"

// binaryNames are the executables Binaries requires.
var binaryNames = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubectl"}

// BinDir returns the directory where hack/k8s-binaries.sh puts the binaries:
// $FLOTILLA_K8S_BIN, or a versioned folder in the user's cache.
func BinDir() (string, error) {
	if dir := os.Getenv(BinEnv); dir != "" {
		return dir, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("locating the Kubernetes binaries: %w (set %s)", err, BinEnv)
	}
	return filepath.Join(home, ".cache", "flotilla", "k8s-"+Version), nil
}

// Binaries returns the directory holding etcd, kube-apiserver,
// kube-controller-manager and kubectl. When any is missing it skips the test,
// or fails it under CI=true so that CI cannot pass by skipping everything.
func Binaries(t testing.TB) string {
	t.Helper()
	dir, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, name := range binaryNames {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return dir
	}
	msg := fmt.Sprintf("Kubernetes %s binaries %v missing from %s: build them with hack/k8s-binaries.sh "+
		"(about 10 minutes the first time; set %s to use another directory)", Version, missing, dir, BinEnv)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}
