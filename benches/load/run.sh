#!/usr/bin/env bash
# Load benchmark: the release tokengate server against a plain tokio/hyper/rustls floor that
# answers `allowed: true` with no policy work, measured side by side in one run with oha.
# A second floor also reads request.uid from the body and echoes it, as a correct answer must.
# Server on core 0, load generator on core 1. Prints a table and writes results/*.json.
#
#   benches/load/run.sh                 # 20 s per run, 16 connections
#   DURATION=10s CONNS=32 benches/load/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-20s}
CONNS=${CONNS:-16}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BODY=tests/fixtures/pod-create-review.json
OUT=benches/load/results
mkdir -p "$OUT"

command -v oha >/dev/null || cargo install oha --locked
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
cargo build --release --bin tokengate --example floor-server

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A throw-away CA and a serving certificate for the service name and 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj "/CN=tokengate-bench-ca" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=tokengate" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:tokengate.tokengate-system.svc,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 1 -extfile "$work/ext" -out "$work/tls.crt" 2>/dev/null

taskset -c "$SERVER_CPU" target/release/tokengate serve --policy examples/policy.yaml \
  --objects tests/fixtures/objects.yaml \
  --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" \
  --listen 127.0.0.1:18443 --admin-listen 127.0.0.1:18080 --log warn &
pids+=($!)
tokengate_pid=$!
taskset -c "$SERVER_CPU" target/release/examples/floor-server "$work/tls.crt" "$work/tls.key" 127.0.0.1:19443 &
pids+=($!)
floor_pid=$!
taskset -c "$SERVER_CPU" target/release/examples/floor-server --echo-uid "$work/tls.crt" "$work/tls.key" 127.0.0.1:19444 &
pids+=($!)
echo_pid=$!

for _ in $(seq 50); do
  curl -sf http://127.0.0.1:18080/readyz >/dev/null && break
  sleep 0.1
done
curl -sf http://127.0.0.1:18080/readyz >/dev/null || { echo "tokengate did not become ready" >&2; exit 1; }

rss_kib() { ps -o rss= -p "$1" | tr -d ' '; }

# run NAME PORT PID [oha flags...]: one oha run, with the server's peak RSS sampled alongside.
run() {
  local name=$1 port=$2 pid=$3
  shift 3
  local peak=0
  ( while kill -0 "$pid" 2>/dev/null; do rss_kib "$pid"; sleep 0.5; done ) > "$work/$name.rss" &
  local sampler=$!
  taskset -c "$LOAD_CPU" oha --no-tui -z "$DURATION" -c "$CONNS" -m POST -T application/json \
    -D "$BODY" --cacert "$work/ca.pem" --output-format json "$@" \
    "https://127.0.0.1:$port/validate?timeout=10s" > "$OUT/$name.json"
  kill "$sampler" 2>/dev/null || true
  peak=$(sort -n "$work/$name.rss" | tail -1)
  echo "$peak" > "$OUT/$name.rss_kib"
}

echo "idle RSS: tokengate $(rss_kib "$tokengate_pid") KiB, floor $(rss_kib "$floor_pid") KiB"
run floor-keepalive 19443 "$floor_pid"
run floor-echo-uid-keepalive 19444 "$echo_pid"
run tokengate-keepalive 18443 "$tokengate_pid"
run floor-churn 19443 "$floor_pid" --disable-keepalive
run tokengate-churn 18443 "$tokengate_pid" --disable-keepalive

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def load(name):
    data = json.loads((out / f"{name}.json").read_text())
    summary, pct = data["summary"], data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    # Requests still in flight when the run's time is up are cut off by oha, not failed.
    errors = {k: v for k, v in data.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
    bad = sum(v for k, v in codes.items() if k != "200") + sum(errors.values())
    rss = int((out / f"{name}.rss_kib").read_text().strip() or 0)
    return summary["requestsPerSec"], pct["p50"] * 1e3, pct["p99"] * 1e3, pct["p99.9"] * 1e3, ok, bad, rss
print(f"{'run':26} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'ok':>8} {'failed':>7} {'peak RSS MiB':>12}")
rows = {}
for name in ["floor-keepalive", "floor-echo-uid-keepalive", "tokengate-keepalive", "floor-churn", "tokengate-churn"]:
    rows[name] = load(name)
    rps, p50, p99, p999, ok, bad, rss = rows[name]
    print(f"{name:26} {rps:10.0f} {p50:8.3f} {p99:8.3f} {p999:9.3f} {ok:8d} {bad:7d} {rss / 1024:12.1f}")
for mode in ["keepalive", "churn"]:
    ratio = rows[f"tokengate-{mode}"][0] / rows[f"floor-{mode}"][0]
    print(f"tokengate / floor throughput ({mode}): {ratio:.1%}")
ratio = rows["tokengate-keepalive"][0] / rows["floor-echo-uid-keepalive"][0]
print(f"tokengate / uid-echoing floor throughput (keepalive): {ratio:.1%}")
PY
