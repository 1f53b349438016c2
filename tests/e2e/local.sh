#!/usr/bin/env bash
# Runs the end-to-end scenarios with tokengate as a local process, against the cluster of the
# current KUBECONFIG (typically a bare kube-apiserver with etcd and no nodes, on this machine):
#
#   tests/e2e/local.sh              install, start tokengate, test, stop, uninstall the webhooks
#   tests/e2e/local.sh --dry-run    print every command instead of running it
#
# Makes development certificates (certs/generate.sh), creates the policy ConfigMap once as the
# install of docs/install.md does (kubectl create -k manifests/policy; an existing one is left alone),
# applies manifests/overlays/local (the namespace, RBAC and the webhook configurations, which
# point at https://127.0.0.1:8443), builds tokengate (cargo build --release --locked), starts
#   tokengate serve --policy-configmap tokengate-system/tokengate-policy ...
#     --listen 127.0.0.1:8443 --admin-listen 127.0.0.1:8080
# in the background with the same KUBECONFIG, waits for http://127.0.0.1:8080/readyz and for the
# webhooks to answer, and runs MODE=local tests/e2e/scenarios.sh. At the end it deletes the
# webhook configurations and stops tokengate. The API server must reach 127.0.0.1:8443, so it has
# to run on this machine (in its network namespace). Needs kubectl, and cargo unless
# TOKENGATE_BIN names a built binary.
#
# Environment:
#   TOKENGATE_BIN        the tokengate binary to run (default: build target/release/tokengate)
#   TOKENGATE_LOG_FILE   where tokengate's log goes (default: a temporary file, shown on failure)
#   NODE_CERT, NODE_KEY, NODE_NAME, E2E_IMAGE, ...   pass through to scenarios.sh
set -euo pipefail

# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
parse_runner_args "$@"

# Paths given relative to the caller's directory, before moving to the repository root.
for var in TOKENGATE_BIN TOKENGATE_LOG_FILE NODE_CERT NODE_KEY; do
  if [[ -n ${!var:-} && ${!var} != /* ]]; then
    printf -v "$var" '%s/%s' "$PWD" "${!var}"
    export "${var?}"
  fi
done

cd "$(dirname "$0")/../.."

readonly SYSTEM_NAMESPACE=tokengate-system
readonly LISTEN=127.0.0.1:8443
readonly ADMIN=127.0.0.1:8080



if ((dry_run)); then
  work=${TMPDIR:-/tmp}/tokengate-e2e-local.XXXXXX
else
  command -v kubectl >/dev/null || { echo "local.sh needs kubectl on PATH" >&2; exit 2; }
  work=$(mktemp -d)
fi
log=${TOKENGATE_LOG_FILE:-$work/tokengate.log}

# readyz: 0 when tokengate's admin port answers 200 on /readyz.
readyz() {
  if command -v curl >/dev/null; then
    curl -fsS -o /dev/null --max-time 2 "http://$ADMIN/readyz" 2>/dev/null
  else
    # bash's /dev/tcp, for machines without curl.
    local reply
    { exec 3<>"/dev/tcp/${ADMIN%:*}/${ADMIN#*:}"; } 2>/dev/null || return 1
    printf 'GET /readyz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$ADMIN" >&3
    read -r -t 2 reply <&3 || reply=
    exec 3<&-
    [[ $reply == "HTTP/1."[01]" 200"* ]]
  fi
}

pid=
installed=0
finish() {
  local status=$?
  trap - EXIT
  if ((installed)); then
    say "deleting the webhook configurations"
    run kubectl delete mutatingwebhookconfiguration tokengate --ignore-not-found || true
    run kubectl delete validatingwebhookconfiguration tokengate --ignore-not-found || true
  fi
  if [[ -n $pid ]]; then
    say "stopping tokengate (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # Drain delay (5 s) plus in-flight requests; then give up waiting.
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "tokengate did not exit after SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  fi
  if ((status != 0)) && [[ -s $log ]]; then
    say "tokengate's log (last 100 lines of $log)"
    tail -n 100 "$log" || true
  fi
  if ((!dry_run)) && [[ -z ${TOKENGATE_LOG_FILE:-} ]]; then rm -rf "$work"; fi
  exit "$status"
}
trap finish EXIT

say "installing the policy (manifests/policy) and the webhook configurations (manifests/overlays/local)"
run certs/generate.sh
create_policy "$SYSTEM_NAMESPACE"
installed=1
run kubectl apply -k manifests/overlays/local

bin=${TOKENGATE_BIN:-target/release/tokengate}
if [[ -z ${TOKENGATE_BIN:-} ]]; then
  if ((dry_run)) || command -v cargo >/dev/null; then
    say "building tokengate"
    run cargo build --release --locked
  elif [[ ! -x $bin ]]; then
    echo "no cargo to build $bin; set TOKENGATE_BIN to a tokengate binary" >&2
    exit 2
  fi
fi

say "starting tokengate on $LISTEN (admin $ADMIN), log: $log"
# --manage-webhooks: the match conditions follow the policy the scenarios install, as in a cluster.
serve=("$bin" serve --policy-configmap "$SYSTEM_NAMESPACE/tokengate-policy"
  --tls-cert certs/out/tls.crt --tls-key certs/out/tls.key --listen "$LISTEN" --admin-listen "$ADMIN"
  --manage-webhooks --webhook-url "https://$LISTEN" --webhook-ca-bundle certs/out/ca.crt)
if ((dry_run)); then
  run "${serve[@]}"
  echo "# (in the background, output to $log)"
  run curl -fsS "http://$ADMIN/readyz"
  echo "# (repeated until it answers 200, for up to 60 s)"
else
  if readyz; then
    echo "something already answers on http://$ADMIN/readyz; stop it first" >&2
    exit 1
  fi
  "${serve[@]}" > "$log" 2>&1 &
  pid=$!
  deadline=$((SECONDS + 60))
  until readyz; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "tokengate exited before it was ready" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "tokengate is not ready after 60 s" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "tokengate is ready"
fi

say "waiting for the webhooks to answer"
# A dry-run CSIDriver no policy allows; it needs no namespace or service account, which a bare
# API server (no controller manager) would not create.
run tests/e2e/scenarios.sh --render "$work/objects"
wait_for_tokengate "$work/objects/denied/csidriver-probe.yaml" 60 "at https://$LISTEN"

say "running the scenarios"
run env MODE=local tests/e2e/scenarios.sh
