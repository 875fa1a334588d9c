#!/usr/bin/env bash
# Runs every Go fuzz target (func FuzzXxx in a _test.go file) of the module beyond its seed
# corpus for FLOTILLA_FUZZTIME each (default 3s; FLOTILLA_FUZZTIME=10m for a long run).
# Targets are found, not listed: a new FuzzXxx anywhere is run with no change here.
#
# A failing input is written by Go to the package's testdata/fuzz/FuzzXxx/ directory, where
# it becomes part of the seed corpus that `go test` runs every time; the script prints its
# path and the command that re-runs it. Exit status is non-zero if any target failed.
#
# Usage: hack/fuzz.sh [package patterns...]   (default ./...)
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
fuzztime=${FLOTILLA_FUZZTIME:-3s}
# Several runs may share the machine (and Go's fuzz cache, which is safe for that): keep
# this run's logs to itself.
logs=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-fuzz.XXXXXX")
trap 'rm -rf "$logs"' EXIT

[ $# -gt 0 ] || set -- ./...

# Packages with a test file that declares a fuzz target; `go test -list` is then the
# authority on which targets each has (it skips files other build tags exclude).
pkgs=()
while read -r pkg dir files; do
	for f in $files; do
		if grep -qE '^func Fuzz[A-Z0-9_a-z]*\(' "$dir/$f"; then
			pkgs+=("$pkg")
			break
		fi
	done
done < <($GO list -f '{{.ImportPath}} {{.Dir}} {{join .TestGoFiles " "}} {{join .XTestGoFiles " "}}' "$@")

targets=()
for pkg in ${pkgs[@]+"${pkgs[@]}"}; do
	if ! $GO test -list '^Fuzz' "$pkg" >"$logs/list" 2>&1; then
		cat "$logs/list" >&2
		echo "fuzz: listing the fuzz targets of $pkg failed" >&2
		exit 1
	fi
	while read -r name; do
		targets+=("$pkg $name")
	done < <(grep -E '^Fuzz' "$logs/list" || true)
done

if [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz: no fuzz targets found"
	exit 0
fi

failed=()
start=$SECONDS
for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	log="$logs/$(echo "$pkg.$name" | tr '/' '_').log"
	t0=$SECONDS
	if $GO test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg" >"$log" 2>&1; then
		echo "fuzz: ok   $pkg $name ($((SECONDS - t0))s)"
		continue
	fi
	# Go's fuzzing engine sometimes ends a run with an error and no failing input (e.g.
	# "context deadline exceeded" when the time is up while a worker is busy): that says nothing
	# about the target, whose failures always leave an input, so such a run is tried once more.
	if ! grep -q 'Failing input written' "$log" &&
		$GO test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg" >"$log" 2>&1; then
		echo "fuzz: ok   $pkg $name ($((SECONDS - t0))s, second run: the first ended with no failing input)"
		continue
	fi
	failed+=("$pkg $name")
	echo "fuzz: FAIL $pkg $name ($((SECONDS - t0))s)"
	sed 's/^/    /' "$log"
	dir=$($GO list -f '{{.Dir}}' "$pkg")
	{ grep -oE 'testdata/fuzz/[^ ]+' "$log" || true; } | sort -u | while read -r rel; do
		echo "    failing input: $dir/$rel"
		echo "    re-run it:     go test -run='^${name}/$(basename "$rel")\$' $pkg"
	done
done

echo "fuzz: ${#targets[@]} targets, ${fuzztime} each, ${#failed[@]} failed, $((SECONDS - start))s"
if [ ${#failed[@]} -gt 0 ]; then
	printf 'fuzz: failed: %s\n' "${failed[@]}" >&2
	exit 1
fi
