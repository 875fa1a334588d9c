#!/usr/bin/env bash
# Builds the Kubernetes control-plane binaries that Flotilla's tests run
# (kube-apiserver, etcd, kube-controller-manager, kubectl) from the tools
# module in hack/k8s, through the Go module proxy: no prebuilt binaries can be
# downloaded on our machines.
#
# The binaries go to a cache directory outside the repository,
# ${FLOTILLA_K8S_BIN:-$HOME/.cache/flotilla/k8s-v1.37.2}; only missing ones are
# built, so a warm run takes a second. Progress goes to stderr; the last line
# of stdout is the directory, so callers can do
#   export FLOTILLA_K8S_BIN=$(hack/k8s-binaries.sh)
#
# Cold, on 2 cores, this takes about 10 minutes and peaks near 2.9 GB of RAM,
# which is why the binaries are built one at a time.
set -euo pipefail

K8S_VERSION=v1.37.2
K8S_MINOR=37

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod_dir="$repo_root/hack/k8s"
bin_dir=${FLOTILLA_K8S_BIN:-${HOME:?set HOME or FLOTILLA_K8S_BIN}/.cache/flotilla/k8s-$K8S_VERSION}

# Without these the servers report v0.0.0-master, which clients such as helm
# reject in version checks.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$K8S_MINOR"

# name=package; etcd's main package is the module root, whose binary go would
# name "server".
binaries=(
	"kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver"
	"etcd=go.etcd.io/etcd/server/v3"
	"kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager"
	"kubectl=k8s.io/kubernetes/cmd/kubectl"
)

log() { echo "k8s-binaries: $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "$bin_dir" || die "cannot create $bin_dir"

# Two test runs starting at once must not both spend 10 minutes building.
if command -v flock >/dev/null; then
	exec 9>"$bin_dir/.lock"
	flock 9
fi

for entry in "${binaries[@]}"; do
	name=${entry%%=*}
	pkg=${entry#*=}
	if [[ -x "$bin_dir/$name" ]]; then
		continue
	fi
	log "building $name ($pkg) into $bin_dir ..."
	start=$SECONDS
	# Build to a temporary name and rename, so an interrupted build never
	# leaves a truncated binary that a later run would take as done.
	tmp="$bin_dir/.$name.tmp"
	rm -f "$tmp"
	if ! go build -C "$mod_dir" -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg"; then
		rm -f "$tmp"
		die "building $name from $mod_dir failed (see the go output above)"
	fi
	mv -f "$tmp" "$bin_dir/$name"
	log "built $name in $((SECONDS - start))s"
done

# A cheap check that each binary runs and has the expected version stamped.
check() {
	local name=$1 want=$2
	shift 2
	local out
	out=$("$bin_dir/$name" "$@" 2>&1) || die "$bin_dir/$name $* failed: $out"
	[[ "$out" == *"$want"* ]] || die "$bin_dir/$name reports '$out', want $want; delete it and rerun"
}
check kube-apiserver "$K8S_VERSION" --version
check kube-controller-manager "$K8S_VERSION" --version
check kubectl "$K8S_VERSION" version --client
check etcd "etcd Version" --version

echo "$bin_dir"
