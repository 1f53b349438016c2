#!/usr/bin/env bash
# Attack benchmark: the release tokengate server against hostile clients on loopback, printing
# what a reviewer needs to judge the server's limits.
#
# 1. Slow requests: SLOW (520) TLS connections each declare a 1 000 000-byte body, send one byte
#    of it and then nothing, while a well-behaved client sends REVIEWS (100) reviews one after
#    another with a 1 s timeout each. Every review must be answered 200; the slow requests are
#    closed once --read-timeout (5 s) has passed since their first byte.
# 2. Large bodies: for each shape, ROUNDS (3) rounds of CONCURRENCY (48) concurrent bodies just
#    under the 7 MiB limit, each shape against a fresh server; prints the server's idle RSS and
#    peak (VmHWM) from /proc/<pid>/status, to hold against the ceiling in docs/performance.md.
#
#   benches/attack/run.sh
#   SLOW=1000 CONCURRENCY=96 SHAPES="sources violations" benches/attack/run.sh
#   TOKENGATE=/path/to/an/older/tokengate benches/attack/run.sh     # the same attacks on another build
set -euo pipefail
cd "$(dirname "$0")/../.."

SLOW=${SLOW:-520}
REVIEWS=${REVIEWS:-100}
CONCURRENCY=${CONCURRENCY:-48}
ROUNDS=${ROUNDS:-3}
SHAPES=${SHAPES:-annotation labels sources violations}
SERVER_FLAGS=${SERVER_FLAGS:-}
REVIEW=tests/fixtures/reviews/pod-captured-1.21.json
TOKENGATE=${TOKENGATE:-target/release/tokengate}

cargo build --release --bin tokengate --example attack-client
client=target/release/examples/attack-client

work=$(mktemp -d)
server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  server_pid=
}
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT

# A throw-away CA and a serving certificate for the service name and 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj "/CN=tokengate-attack-ca" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=tokengate" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:tokengate.tokengate-system.svc,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 1 -extfile "$work/ext" -out "$work/tls.crt" 2>/dev/null

start_server() {
  # shellcheck disable=SC2086
  "$TOKENGATE" serve --policy tests/fixtures/policy.yaml --objects tests/fixtures/objects.yaml \
    --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" \
    --listen 127.0.0.1:18443 --admin-listen 127.0.0.1:18080 --log error $SERVER_FLAGS &
  server_pid=$!
  for _ in $(seq 100); do
    curl -sf http://127.0.0.1:18080/readyz >/dev/null && break
    sleep 0.1
  done
  curl -sf http://127.0.0.1:18080/readyz >/dev/null || { echo "tokengate did not become ready" >&2; exit 1; }
  # One ordinary review first, so the idle figure includes a warmed-up server.
  "$client" --ca "$work/ca.pem" --review "$REVIEW" slow --connections 0 --reviews 1 >/dev/null
}

rejections() { curl -sf http://127.0.0.1:18080/metrics | grep '^tokengate_http_rejections_total' || true; }

echo "== slow requests"
start_server
"$client" --ca "$work/ca.pem" --review "$REVIEW" slow --connections "$SLOW" --reviews "$REVIEWS" --pid "$server_pid"
rejections
stop_server

for shape in $SHAPES; do
  echo "== large bodies: $shape"
  start_server
  "$client" --ca "$work/ca.pem" --review "$REVIEW" large --shape "$shape" \
    --concurrency "$CONCURRENCY" --rounds "$ROUNDS" --pid "$server_pid"
  rejections
  stop_server
done
