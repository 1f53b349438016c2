#!/usr/bin/env bash
# Runs the end-to-end scenarios in a throw-away kind cluster:
#
#   tests/e2e/kind.sh              build, install, test, delete the cluster
#   tests/e2e/kind.sh --dry-run    print every command instead of running it
#
# Creates the kind cluster tokengate-e2e (tests/e2e/kind-config.yaml: one control plane, two
# workers), builds the image tokengate:dev from the Dockerfile at the repository root and loads
# it into the nodes, makes development certificates (certs/generate.sh), installs as docs/install.md
# says (the policy once with kubectl create -k manifests/policy, then manifests/overlays/dev),
# waits for the Deployment and for the webhooks tokengate registers to answer, checks that the
# installed policy is in mode Warn and that applying the overlay again leaves it untouched, then
# runs MODE=cluster tests/e2e/scenarios.sh with a worker's kubelet certificate for the node
# scenario. Needs docker, kind and kubectl.
#
# A cluster of that name that already exists is reused and never deleted: only a cluster this
# run created is deleted at the end.
#
# Environment:
#   KEEP_CLUSTER=1    keep the cluster this run created
#   KIND_NODE_IMAGE   node image for kind create cluster --image (default: kind's own); CI pins
#                     kindest/node images by digest, one per Kubernetes version it tests
#   KIND_KUBECONFIG   where the cluster's kubeconfig is written
#                     (default: ${TMPDIR:-/tmp}/tokengate-e2e.kubeconfig); the current
#                     KUBECONFIG is never touched
#   E2E_ARTIFACTS     a directory: on failure, tokengate's logs, the cluster's Events, pods and
#                     webhook configurations are written there (CI uploads it)
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
E2E_ARTIFACTS=${E2E_ARTIFACTS:-}
export KUBECONFIG=${KIND_KUBECONFIG:-${TMPDIR:-/tmp}/tokengate-e2e.kubeconfig}

if ((dry_run)); then
  work=${TMPDIR:-/tmp}/tokengate-e2e.XXXXXX
else
  for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { echo "kind.sh needs $tool on PATH" >&2; exit 2; }
  done
  work=$(mktemp -d)
fi

# save_diagnostics DIR: what explains a failure, one file each (also printed when DIR is empty).
save_diagnostics() {
  local dir=$1
  local -a what=(
    "nodes|kubectl get nodes -o wide"
    "pods|kubectl get pods -A -o wide"
    "events|kubectl get events -A --sort-by=.lastTimestamp"
    "tokengate-describe|kubectl describe deployment,replicaset,pods -n $SYSTEM_NAMESPACE"
    "tokengate-logs|kubectl logs -n $SYSTEM_NAMESPACE -l app.kubernetes.io/name=tokengate --prefix --all-containers --tail=-1"
    "tokengate-previous-logs|kubectl logs -n $SYSTEM_NAMESPACE -l app.kubernetes.io/name=tokengate --prefix --all-containers --previous --tail=-1"
    "webhook-configurations|kubectl get mutatingwebhookconfigurations,validatingwebhookconfigurations -o yaml"
    "policy|kubectl get configmap tokengate-policy -n $SYSTEM_NAMESPACE -o yaml"
  )
  local entry name command
  if [[ -n $dir ]]; then mkdir -p "$dir"; fi
  for entry in "${what[@]}"; do
    name=${entry%%|*}
    command=${entry#*|}
    if [[ -n $dir ]]; then
      # shellcheck disable=SC2086 # the commands above are split on purpose
      $command > "$dir/$name.txt" 2>&1 || true
    else
      echo "--- $command"
      # shellcheck disable=SC2086
      $command 2>&1 | tail -n 200 || true
    fi
  done
  if [[ -n $dir ]]; then echo "diagnostics written to $dir"; fi
}

# Set once this run has created the cluster; only then is it ever deleted.
cluster_created=0
cluster_ready=0
finish() {
  local status=$?
  trap - EXIT
  if ((status != 0 && cluster_ready && !dry_run)); then
    say "diagnostics"
    save_diagnostics "" || true
    if [[ -n $E2E_ARTIFACTS ]]; then save_diagnostics "$E2E_ARTIFACTS" || true; fi
  fi
  if ((cluster_created)); then
    if [[ $KEEP_CLUSTER == 1 ]]; then
      say "KEEP_CLUSTER=1: cluster $CLUSTER kept; export KUBECONFIG=$KUBECONFIG"
    else
      say "deleting cluster $CLUSTER (created by this run)"
      run kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" || true
    fi
  elif ((cluster_ready)); then
    say "cluster $CLUSTER existed before this run: left in place"
  fi
  if ((!dry_run)); then rm -rf "$work"; fi
  exit "$status"
}
trap finish EXIT

say "building $IMAGE"
run docker build -t "$IMAGE" --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" .

reused=0
if ((!dry_run)) && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "reusing kind cluster $CLUSTER (not created by this run: it will not be deleted)"
  reused=1
  run kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
else
  say "creating kind cluster $CLUSTER"
  create=(kind create cluster --name "$CLUSTER" --config tests/e2e/kind-config.yaml --kubeconfig "$KUBECONFIG" --wait 180s)
  if [[ -n $KIND_NODE_IMAGE ]]; then create+=(--image "$KIND_NODE_IMAGE"); fi
  # Marked before the command: a half-created cluster is this run's to delete too.
  cluster_created=1
  run "${create[@]}"
fi
cluster_ready=1
run kubectl version

say "loading $IMAGE into the nodes"
run kind load docker-image "$IMAGE" --name "$CLUSTER"

say "installing tokengate: the policy once (manifests/policy), then manifests/overlays/dev"
run certs/generate.sh
create_policy "$SYSTEM_NAMESPACE"
run kubectl apply -k manifests/overlays/dev
if ((reused)); then
  # Same image tag as the previous run: restart so the pods run the new build.
  run kubectl rollout restart deployment/tokengate -n "$SYSTEM_NAMESPACE"
fi
run kubectl rollout status deployment/tokengate -n "$SYSTEM_NAMESPACE" --timeout=300s

say "waiting for the webhooks to answer"
# A dry-run pod with an audience no policy allows: answered by tokengate (a warning in mode Warn)
# once a ready replica has registered the webhooks and the API server reaches it.
run tests/e2e/scenarios.sh --render "$work/objects"
wait_for_tokengate "$work/objects/denied/pod-probe.yaml" 120 "in the cluster"

say "the installed policy is in mode Warn, and applying the overlay again leaves it alone"
if ((dry_run)); then
  run kubectl get configmap tokengate-policy -n "$SYSTEM_NAMESPACE" -o "jsonpath={.metadata.resourceVersion}"
  run kubectl apply -k manifests/overlays/dev
  echo "# (the ConfigMap's resourceVersion must not change; on a fresh cluster its mode must be Warn)"
else
  before=$(kubectl get configmap tokengate-policy -n "$SYSTEM_NAMESPACE" -o "jsonpath={.metadata.resourceVersion}")
  if ((!reused)); then
    kubectl get configmap tokengate-policy -n "$SYSTEM_NAMESPACE" -o 'jsonpath={.data.policy\.yaml}' |
      grep -qE '^  mode: Warn$' || { echo "the installed policy is not in mode Warn" >&2; exit 1; }
  fi
  kubectl apply -k manifests/overlays/dev
  after=$(kubectl get configmap tokengate-policy -n "$SYSTEM_NAMESPACE" -o "jsonpath={.metadata.resourceVersion}")
  [[ $before == "$after" ]] || { echo "applying the overlay again changed the policy ($before -> $after)" >&2; exit 1; }
  echo "policy untouched (resourceVersion $after)"
fi

say "fetching the kubelet client certificate of $NODE"
run_to "$work/node.pem" docker exec "$NODE" cat /var/lib/kubelet/pki/kubelet-client-current.pem

say "running the scenarios"
run env MODE=cluster NODE_CERT="$work/node.pem" NODE_KEY="$work/node.pem" NODE_NAME="$NODE" \
  tests/e2e/scenarios.sh

# The native phase needs this Kubernetes minor version or newer: ValidatingAdmissionPolicy v1 is
# served from 1.30, and the phase is held to the newest version the workflow pins (1.36), where
# the native policies' denials were checked on a real API server.
readonly NATIVE_MIN_MINOR=36

# server_minor: the API server's minor version ("36" of "1.36", "36+" read as 36).
server_minor() {
  kubectl get --raw /version | sed -n 's/^ *"minor": *"\([0-9]*\).*/\1/p'
}

# native_preview: under --dry-run, what the native phase would apply on Kubernetes
# 1.$NATIVE_MIN_MINOR, printed by a local tokengate binary ($TOKENGATE_BIN, or tokengate on PATH)
# when there is one.
native_preview() {
  local bin=${TOKENGATE_BIN:-$(command -v tokengate || true)} preview
  if [[ -z $bin || ! -x $bin ]]; then
    echo "# (set TOKENGATE_BIN to a tokengate binary to see the objects the native phase applies)"
    return 0
  fi
  preview=$(mktemp -d)
  tests/e2e/scenarios.sh --render "$preview" >/dev/null
  echo "# the native phase would apply ($bin webhooks --native --kubernetes-version 1.$NATIVE_MIN_MINOR):"
  "$bin" webhooks --native --kubernetes-version "1.$NATIVE_MIN_MINOR" --policy "$preview/policies/native.yaml" |
    awk '/^kind:/ { kind = $2 } /^  name:/ && kind { print "#   " kind " " $2; kind = "" }'
  echo "# and would replace the webhook configurations with these webhooks ($bin webhooks --narrowed):"
  "$bin" webhooks --narrowed --kubernetes-version "1.$NATIVE_MIN_MINOR" --policy "$preview/policies/native.yaml" \
    --service "$SYSTEM_NAMESPACE/tokengate" |
    awk '/^kind:/ { kind = $2 } /^- name:/ { print "#   " kind " " $3 }'
  echo "# then: wait for the ValidatingAdmissionPolicies' status.typeChecking at status.observedGeneration,"
  echo "# kubectl scale deployment/tokengate --replicas=0, kubectl replace -f the narrowed configurations, wait for a"
  echo "# dry-run pod denied by the pods policy and for a dry-run pod injected by the MutatingAdmissionPolicy (it has"
  echo "# no status), the native scenarios, scale tokengate back up (it registers its full webhook configurations)"
  echo "# and kubectl delete -f the native policies, the MutatingAdmissionPolicy and its binding included"
  echo "# (tests/e2e/scenarios.sh --native)"
  rm -rf "$preview"
}

say "native phase: the API server decides alone (tokengate webhooks --native, tokengate scaled to zero)"
native_minor=
if ((!dry_run)); then native_minor=$(server_minor); fi
if ((!dry_run)) && [[ -z $native_minor || $native_minor -lt $NATIVE_MIN_MINOR ]]; then
  echo "native phase not run: the API server is Kubernetes 1.${native_minor:-?}, the phase needs 1.$NATIVE_MIN_MINOR or newer (KIND_NODE_IMAGE)"
else
  # The image's binary prints both from the test policy with its IRSA injection narrowed to
  # namespaces aws-* (scenarios.sh --render wrote it), for the API server's version: the native
  # policies (the ValidatingAdmissionPolicies and the MutatingAdmissionPolicy adding the pod-label
  # injection), and the webhook configurations narrowed beside them.
  native_policy_file=$work/objects/policies/native.yaml
  native_print=(docker run --rm -i "$IMAGE" webhooks --policy -)
  if ((dry_run)); then
    # The version the API server reports; 1.$NATIVE_MIN_MINOR shown here.
    native_minor=$NATIVE_MIN_MINOR
  fi
  native_version=(--kubernetes-version "1.$native_minor")
  if ((dry_run)); then
    run_to "$work/native-policies.yaml" "${native_print[@]}" --native "${native_version[@]}"
    run_to "$work/narrowed-webhooks.yaml" "${native_print[@]}" --narrowed --service "$SYSTEM_NAMESPACE/tokengate" \
      "${native_version[@]}"
    echo "# (both with stdin from $native_policy_file; only on Kubernetes 1.$NATIVE_MIN_MINOR or newer)"
    native_preview
  else
    run_to "$work/native-policies.yaml" "${native_print[@]}" --native "${native_version[@]}" < "$native_policy_file"
    run_to "$work/narrowed-webhooks.yaml" "${native_print[@]}" --narrowed \
      --service "$SYSTEM_NAMESPACE/tokengate" "${native_version[@]}" < "$native_policy_file"
  fi
  run env MODE=cluster NATIVE_POLICIES="$work/native-policies.yaml" NARROWED_WEBHOOKS="$work/narrowed-webhooks.yaml" \
    tests/e2e/scenarios.sh --native
fi
