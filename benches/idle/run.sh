#!/usr/bin/env bash
# Idle memory of the tokengate server: started with the test policy and objects
# (tests/fixtures/), one ordinary review answered (so the figure is a warmed-up server), then
# VmRSS, RssAnon and RssFile (the mapped binary and libraries) from /proc/<pid>/status. RUNS (3)
# fresh starts; prints each and the median VmRSS. Two runtime threads (TOKIO_WORKER_THREADS=2),
# as on a two-CPU node.
#
#   benches/idle/run.sh                                           # the release build
#   TOKENGATE=target/memtest/memtest/tokengate benches/idle/run.sh   # another build, not rebuilt
#   RUNS=5 benches/idle/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-3}
export TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-2}
REVIEW=tests/fixtures/reviews/pod-captured-1.21.json
if [[ -z ${TOKENGATE:-} ]]; then
  cargo build --release --locked --bin tokengate
  TOKENGATE=target/release/tokengate
fi
command -v curl >/dev/null || { echo "curl is required" >&2; exit 1; }

work=$(mktemp -d)
server_pid=
stop_server() {
  if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  server_pid=
}
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT

# A throw-away CA and a serving certificate for the service name.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj "/CN=tokengate-idle-ca" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=tokengate" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:tokengate.tokengate-system.svc\nextendedKeyUsage=serverAuth\n' > "$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 1 -extfile "$work/ext" -out "$work/tls.crt" 2>/dev/null

# field PID NAME: a /proc/PID/status figure in MiB.
field() {
  awk -v name="$2:" '$1 == name { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

rss=()
for run in $(seq "$RUNS"); do
  "$TOKENGATE" serve --policy tests/fixtures/policy.yaml --objects tests/fixtures/objects.yaml \
    --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" \
    --listen 127.0.0.1:18444 --admin-listen 127.0.0.1:18081 --log error &
  server_pid=$!
  for _ in $(seq 100); do
    curl -sf http://127.0.0.1:18081/readyz >/dev/null && break
    sleep 0.1
  done
  curl -sf http://127.0.0.1:18081/readyz >/dev/null || { echo "tokengate did not become ready" >&2; exit 1; }
  curl -sf --cacert "$work/ca.pem" --resolve tokengate.tokengate-system.svc:18444:127.0.0.1 \
    -H 'Content-Type: application/json' --data-binary "@$REVIEW" \
    https://tokengate.tokengate-system.svc:18444/validate | grep -q '"allowed":true' ||
    { echo "the warm-up review was not allowed" >&2; exit 1; }
  sleep 1
  rss+=("$(field "$server_pid" VmRSS)")
  echo "run $run: VmRSS ${rss[-1]} MiB (RssAnon $(field "$server_pid" RssAnon), RssFile $(field "$server_pid" RssFile), peak VmHWM $(field "$server_pid" VmHWM))"
  stop_server
done
median=$(printf '%s\n' "${rss[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
echo "idle RSS $median MiB (median of $RUNS runs, $TOKENGATE, TOKIO_WORKER_THREADS=$TOKIO_WORKER_THREADS)"
