#!/usr/bin/env bash
# Builds the real helm CLI that Flotilla's tests compare the agent's Helm
# releases with, from the Go module proxy (no prebuilt binaries can be
# downloaded on our machines).
#
# The binary goes to a cache directory outside the repository,
# ${FLOTILLA_HELM_BIN:-$HOME/.cache/flotilla/helm-v4.3.1}; it is built only
# when missing, so a warm run takes a second. Progress goes to stderr; the last
# line of stdout is the directory, so callers can do
#   export FLOTILLA_HELM_BIN=$(hack/helm-binary.sh)
set -euo pipefail

cd "$(dirname "$0")/.."
# The version go.mod requires: the CLI is built from the module's own dependency graph (a
# `tool` in go.mod), so it shares the build cache with Flotilla's own builds and takes seconds
# once they have run, where building it on its own took half an hour on 2 cores.
HELM_VERSION=$(go list -m -f '{{.Version}}' helm.sh/helm/v4)

bin_dir=${FLOTILLA_HELM_BIN:-${HOME:?set HOME or FLOTILLA_HELM_BIN}/.cache/flotilla/helm-$HELM_VERSION}

log() { echo "helm-binary: $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "$bin_dir" || die "cannot create $bin_dir"

# Two test runs starting at once must not both build it.
if command -v flock >/dev/null; then
	exec 9>"$bin_dir/.lock"
	flock 9
fi

if [[ ! -x "$bin_dir/helm" ]]; then
	log "building helm $HELM_VERSION into $bin_dir ..."
	start=$SECONDS
	# Build into a temporary directory and rename, so an interrupted build
	# never leaves a truncated binary that a later run would take as done.
	tmp=$(mktemp -d "$bin_dir/.build.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	if ! go build -o "$tmp/helm" -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" helm.sh/helm/v4/cmd/helm; then
		die "building helm failed (see the go output above)"
	fi
	mv -f "$tmp/helm" "$bin_dir/helm"
	log "built helm in $((SECONDS - start))s"
fi

out=$("$bin_dir/helm" version --short 2>&1) || die "$bin_dir/helm version failed: $out"
[[ "$out" == *"$HELM_VERSION"* ]] || die "$bin_dir/helm reports '$out', want $HELM_VERSION; delete it and rerun"

echo "$bin_dir"
