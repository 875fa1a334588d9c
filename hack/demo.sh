#!/usr/bin/env bash
# The everyday way to see Flotilla work: starts the server on its embedded SQLite store
# (./flotilla-data), simulates a fleet of clusters registering with it, and delivers a sample
# bundle to them. Ctrl-C stops everything; the data directory stays for the next run.
#
#   make run                  # or: hack/demo.sh
#   DEMO_CLUSTERS=2000 make run
set -euo pipefail
cd "$(dirname "$0")/.."

clusters=${DEMO_CLUSTERS:-500}
data=${FLOTILLA_DATA_DIR:-./flotilla-data}
listen=${FLOTILLA_LISTEN:-127.0.0.1:8443}
mkdir -p bin "$data"
go build -o bin/flotilla ./cmd/flotilla

# The admin token is kept in the data directory so the next run reuses it.
if [ ! -s "$data/demo-admin-token" ]; then
	(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | sed 's/^/flt_/' >"$data/demo-admin-token")
fi
token=$(cat "$data/demo-admin-token")

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM # exiting runs cleanup

bin/flotilla server --data-dir "$data" --listen "$listen" --bootstrap-token "$token" \
	--agent-poll-interval 5s >"$data/server.out" 2>"$data/server.log" &
pids+=($!)
for _ in $(seq 1 100); do
	grep -q 'CA checksum' "$data/server.out" 2>/dev/null && break
	sleep 0.1
done
checksum=$(sed -n 's/^CA checksum (sha256): //p' "$data/server.out")
[ -n "$checksum" ] || { echo "the server did not start; see $data/server.log" >&2; exit 1; }

export FLOTILLA_CONFIG="$data/demo-cli.json" FLOTILLA_SERVER="https://$listen"
for _ in $(seq 1 100); do
	bin/flotilla login --server "https://$listen" --token "$token" --ca-checksum "$checksum" >/dev/null 2>&1 && break
	sleep 0.2
done
bin/flotilla apply -f docs/examples/fleet.yaml

# The dashboard's login: a local user "admin" bound to the admin role, whose password is kept
# in the data directory like the token (made on the first run).
if [ ! -s "$data/demo-admin-password" ]; then
	(umask 077 && head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$data/demo-admin-password")
fi
password=$(cat "$data/demo-admin-password")
if ! bin/flotilla get users admin >/dev/null 2>&1; then
	echo "$password" | bin/flotilla user create admin --password-stdin >/dev/null
	bin/flotilla rolebinding create demo-admin --role admin --user admin --global >/dev/null
fi

# The simulator's progress goes to a log file and one status line every 30 s, so that the
# instructions stay on screen (and in CI logs); they are printed again every 5 minutes.
instructions() {
	cat <<MSG

Flotilla is serving on https://$listen (log: $data/server.log).
Dashboard: https://$listen/ — log in as admin with password $password
(kept in $data/demo-admin-password; the certificate is the server's own CA, $data/tls/ca.crt).
$clusters simulated clusters are registering (log: $data/sim.log); the bundle "hello" goes to
the production ones. Ctrl-C stops everything. In another shell:

  export FLOTILLA_CONFIG=$data/demo-cli.json
  bin/flotilla get clusters -l env=prod -o wide
  bin/flotilla get bundles -w                               # watch rollups change
  bin/flotilla render docs/examples/repo -l env=prod        # what a prod cluster gets from a repository

A user who may see the production clusters only (docs/access.md):

  echo 'a long demo passphrase' | bin/flotilla user create alice --password-stdin
  bin/flotilla rolebinding create alice-prod --role cluster-member --user alice --cluster-selector env=prod
  echo 'a long demo passphrase' | bin/flotilla login --config alice.json --server https://$listen \
      --ca-file $data/tls/ca.crt --username alice --password-stdin
  bin/flotilla get clusters --config alice.json

MSG
}

bin/flotilla sim --server "https://$listen" --ca-checksum "$checksum" --admin-token "$token" \
	--clusters "$clusters" --labels 'env=prod:60,dev:40;region=eu,us,ap' --baseline 0 \
	--duration 8760h >"$data/sim.log" 2>&1 &
sim=$!
pids+=($sim)
instructions
ticks=0
while kill -0 "$sim" 2>/dev/null; do
	sleep 30 &
	wait $! || true
	kill -0 "$sim" 2>/dev/null || break
	ticks=$((ticks + 1))
	if [ $((ticks % 10)) -eq 0 ]; then
		instructions
	fi
	echo "$(date +%H:%M:%S) simulator: $(tail -n 1 "$data/sim.log" 2>/dev/null | cut -c1-160)"
done
wait "$sim" || { echo "the simulator stopped; see $data/sim.log" >&2; exit 1; }
