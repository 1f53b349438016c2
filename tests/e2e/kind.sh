#!/usr/bin/env bash
# Runs the end-to-end scenarios in a throw-away kind cluster:
#
#   tests/e2e/kind.sh              build, install, test, delete the cluster
#   tests/e2e/kind.sh --dry-run    print every command instead of running it
#
# Creates the kind cluster tokengate-e2e (tests/e2e/kind-config.yaml: one control plane, two
# workers), builds the image tokengate:dev from the Dockerfile at the repository root and loads
# it into the nodes, makes development certificates (certs/generate.sh), installs
# manifests/overlays/dev, waits for the Deployment and for the webhooks to answer, then runs
# MODE=cluster tests/e2e/scenarios.sh with a worker's kubelet certificate for the node scenario.
# Needs docker, kind and kubectl.
#
# Environment:
#   KEEP_CLUSTER=1    keep the cluster afterwards (an existing cluster of that name is reused)
#   KIND_NODE_IMAGE   node image for kind create cluster --image (default: kind's own)
#   KIND_KUBECONFIG   where the cluster's kubeconfig is written
#                     (default: ${TMPDIR:-/tmp}/tokengate-e2e.kubeconfig); the current
#                     KUBECONFIG is never touched
# Other variables (E2E_IMAGE, TRAFFIC_SECONDS, ...) pass through to scenarios.sh.
set -euo pipefail

# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
parse_runner_args "$@"

cd "$(dirname "$0")/../.."

readonly CLUSTER=tokengate-e2e
readonly IMAGE=tokengate:dev
readonly SYSTEM_NAMESPACE=tokengate-system
readonly NODE=$CLUSTER-worker
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
export KUBECONFIG=${KIND_KUBECONFIG:-${TMPDIR:-/tmp}/tokengate-e2e.kubeconfig}

# run COMMAND...: runs it, or with --dry-run prints it.

# run_to FILE COMMAND...: the same, with standard output into FILE.


if ((dry_run)); then
  work=${TMPDIR:-/tmp}/tokengate-e2e.XXXXXX
else
  for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { echo "kind.sh needs $tool on PATH" >&2; exit 2; }
  done
  work=$(mktemp -d)
fi

cluster_created=0
finish() {
  local status=$?
  trap - EXIT
  if ((status != 0 && cluster_created && !dry_run)); then
    say "diagnostics"
    kubectl get nodes -o wide || true
    kubectl get pods -A -o wide || true
    kubectl get events -n "$SYSTEM_NAMESPACE" --sort-by=.lastTimestamp || true
    kubectl logs -n "$SYSTEM_NAMESPACE" -l app.kubernetes.io/name=tokengate --prefix --tail=200 || true
  fi
  if ((cluster_created)); then
    if [[ $KEEP_CLUSTER == 1 ]]; then
      say "KEEP_CLUSTER=1: cluster $CLUSTER kept; export KUBECONFIG=$KUBECONFIG"
    else
      say "deleting cluster $CLUSTER"
      run kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" || true
    fi
  fi
  if ((!dry_run)); then rm -rf "$work"; fi
  exit "$status"
}
trap finish EXIT

say "building $IMAGE"
run docker build -t "$IMAGE" .

reused=0
if ((!dry_run)) && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "reusing kind cluster $CLUSTER"
  reused=1
  run kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
else
  say "creating kind cluster $CLUSTER (an existing one of that name would be reused)"
  create=(kind create cluster --name "$CLUSTER" --config tests/e2e/kind-config.yaml --kubeconfig "$KUBECONFIG" --wait 180s)
  if [[ -n $KIND_NODE_IMAGE ]]; then create+=(--image "$KIND_NODE_IMAGE"); fi
  run "${create[@]}"
fi
cluster_created=1

say "loading $IMAGE into the nodes"
run kind load docker-image "$IMAGE" --name "$CLUSTER"

say "installing tokengate (manifests/overlays/dev)"
run certs/generate.sh
run kubectl apply -k manifests/overlays/dev
if ((reused)); then
  # Same image tag as the previous run: restart so the pods run the new build.
  run kubectl rollout restart deployment/tokengate -n "$SYSTEM_NAMESPACE"
fi
run kubectl rollout status deployment/tokengate -n "$SYSTEM_NAMESPACE" --timeout=300s

say "waiting for the webhooks to answer"
# A dry-run pod with an audience no policy allows: answered by tokengate once it is reachable.
run tests/e2e/scenarios.sh --render "$work/objects"
wait_for_tokengate "$work/objects/denied/pod-probe.yaml" 120 "in the cluster"

say "fetching the kubelet client certificate of $NODE"
run_to "$work/node.pem" docker exec "$NODE" cat /var/lib/kubelet/pki/kubelet-client-current.pem

say "running the scenarios"
run env MODE=cluster NODE_CERT="$work/node.pem" NODE_KEY="$work/node.pem" NODE_NAME="$NODE" \
  tests/e2e/scenarios.sh
