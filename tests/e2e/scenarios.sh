#!/usr/bin/env bash
# tokengate end-to-end scenarios against the cluster of the current KUBECONFIG.
#
#   MODE=cluster tests/e2e/scenarios.sh        tokengate runs in the cluster (manifests/overlays/dev
#                                              or any other install)
#   MODE=local tests/e2e/scenarios.sh          tokengate runs as a local process (tests/e2e/local.sh)
#   tests/e2e/scenarios.sh --render DIR        write the objects the scenarios create into DIR and
#                                              exit, without a cluster (tests/e2e/check.sh judges
#                                              them offline)
#   MODE=cluster tests/e2e/scenarios.sh --native
#                                              the native phase instead of the scenarios: applies
#                                              NATIVE_POLICIES, waits for the API server to have
#                                              type-checked them, scales tokengate's Deployment to
#                                              zero, replaces its webhook configurations with
#                                              NARROWED_WEBHOOKS, runs the scenarios the native
#                                              policies decide, then scales tokengate back up (it
#                                              registers its full webhook configurations again) and
#                                              deletes the native policies (kind.sh prints both
#                                              files with tokengate webhooks --native / --narrowed
#                                              from the policy --render writes to policies/native.yaml)
#
# Assumes tokengate is installed, its webhooks are registered and it reads its policy from the
# ConfigMap tokengate-system/tokengate-policy (key policy.yaml). While the scenarios run, that
# ConfigMap holds tests/e2e/policy.yaml; afterwards the policy found there before is put back
# (manifests/policy/policy.yaml when there was none, or when it was an earlier run's test policy).
#
# Environment:
#   MODE                 cluster (default) or local; local skips the scenario that deletes a
#                        tokengate pod
#   NODE_CERT, NODE_KEY  a client certificate and key for system:node:<name> (group system:nodes);
#                        may be the same file. Without them the node scenario is skipped (under
#                        CI, CI=true or 1, a skip is a failure).
#   NODE_NAME            the node's name (default: taken from the certificate's CN)
#   E2E_IMAGE            container image of the test pods (default registry.k8s.io/pause:3.10);
#                        admission is what is tested, pods may stay Pending
#   E2E_KEEP=1           leave the namespaces, the CSIDriver and the test policy in place
#   POLICY_WAIT_SECONDS  how long to wait for a policy change to be in force (default 30)
#   TRAFFIC_SECONDS      length of the traffic run while a tokengate pod is deleted (default 20)
#   TRAFFIC_WORKERS      parallel request loops during that run (default 3)
#   NATIVE_POLICIES      --native: the output of tokengate webhooks --native for policies/native.yaml
#   NARROWED_WEBHOOKS    --native: the output of tokengate webhooks --narrowed for the same policy
#   NATIVE_NAME          --native: the --name those were printed with (default tokengate)
#
# Prints PASS/FAIL/SKIP per scenario and, last, exactly "N passed, M failed"; exits 1 when
# anything failed. Talks only to the API server of the current KUBECONFIG.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

render_dir=
phase=scenarios
case "${1:-}" in
  "") ;;
  --native) phase=native ;;
  --render)
    [[ -n ${2:-} ]] || { usage >&2; exit 2; }
    mkdir -p "$2"
    render_dir=$(cd "$2" && pwd)
    ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

# Paths given relative to the caller's directory, before moving to the repository root.
absolute() {
  if [[ -z $1 || $1 == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "$1"; fi
}
NODE_CERT=$(absolute "${NODE_CERT:-}")
NODE_KEY=$(absolute "${NODE_KEY:-}")
NATIVE_POLICIES=$(absolute "${NATIVE_POLICIES:-}")
NARROWED_WEBHOOKS=$(absolute "${NARROWED_WEBHOOKS:-}")
NATIVE_NAME=${NATIVE_NAME:-tokengate}

cd "$(dirname "$0")/../.."

MODE=${MODE:-cluster}
NODE_NAME=${NODE_NAME:-}
E2E_IMAGE=${E2E_IMAGE:-registry.k8s.io/pause:3.10}
POLICY_WAIT_SECONDS=${POLICY_WAIT_SECONDS:-30}
TRAFFIC_SECONDS=${TRAFFIC_SECONDS:-20}
TRAFFIC_WORKERS=${TRAFFIC_WORKERS:-3}

readonly SYSTEM_NAMESPACE=tokengate-system
readonly POLICY_CONFIGMAP=tokengate-policy
readonly NAMESPACE=e2e-tokengate      # vault is allowed here (e2e-*)
readonly OUTSIDE_NAMESPACE=outside-e2e # and not here
readonly APP_SA=e2e-app
readonly IRSA_SA=irsa
readonly ROLE_ARN=arn:aws:iam::111122223333:role/e2e
readonly MARKER_AUDIENCE=tokengate-e2e-policy-marker
readonly EVIL_AUDIENCE=evil.example.com
readonly SECRETS_STORE_DRIVER=secrets-store.csi.k8s.io
readonly PART_OF=app.kubernetes.io/part-of=tokengate-e2e
# What the policy's aws-web-identity injection adds (tests/e2e/policy.yaml).
readonly IRSA_VOLUME=aws-iam-token
readonly IRSA_MOUNT_PATH=/var/run/secrets/eks.amazonaws.com/serviceaccount
readonly IRSA_TOKEN_FILE=$IRSA_MOUNT_PATH/token
# What the policy's azure-workload-identity injection adds (tests/e2e/policy.yaml): optional,
# matched by the pod label below in namespaces e2e-*, fixed values only, so on Kubernetes 1.36+
# the MutatingAdmissionPolicy of tokengate webhooks --native adds it (docs/native.md).
readonly AZURE_INJECTION=azure-workload-identity
readonly AZURE_LABEL=azure.workload.identity/use
readonly AZURE_VOLUME=azure-identity-token
readonly AZURE_AUDIENCE=api://AzureADTokenExchange
readonly AZURE_SECONDS=3600
readonly AZURE_MOUNT_PATH=/var/run/secrets/azure/tokens
readonly AZURE_TOKEN_FILE=$AZURE_MOUNT_PATH/azure-identity-token
readonly AZURE_AUTHORITY_HOST=https://login.microsoftonline.com/
readonly SKIP_ANNOTATION=tokengate.dev/skip-injection
# How a tokengate denial reads in kubectl's error (a webhook that cannot be reached also names
# tokengate, as "failed calling webhook ...tokengate.dev", but never says this).
readonly DENIAL='denied the request: tokengate:'
readonly TOKEN_FIELD='spec.volumes[0].projected.sources[0].serviceAccountToken.audience'
readonly TEMPLATE_TOKEN_FIELD='spec.template.spec.volumes[0].projected.sources[0].serviceAccountToken.audience'

run_id=$(date +%s)

# ---------------------------------------------------------------------------------------------
# The objects (also written by --render).

# A restricted-compliant pod spec body (Pod Security "restricted" would otherwise deny the pods
# before tokengate sees them). $1 service account, $2 audience, $3 seconds, $4 node name or "",
# $5 indentation.
pod_spec() {
  local indent=$5
  sed -e '/^$/d' -e "s/^/$indent/" <<EOF
serviceAccountName: $1
${4:+nodeName: $4}
terminationGracePeriodSeconds: 1
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  seccompProfile: {type: RuntimeDefault}
containers:
  - name: app
    image: $E2E_IMAGE
    imagePullPolicy: IfNotPresent
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
    volumeMounts:
      - {name: token, mountPath: /var/run/secrets/tokens, readOnly: true}
volumes:
  - name: token
    projected:
      sources:
        - serviceAccountToken: {audience: "$2", expirationSeconds: $3, path: token}
EOF
}

# $1 name, $2 namespace, $3 service account, $4 audience, $5 seconds, $6 node name (optional)
pod_manifest() {
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $2
  labels: {app.kubernetes.io/part-of: tokengate-e2e}
spec:
EOF
  pod_spec "$3" "$4" "$5" "${6:-}" "  "
}

namespaces_manifest() {
  local ns
  for ns in "$NAMESPACE" "$OUTSIDE_NAMESPACE"; do
    cat <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
  labels: {app.kubernetes.io/part-of: tokengate-e2e}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: $APP_SA
  namespace: $ns
  labels: {app.kubernetes.io/part-of: tokengate-e2e}
---
EOF
  done
}

irsa_service_account_manifest() {
  cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata:
  name: $IRSA_SA
  namespace: $NAMESPACE
  labels: {app.kubernetes.io/part-of: tokengate-e2e}
  annotations:
    eks.amazonaws.com/role-arn: "$ROLE_ARN"
EOF
}

# A pod of the IRSA service account with an init container and two containers, none of which
# mentions the token: the mutating webhook adds it.
irsa_pod_manifest() {
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $NAMESPACE
  labels: {app.kubernetes.io/part-of: tokengate-e2e}
spec:
  serviceAccountName: $IRSA_SA
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    seccompProfile: {type: RuntimeDefault}
EOF
  three_containers
}

# The containers of the injection pods: an init container "init", then "app" and "sidecar", none
# of which mentions a token.
three_containers() {
  local container
  for container in initContainers:init containers:app containers:sidecar; do
    if [[ $container == initContainers:* ]]; then echo "  initContainers:"; fi
    if [[ $container == containers:app ]]; then echo "  containers:"; fi
    cat <<EOF
    - name: ${container#*:}
      image: $E2E_IMAGE
      imagePullPolicy: IfNotPresent
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
EOF
  done
}

# A pod of $APP_SA with three_containers for the azure-workload-identity injection. $1 name,
# $2 namespace, then any of: "label" (the pod label the injection matches), "opt-out" (the
# annotation tokengate.dev/skip-injection naming it), "colliding" (an emptyDir volume with the
# injection's volume name, which only the webhook may judge).
azure_pod_manifest() {
  local name=$1 namespace=$2 label=0 opt_out=0 colliding=0 flag
  shift 2
  for flag in "$@"; do
    case $flag in
      label) label=1 ;;
      opt-out) opt_out=1 ;;
      colliding) colliding=1 ;;
      *) echo "azure_pod_manifest: unknown flag $flag" >&2; return 1 ;;
    esac
  done
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $name
  namespace: $namespace
  labels:
    app.kubernetes.io/part-of: tokengate-e2e
EOF
  if ((label)); then echo "    $AZURE_LABEL: \"true\""; fi
  if ((opt_out)); then printf '  annotations:\n    %s: %s\n' "$SKIP_ANNOTATION" "$AZURE_INJECTION"; fi
  cat <<EOF
spec:
  serviceAccountName: $APP_SA
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    seccompProfile: {type: RuntimeDefault}
EOF
  if ((colliding)); then printf '  volumes:\n    - name: %s\n      emptyDir: {}\n' "$AZURE_VOLUME"; fi
  three_containers
}

# $1 audience, $2 requiresRepublish
csidriver_manifest() {
  cat <<EOF
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata:
  name: $SECRETS_STORE_DRIVER
  labels: {app.kubernetes.io/part-of: tokengate-e2e}
spec:
  attachRequired: false
  podInfoOnMount: true
  volumeLifecycleModes: [Ephemeral]
  requiresRepublish: $2
  tokenRequests:
    - audience: "$1"
      expirationSeconds: 3600
EOF
}

# A cluster-scoped object every tokengate denies whatever its policy (an unlisted CSI driver
# with tokenRequests), needing no namespace or service account: local.sh's readiness probe,
# sent as a dry run.
probe_csidriver_manifest() {
  cat <<EOF
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata:
  name: probe.tokengate-e2e.invalid
spec:
  tokenRequests:
    - audience: probe
EOF
}

# $1 name, $2 audience
deployment_manifest() {
  cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $1
  namespace: $NAMESPACE
  labels: {app.kubernetes.io/part-of: tokengate-e2e}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: $1}
  template:
    metadata:
      labels: {app.kubernetes.io/name: $1, app.kubernetes.io/part-of: tokengate-e2e}
    spec:
EOF
  pod_spec "$APP_SA" "$2" 3600 "" "      "
}

# The test policy that also allows evil.example.com everywhere.
evil_policy() {
  awk -v audience="$EVIL_AUDIENCE" '
    { print }
    $0 == "  audiences:" { print "    - audience: " audience; found = 1 }
    END { if (!found) { print "tests/e2e/policy.yaml has no line \"  audiences:\"" > "/dev/stderr"; exit 1 } }
  ' tests/e2e/policy.yaml
}

# The test policy for the native phase: its IRSA injection, matched by a service-account
# annotation in every namespace, narrowed to namespaces aws-* (which the phase does not use).
# As it is, every pod may need it and only the webhook can tell, so every pod would go to the
# webhook, which is scaled to zero then (docs/native.md, "What the native side takes from the
# webhook"); narrowed, the pods of e2e-tokengate and outside-e2e need no webhook, and the
# azure-workload-identity injection is added by the MutatingAdmissionPolicy.
native_policy() {
  awk '
    $0 == "    - name: aws-web-identity" { irsa = 1 }
    /^    - name: / && $0 != "    - name: aws-web-identity" { irsa = 0 }
    irsa && $0 == "        namespaces: [\"*\"]" { print "        namespaces: [\"aws-*\"]"; found = 1; next }
    { print }
    END {
      if (!found) { print "tests/e2e/policy.yaml: no line \"        namespaces: [\"*\"]\" in injection aws-web-identity" > "/dev/stderr"; exit 1 }
    }
  ' tests/e2e/policy.yaml
}

# $1 name: a legacy token Secret for $APP_SA, which tests/e2e/policy.yaml lists in no legacyTokens.
legacy_token_secret_manifest() {
  cat <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: $NAMESPACE
  labels: {app.kubernetes.io/part-of: tokengate-e2e}
  annotations: {kubernetes.io/service-account.name: $APP_SA}
type: kubernetes.io/service-account-token
EOF
}

# Not a policy at all (and different on every run, so tokengate judges it anew).
garbage_policy() {
  printf 'this is not a policy [%s: {unclosed\n' "$run_id"
}

if [[ -n $render_dir ]]; then
  mkdir -p "$render_dir/admitted" "$render_dir/denied" "$render_dir/policies"
  namespaces_manifest > "$render_dir/admitted/namespaces.yaml"
  pod_manifest compliant "$NAMESPACE" "$APP_SA" vault 3600 > "$render_dir/admitted/pod-compliant.yaml"
  pod_manifest marker "$NAMESPACE" "$APP_SA" "$MARKER_AUDIENCE" 3600 > "$render_dir/admitted/pod-marker.yaml"
  pod_manifest node-bound "$NAMESPACE" "$APP_SA" vault 3600 e2e-node > "$render_dir/admitted/pod-node-bound.yaml"
  { irsa_service_account_manifest; echo "---"; irsa_pod_manifest irsa; } > "$render_dir/admitted/irsa.yaml"
  csidriver_manifest vault true > "$render_dir/admitted/csidriver-secrets-store.yaml"
  pod_manifest forbidden "$NAMESPACE" "$APP_SA" "$EVIL_AUDIENCE" 3600 > "$render_dir/denied/pod-forbidden-audience.yaml"
  pod_manifest outside "$OUTSIDE_NAMESPACE" "$APP_SA" vault 3600 > "$render_dir/denied/pod-vault-outside.yaml"
  pod_manifest too-long "$NAMESPACE" "$APP_SA" vault 10800 > "$render_dir/denied/pod-vault-too-long.yaml"
  csidriver_manifest "$EVIL_AUDIENCE" true > "$render_dir/denied/csidriver-forbidden-audience.yaml"
  csidriver_manifest vault false > "$render_dir/denied/csidriver-no-republish.yaml"
  probe_csidriver_manifest > "$render_dir/denied/csidriver-probe.yaml"
  # kind.sh's readiness probe: denied by any policy that does not allow this audience.
  pod_manifest probe default default probe.tokengate-e2e.invalid 3600 > "$render_dir/denied/pod-probe.yaml"
  deployment_manifest forbidden "$EVIL_AUDIENCE" > "$render_dir/denied/deployment-forbidden-audience.yaml"
  # The pods of the injection scenarios (the webhook's, and the native phase's).
  mkdir -p "$render_dir/injections"
  azure_pod_manifest azure "$NAMESPACE" label > "$render_dir/injections/pod-azure.yaml"
  azure_pod_manifest azure-opted-out "$NAMESPACE" label opt-out > "$render_dir/injections/pod-azure-opted-out.yaml"
  azure_pod_manifest azure-unlabelled "$NAMESPACE" > "$render_dir/injections/pod-azure-unlabelled.yaml"
  azure_pod_manifest azure-outside "$OUTSIDE_NAMESPACE" label > "$render_dir/injections/pod-azure-outside.yaml"
  azure_pod_manifest azure-colliding "$NAMESPACE" label colliding > "$render_dir/injections/pod-azure-colliding.yaml"
  evil_policy > "$render_dir/policies/evil.yaml"
  garbage_policy > "$render_dir/policies/garbage.yaml"
  native_policy > "$render_dir/policies/native.yaml"
  echo "wrote $render_dir/{admitted,denied,injections,policies}"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Helpers.

passed=0
failed=0
work=

note() { printf '    %s\n' "$@"; }

# kubectl with a bound on every request, so a hung call fails instead of stalling the suite.
k() { kubectl --request-timeout=30s "$@"; }

first_line() { head -n 1 <<<"$1"; }

# ok DESCRIPTION COMMAND...: runs COMMAND (stdin passes through); on failure shows its output.
ok() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then
    return 0
  fi
  note "$what failed:" "$out"
  return 1
}

# denied DESCRIPTION PATTERN... -- COMMAND...: COMMAND must fail and its output contain every
# PATTERN (fixed strings).
denied() {
  local what=$1 out pattern
  local -a patterns=()
  shift
  while [[ $# -gt 0 && $1 != -- ]]; do
    patterns+=("$1")
    shift
  done
  shift
  if out=$("$@" 2>&1); then
    note "$what was admitted; expected a denial:" "$out"
    return 1
  fi
  for pattern in "${patterns[@]}"; do
    if [[ $out != *"$pattern"* ]]; then
      note "$what failed, but the error lacks \"$pattern\":" "$out"
      return 1
    fi
  done
  note "$what denied: $(first_line "$out")"
}

# probe AUDIENCE: how tokengate answers a dry-run pod with that audience in $NAMESPACE:
# "allowed", "denied" (by tokengate) or "error" (anything else).
probe() {
  local out
  if out=$(pod_manifest "probe-$run_id" "$NAMESPACE" "$APP_SA" "$1" 3600 |
    k create --dry-run=server -o name -f - 2>&1); then
    echo allowed
  elif [[ $out == *"$DENIAL"* ]]; then
    echo denied
  else
    echo "error: $(first_line "$out")"
  fi
}

# wait_for_policy AUDIENCE=allowed|denied...: until three rounds in a row answer as expected.
wait_for_policy() {
  local deadline=$((SECONDS + POLICY_WAIT_SECONDS)) streak=0 expectation audience want got=
  while ((SECONDS < deadline)); do
    local matched=1
    for expectation in "$@"; do
      audience=${expectation%=*}
      want=${expectation##*=}
      got=$(probe "$audience")
      if [[ $got != "$want" ]]; then
        matched=0
        break
      fi
    done
    if ((matched)); then
      streak=$((streak + 1))
      if ((streak >= 3)); then
        return 0
      fi
    else
      streak=0
    fi
    sleep 0.5
  done
  note "the policy is not in force after ${POLICY_WAIT_SECONDS}s: audience \"$audience\" is $got, expected $want"
  return 1
}

# set_policy FILE: puts FILE under the key policy.yaml of the policy ConfigMap, leaving its other
# keys, labels and annotations alone.
set_policy() {
  k create configmap "$POLICY_CONFIGMAP" -n "$SYSTEM_NAMESPACE" --from-file=policy.yaml="$1" \
    --dry-run=client -o yaml |
    k apply --server-side --force-conflicts --field-manager=tokengate-e2e -f -
}

test_policy_in_force() {
  wait_for_policy "$MARKER_AUDIENCE=allowed" "$EVIL_AUDIENCE=denied"
}

install_test_policy() {
  ok "installing tests/e2e/policy.yaml" set_policy tests/e2e/policy.yaml && test_policy_in_force
}

invalid_policy_events() {
  k get events -n "$SYSTEM_NAMESPACE" --field-selector "involvedObject.name=$POLICY_CONFIGMAP" \
    -o jsonpath='{range .items[?(@.reason=="InvalidPolicy")]}{.metadata.uid}/{.metadata.resourceVersion}{"\n"}{end}'
}

# What a pod carries of the azure-workload-identity injection, as kubectl's jsonpath prints it:
# a line "volume|audience|expirationSeconds|path" per volume of its name, then a line
# "array|container|mountPath|AZURE_FEDERATED_TOKEN_FILE|AZURE_AUTHORITY_HOST" per container.
AZURE_REPORT="{range .spec.volumes[?(@.name==\"$AZURE_VOLUME\")]}volume|{.projected.sources[0].serviceAccountToken.audience}|{.projected.sources[0].serviceAccountToken.expirationSeconds}|{.projected.sources[0].serviceAccountToken.path}{\"\\n\"}{end}"
for array in initContainers containers; do
  AZURE_REPORT+="{range .spec.${array}[*]}${array}|{.name}|{.volumeMounts[?(@.name==\"$AZURE_VOLUME\")].mountPath}|{.env[?(@.name==\"AZURE_FEDERATED_TOKEN_FILE\")].value}|{.env[?(@.name==\"AZURE_AUTHORITY_HOST\")].value}{\"\\n\"}{end}"
done
readonly AZURE_REPORT

# azure_expected injected|nothing: the report of an azure pod (three_containers) that carries the
# injection (its token volume; mount and variables in app and sidecar, not in the init container,
# as the injection leaves out init containers) or nothing of it.
azure_expected() {
  local container
  if [[ $1 == injected ]]; then
    echo "volume|$AZURE_AUDIENCE|$AZURE_SECONDS|$AZURE_VOLUME"
  fi
  echo "initContainers|init|||"
  for container in app sidecar; do
    if [[ $1 == injected ]]; then
      echo "containers|$container|$AZURE_MOUNT_PATH|$AZURE_TOKEN_FILE|$AZURE_AUTHORITY_HOST"
    else
      echo "containers|$container|||"
    fi
  done
}

# azure_admitted DESCRIPTION injected|nothing NAME NAMESPACE FLAGS...: a server-side dry run of
# azure_pod_manifest NAME NAMESPACE FLAGS... must be admitted, and the pod the API server returns
# (after every mutation) carry the injection, or nothing of it.
azure_admitted() {
  local what=$1 expected=$2 name=$3 namespace=$4 got want
  shift 4
  want=$(azure_expected "$expected")
  if ! got=$(azure_pod_manifest "$name" "$namespace" "$@" |
    k create --dry-run=server -o "jsonpath=$AZURE_REPORT" -f - 2>&1); then
    note "$what was refused; expected it admitted:" "$got"
    return 1
  fi
  if [[ $got != "$want" ]]; then
    note "$what: expected (volume|audience|seconds|path, array|container|mountPath|AZURE_FEDERATED_TOKEN_FILE|AZURE_AUTHORITY_HOST):" \
      "$want" "got:" "$got"
    note "the pod as the API server returned it:" \
      "$(azure_pod_manifest "$name" "$namespace" "$@" | k create --dry-run=server -o yaml -f - 2>&1)"
    return 1
  fi
  if [[ $expected == injected ]]; then
    note "$what: volume $AZURE_VOLUME ($AZURE_AUDIENCE, $AZURE_SECONDS s), mount $AZURE_MOUNT_PATH and both variables in app and sidecar, none in init"
  else
    note "$what: nothing of $AZURE_INJECTION added"
  fi
}

# ---------------------------------------------------------------------------------------------
# Scenarios. Each returns non-zero on failure and says why.

scenario_compliant_pod() {
  local name=compliant-$run_id
  pod_manifest "$name" "$NAMESPACE" "$APP_SA" vault 3600 | ok "creating pod $name" k create -f - || return 1
  ok "reading pod $name back" k get pod "$name" -n "$NAMESPACE" -o name
}

scenario_forbidden_audience() {
  pod_manifest "forbidden-$run_id" "$NAMESPACE" "$APP_SA" "$EVIL_AUDIENCE" 3600 |
    denied "a pod with audience $EVIL_AUDIENCE" "$DENIAL" "$TOKEN_FIELD" "$EVIL_AUDIENCE" -- k create -f -
}

scenario_namespace_denial() {
  pod_manifest "outside-$run_id" "$OUTSIDE_NAMESPACE" "$APP_SA" vault 3600 |
    denied "a vault pod in $OUTSIDE_NAMESPACE" "$DENIAL" "$TOKEN_FIELD" '"vault"' "$OUTSIDE_NAMESPACE/$APP_SA" -- k create -f -
}

scenario_lifetime_denial() {
  pod_manifest "too-long-$run_id" "$NAMESPACE" "$APP_SA" vault 10800 |
    denied "a vault pod with a 10800 s token" "$DENIAL" \
      "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds" -- k create -f -
}

scenario_injection() {
  local name=irsa-$run_id lines volume line kind container mount role_arn token_file checked=0
  irsa_service_account_manifest | ok "applying ServiceAccount $IRSA_SA" k apply -f - || return 1
  irsa_pod_manifest "$name" | ok "creating pod $name" k create -f - || return 1
  k get pod "$name" -n "$NAMESPACE" -o json > "$work/irsa-pod.json" || { note "cannot read pod $name"; return 1; }

  volume=$(k get pod "$name" -n "$NAMESPACE" -o jsonpath="{.spec.volumes[?(@.name==\"$IRSA_VOLUME\")].projected.sources[0].serviceAccountToken}")
  if [[ $volume != *'"audience":"sts.amazonaws.com"'* || $volume != *'"path":"token"'* || $volume != *'"expirationSeconds":86400'* ]]; then
    note "pod $name lacks the injected volume $IRSA_VOLUME (sts.amazonaws.com, 86400 s, path token); got: ${volume:-nothing}"
    note "the pod as stored:" "$(cat "$work/irsa-pod.json")"
    return 1
  fi
  lines=$(k get pod "$name" -n "$NAMESPACE" -o jsonpath="$(
    for kind in initContainers containers; do
      printf '{range .spec.%s[*]}%s|{.name}|{.volumeMounts[?(@.name=="%s")].mountPath}|{.env[?(@.name=="AWS_ROLE_ARN")].value}|{.env[?(@.name=="AWS_WEB_IDENTITY_TOKEN_FILE")].value}{"\\n"}{end}' \
        "$kind" "$kind" "$IRSA_VOLUME"
    done
  )") || { note "cannot read the containers of pod $name"; return 1; }
  while IFS='|' read -r kind container mount role_arn token_file; do
    [[ -n $kind ]] || continue
    checked=$((checked + 1))
    if [[ $mount != "$IRSA_MOUNT_PATH" || $role_arn != "$ROLE_ARN" || $token_file != "$IRSA_TOKEN_FILE" ]]; then
      note "$kind/$container: mount \"$mount\", AWS_ROLE_ARN \"$role_arn\", AWS_WEB_IDENTITY_TOKEN_FILE \"$token_file\";" \
        "expected \"$IRSA_MOUNT_PATH\", \"$ROLE_ARN\", \"$IRSA_TOKEN_FILE\""
      note "the pod as stored:" "$(cat "$work/irsa-pod.json")"
      return 1
    fi
  done <<<"$lines"
  if ((checked != 3)); then
    note "expected 3 containers (init, app, sidecar), found $checked:" "$lines"
    return 1
  fi
  note "volume $IRSA_VOLUME, mount $IRSA_MOUNT_PATH and AWS_* env in all $checked containers"
}

# The webhook adds the pod-label injection, leaves a pod that opts out alone, and refuses a pod
# whose own volume has the injection's name.
scenario_label_injection() {
  azure_admitted "a pod labelled $AZURE_LABEL (dry run)" injected "azure-$run_id" "$NAMESPACE" label || return 1
  azure_admitted "a labelled pod with $SKIP_ANNOTATION: $AZURE_INJECTION (dry run)" nothing \
    "azure-opted-out-$run_id" "$NAMESPACE" label opt-out || return 1
  azure_pod_manifest "azure-colliding-$run_id" "$NAMESPACE" label colliding |
    denied "a labelled pod with its own volume $AZURE_VOLUME" "$DENIAL" "\"$AZURE_VOLUME\" already exists" -- \
      k create --dry-run=server -f -
}

scenario_csidriver_forbidden() {
  # Admission runs before the existence check, so this is safe even where the driver exists.
  csidriver_manifest "$EVIL_AUDIENCE" true |
    denied "CSIDriver $SECRETS_STORE_DRIVER with audience $EVIL_AUDIENCE" \
      "$DENIAL" "spec.tokenRequests[0].audience" "$EVIL_AUDIENCE" -- k create -f - || return 1
  csidriver_manifest vault false |
    denied "CSIDriver $SECRETS_STORE_DRIVER without requiresRepublish" \
      "$DENIAL" spec.requiresRepublish -- k create --dry-run=server -f -
}

scenario_csidriver_allowed() {
  if k get csidriver "$SECRETS_STORE_DRIVER" -o name >/dev/null 2>&1; then
    # The cluster has its own driver object: do not touch it, ask with a server-side dry run.
    note "CSIDriver $SECRETS_STORE_DRIVER already exists here; checking admission with --dry-run=server"
    csidriver_manifest vault true | ok "creating CSIDriver $SECRETS_STORE_DRIVER (dry run)" k create --dry-run=server -f -
    return
  fi
  csidriver_manifest vault true | ok "creating CSIDriver $SECRETS_STORE_DRIVER" k create -f - || return 1
  ok "deleting CSIDriver $SECRETS_STORE_DRIVER" k delete csidriver "$SECRETS_STORE_DRIVER" --wait=false
}

scenario_token_request() {
  ok "kubectl create token $APP_SA --audience vault --duration 1h" \
    k create token "$APP_SA" -n "$NAMESPACE" --audience vault --duration 1h || return 1
  denied "kubectl create token $APP_SA --audience $EVIL_AUDIENCE" "$DENIAL" "spec.audiences[0]" "$EVIL_AUDIENCE" -- \
    k create token "$APP_SA" -n "$NAMESPACE" --audience "$EVIL_AUDIENCE" --duration 1h || return 1
  denied "kubectl create token $APP_SA --audience vault --duration 3h" "$DENIAL" spec.expirationSeconds -- \
    k create token "$APP_SA" -n "$NAMESPACE" --audience vault --duration 3h
}

scenario_deployment() {
  deployment_manifest "forbidden-$run_id" "$EVIL_AUDIENCE" |
    denied "kubectl apply of a Deployment with audience $EVIL_AUDIENCE" \
      "$DENIAL" "$TEMPLATE_TOKEN_FIELD" "$EVIL_AUDIENCE" -- k apply -f -
}

scenario_policy_change() {
  local out deadline start
  evil_policy > "$work/evil-policy.yaml" || return 1
  ok "putting a policy that allows $EVIL_AUDIENCE in the ConfigMap" set_policy "$work/evil-policy.yaml" || return 1
  start=$SECONDS
  deadline=$((SECONDS + 10))
  while true; do
    if out=$(k create token "$APP_SA" -n "$NAMESPACE" --audience "$EVIL_AUDIENCE" --duration 1h 2>&1); then
      note "a token for $EVIL_AUDIENCE was issued $((SECONDS - start))s after the ConfigMap changed"
      break
    fi
    if ((SECONDS >= deadline)); then
      note "a token for $EVIL_AUDIENCE is still refused 10s after the ConfigMap changed:" "$out"
      install_test_policy || true
      return 1
    fi
    sleep 0.5
  done
  install_test_policy
}

scenario_invalid_policy() {
  local before after line new='' deadline message
  before=$(invalid_policy_events) || { note "cannot list the Events of the policy ConfigMap"; return 1; }
  printf '%s\n' "$before" > "$work/events-before"
  garbage_policy > "$work/garbage-policy.yaml"
  ok "putting garbage in the ConfigMap" set_policy "$work/garbage-policy.yaml" || return 1
  deadline=$((SECONDS + 20))
  while [[ -z $new ]] && ((SECONDS < deadline)); do
    sleep 1
    after=$(invalid_policy_events) || continue
    while IFS= read -r line; do
      if [[ -n $line ]] && ! grep -qxF -- "$line" "$work/events-before"; then
        new=$line
        break
      fi
    done <<<"$after"
  done
  if [[ -z $new ]]; then
    note "no new InvalidPolicy Event on ConfigMap $SYSTEM_NAMESPACE/$POLICY_CONFIGMAP within 20s; its Events:"
    note "$(k get events -n "$SYSTEM_NAMESPACE" --field-selector "involvedObject.name=$POLICY_CONFIGMAP" 2>&1)"
    install_test_policy || true
    return 1
  fi
  message=$(k get events -n "$SYSTEM_NAMESPACE" --field-selector "involvedObject.name=$POLICY_CONFIGMAP" \
    -o jsonpath="{.items[?(@.metadata.uid==\"${new%%/*}\")].message}" 2>/dev/null || true)
  note "Event InvalidPolicy: $(first_line "$message")"
  # The last good policy (the test policy) still decides.
  local marker evil
  marker=$(probe "$MARKER_AUDIENCE")
  evil=$(probe "$EVIL_AUDIENCE")
  if [[ $marker != allowed || $evil != denied ]]; then
    note "with garbage in the ConfigMap, audience $MARKER_AUDIENCE is $marker (expected allowed) and $EVIL_AUDIENCE is $evil (expected denied)"
    install_test_policy || true
    return 1
  fi
  note "decisions still follow the last good policy"
  install_test_policy
}

# One tokengate pod is deleted while requests flow; not one of them may fail.
scenario_pod_deletion() {
  local pods victim ready wanted worker total=0 failures=0 deadline end deleted=yes
  local -a names=() workers=()
  pods=$(k get pods -n "$SYSTEM_NAMESPACE" -l app.kubernetes.io/name=tokengate \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.containerStatuses[0].ready}{"\n"}{end}') || {
    note "cannot list the tokengate pods"
    return 1
  }
  while read -r victim ready; do
    if [[ $ready == true ]]; then names+=("$victim"); fi
  done <<<"$pods"
  if ((${#names[@]} < 2)); then
    note "needs at least 2 ready tokengate pods in $SYSTEM_NAMESPACE, found ${#names[@]}:" "$pods"
    return 1
  fi
  victim=${names[0]}
  pod_manifest "traffic-$run_id" "$NAMESPACE" "$APP_SA" vault 3600 > "$work/traffic-pod.yaml"
  end=$(($(date +%s) + TRAFFIC_SECONDS))
  for ((worker = 0; worker < TRAFFIC_WORKERS; worker++)); do
    (
      while (($(date +%s) < end)); do
        if out=$(kubectl --request-timeout=30s create --dry-run=server -o name -f "$work/traffic-pod.yaml" 2>&1); then
          echo ok
        else
          echo "failed: $(date +%T) $(first_line "$out")"
        fi
      done > "$work/traffic-$worker.log"
    ) &
    workers+=("$!")
  done
  sleep 3
  if ok "deleting tokengate pod $victim" k delete pod "$victim" -n "$SYSTEM_NAMESPACE" --wait=false; then
    note "deleted pod $victim at $(date +%T) under $TRAFFIC_WORKERS request loops"
  else
    deleted=no
  fi
  for worker in "${workers[@]}"; do
    wait "$worker" || true
  done
  for ((worker = 0; worker < TRAFFIC_WORKERS; worker++)); do
    total=$((total + $(grep -c . "$work/traffic-$worker.log" || true)))
    failures=$((failures + $(grep -c '^failed' "$work/traffic-$worker.log" || true)))
  done
  note "$total admission requests, $failures failed"
  if ((failures > 0)); then
    grep -h '^failed' "$work"/traffic-*.log | head -n 10 | sed 's/^/    /'
  fi
  ok "waiting for deployment/tokengate to roll out again" \
    kubectl rollout status deployment/tokengate -n "$SYSTEM_NAMESPACE" --timeout=180s || return 1
  ok "waiting for deployment/tokengate to be Available" \
    kubectl wait --for=condition=Available deployment/tokengate -n "$SYSTEM_NAMESPACE" --timeout=180s || return 1
  deadline=$((SECONDS + 180))
  while true; do
    ready=$(k get deployment tokengate -n "$SYSTEM_NAMESPACE" -o jsonpath='{.status.readyReplicas}') || ready=
    wanted=$(k get deployment tokengate -n "$SYSTEM_NAMESPACE" -o jsonpath='{.spec.replicas}') || wanted=
    if [[ -n $wanted && ${ready:-0} -ge $wanted ]]; then
      break
    fi
    if ((SECONDS >= deadline)); then
      note "deployment/tokengate has ${ready:-0} of $wanted replicas ready after 180s"
      return 1
    fi
    sleep 2
  done
  note "deployment/tokengate is Available again with $ready ready replicas"
  [[ $deleted == yes ]] && ((total > 0 && failures == 0))
}

# A kubeconfig for the current cluster that authenticates with the node's certificate.
node_kubeconfig() {
  local config=$work/node.kubeconfig server ca insecure server_name
  server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  ca=$(kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  insecure=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.insecure-skip-tls-verify}')
  server_name=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.tls-server-name}')
  local -a cluster_flags=(--server="$server")
  if [[ -n $ca ]]; then
    base64 -d <<<"$ca" > "$work/cluster-ca.crt"
    cluster_flags+=(--certificate-authority="$work/cluster-ca.crt" --embed-certs=true)
  fi
  if [[ $insecure == true ]]; then cluster_flags+=(--insecure-skip-tls-verify=true); fi
  if [[ -n $server_name ]]; then cluster_flags+=(--tls-server-name="$server_name"); fi
  kubectl --kubeconfig="$config" config set-cluster e2e "${cluster_flags[@]}" >/dev/null
  kubectl --kubeconfig="$config" config set-credentials node \
    --client-certificate="$NODE_CERT" --client-key="$NODE_KEY" --embed-certs=true >/dev/null
  kubectl --kubeconfig="$config" config set-context node --cluster=e2e --user=node >/dev/null
  kubectl --kubeconfig="$config" config use-context node >/dev/null
  echo "$config"
}

scenario_node_token_request() {
  local config name=node-bound-$run_id uid out deadline
  config=$(node_kubeconfig) || { note "cannot build a kubeconfig for the node certificate"; return 1; }
  as_node() { kubectl --kubeconfig="$config" --request-timeout=30s "$@"; }
  pod_manifest "$name" "$NAMESPACE" "$APP_SA" vault 3600 "$NODE_NAME" |
    ok "creating pod $name on node $NODE_NAME" k create -f - || return 1
  uid=$(k get pod "$name" -n "$NAMESPACE" -o jsonpath='{.metadata.uid}') || return 1
  local -a bound=(--bound-object-kind Pod --bound-object-name "$name" --bound-object-uid "$uid")

  # The Node authorizer learns about the new pod through a watch: retry its refusals briefly.
  deadline=$((SECONDS + 20))
  until out=$(as_node create token "$APP_SA" -n "$NAMESPACE" --audience vault --duration 1h "${bound[@]}" 2>&1); do
    if [[ $out == *"$DENIAL"* ]] || ((SECONDS >= deadline)); then
      note "node $NODE_NAME: a vault token for pod $name was refused:" "$out"
      return 1
    fi
    sleep 1
  done
  note "node $NODE_NAME: vault token for pod $name issued"

  if out=$(as_node create token "$APP_SA" -n "$NAMESPACE" --audience sts.amazonaws.com --duration 1h "${bound[@]}" 2>&1); then
    note "node $NODE_NAME: a sts.amazonaws.com token for pod $name (which does not reference it) was issued"
    return 1
  fi
  if [[ $out == *"$DENIAL"* && $out == *sts.amazonaws.com* ]]; then
    note "node $NODE_NAME: sts.amazonaws.com denied by tokengate: $(first_line "$out")"
  elif [[ $out == *orbidden* ]]; then
    # Kubernetes 1.33+ NodeRestriction refuses unreferenced audiences before webhooks run.
    note "node $NODE_NAME: sts.amazonaws.com denied by the API server before tokengate: $(first_line "$out")"
  else
    note "node $NODE_NAME: the sts.amazonaws.com request failed without a denial:" "$out"
    return 1
  fi
  # A limit only tokengate sets: the allow-list's lifetime bound applies to kubelets too.
  denied "node $NODE_NAME: a 3h vault token for pod $name" "$DENIAL" spec.expirationSeconds -- \
    as_node create token "$APP_SA" -n "$NAMESPACE" --audience vault --duration 3h "${bound[@]}"
}

run_scenario() {
  local name=$1
  shift
  echo "--- $name"
  if "$@"; then
    echo "PASS: $name"
    passed=$((passed + 1))
  else
    echo "FAIL: $name"
    failed=$((failed + 1))
  fi
}

# skip NAME REASON: a scenario that cannot run here. Under CI (CI=true or 1), which provides what
# the scenarios need, a skip is a failure.
skip() {
  echo "--- $1"
  if [[ ${CI:-} == true || ${CI:-} == 1 ]]; then
    echo "FAIL: $1 ($2: under CI a failure, not a skip)"
    failed=$((failed + 1))
    return
  fi
  echo "SKIP: $1 ($2)"
}

# ---------------------------------------------------------------------------------------------
# The native phase (--native): the API server decides alone, with tokengate scaled to zero.

# How a native policy's denial reads in kubectl's error: "... ValidatingAdmissionPolicy
# 'tokengate-pods' with binding 'tokengate-pods' denied request: tokengate: ... (rule ...)".
native_denial() { printf "ValidatingAdmissionPolicy '%s-%s' with binding" "$NATIVE_NAME" "$1"; }
readonly NATIVE_MESSAGE='denied request: tokengate:'

tokengate_replicas=
native_applied=0

# The ValidatingAdmissionPolicies of $NATIVE_POLICIES, as kind/name.
native_policy_names() {
  k get -f "$NATIVE_POLICIES" -o name | grep '^validatingadmissionpolicy\.'
}

# wait_for_native_policies: until the API server has type-checked every native policy at its
# current generation (status.observedGeneration, status.typeChecking); a type-checking warning
# fails the phase, with the warning.
wait_for_native_policies() {
  local name generation observed checked warnings deadline=$((SECONDS + 60))
  for name in $(native_policy_names); do
    while true; do
      IFS='|' read -r generation observed checked warnings < <(
        k get "$name" -o jsonpath='{.metadata.generation}|{.status.observedGeneration}|{.status.typeChecking}|{.status.typeChecking.expressionWarnings}{"\n"}'
      ) || true
      if [[ -n $generation && $observed == "$generation" && -n $checked ]]; then break; fi
      if ((SECONDS >= deadline)); then
        note "$name: not type-checked after 60 s (generation ${generation:-?}, observedGeneration ${observed:-none})"
        return 1
      fi
      sleep 1
    done
    if [[ -n $warnings ]]; then
      note "$name: the API server's type checking warns:" "$warnings"
      return 1
    fi
    note "$name: type-checked at generation $generation"
  done
}

# The ValidatingAdmissionPolicy objects are in force once a forbidden dry-run pod is denied by
# the pods policy (the API server loads new policies asynchronously).
wait_for_native_denial() {
  local out deadline=$((SECONDS + POLICY_WAIT_SECONDS))
  while ((SECONDS < deadline)); do
    out=$(pod_manifest "native-probe-$run_id" "$NAMESPACE" "$APP_SA" "$EVIL_AUDIENCE" 3600 |
      k create --dry-run=server -f - 2>&1) || true
    if [[ $out == *"$(native_denial pods)"* ]]; then
      note "the native policies answer: $(first_line "$out")"
      return 0
    fi
    sleep 1
  done
  note "no denial from $(native_denial pods) after ${POLICY_WAIT_SECONDS}s; last answer: $(first_line "$out")"
  return 1
}

# Scales tokengate to zero (remembering its replicas) and waits for its pods to be gone.
scale_tokengate_to_zero() {
  tokengate_replicas=$(k get deployment tokengate -n "$SYSTEM_NAMESPACE" -o jsonpath='{.spec.replicas}') || return 1
  ok "scaling deployment/tokengate to 0" k scale deployment/tokengate -n "$SYSTEM_NAMESPACE" --replicas=0 || return 1
  ok "waiting for tokengate's pods to be gone" \
    k wait --for=delete pod -n "$SYSTEM_NAMESPACE" -l app.kubernetes.io/name=tokengate --timeout=120s || return 1
  note "tokengate scaled from $tokengate_replicas replica(s) to 0"
}

# Replaces the webhook configurations tokengate registered with the narrowed ones: tokengate is
# then called only for what the native policies cannot decide (which fails, as nothing answers).
narrow_webhooks() {
  ok "replacing the webhook configurations with $NARROWED_WEBHOOKS" k replace -f "$NARROWED_WEBHOOKS" || return 1
  note "validating webhooks now: $(k get validatingwebhookconfiguration tokengate -o jsonpath='{.webhooks[*].name}')"
}

# The MutatingAdmissionPolicy has no status in admissionregistration.k8s.io/v1 (no typeChecking,
# no observedGeneration): it is in force once a dry-run pod the injection matches comes back with
# it. Only after the webhooks are narrowed and tokengate is gone can nothing else have added it.
wait_for_native_injection() {
  local out want deadline=$((SECONDS + POLICY_WAIT_SECONDS))
  want=$(azure_expected injected)
  while ((SECONDS < deadline)); do
    out=$(azure_pod_manifest "native-injection-probe-$run_id" "$NAMESPACE" label |
      k create --dry-run=server -o "jsonpath=$AZURE_REPORT" -f - 2>&1) || true
    if [[ $out == "$want" ]]; then
      note "MutatingAdmissionPolicy $NATIVE_NAME-pod-injections adds $AZURE_INJECTION"
      return 0
    fi
    sleep 1
  done
  note "no $AZURE_INJECTION injection by MutatingAdmissionPolicy $NATIVE_NAME-pod-injections after ${POLICY_WAIT_SECONDS}s; last answer:" "$out"
  return 1
}

native_setup() {
  [[ $MODE == cluster ]] || { note "--native needs MODE=cluster (a Deployment to scale to zero)"; return 1; }
  [[ -r $NATIVE_POLICIES && -r $NARROWED_WEBHOOKS ]] ||
    { note "--native needs NATIVE_POLICIES and NARROWED_WEBHOOKS (readable files)"; return 1; }
  grep -qx 'kind: MutatingAdmissionPolicy' "$NATIVE_POLICIES" ||
    { note "$NATIVE_POLICIES has no MutatingAdmissionPolicy (printed for a Kubernetes older than 1.36?)"; return 1; }
  native_applied=1
  ok "applying $NATIVE_POLICIES" k apply -f "$NATIVE_POLICIES" || return 1
  wait_for_native_policies || return 1
  scale_tokengate_to_zero || return 1
  narrow_webhooks || return 1
  wait_for_native_denial || return 1
  wait_for_native_injection
}

# Scales tokengate back up (it registers its full webhook configurations again, serve
# --manage-webhooks), waits until it answers, and deletes the native policies.
native_restore() {
  local names deadline=$((SECONDS + 180))
  ((native_applied)) || return 0
  echo "--- native phase: restoring tokengate and its full webhook configurations"
  if [[ -n $tokengate_replicas ]]; then
    ok "scaling deployment/tokengate back to $tokengate_replicas" \
      k scale deployment/tokengate -n "$SYSTEM_NAMESPACE" --replicas="$tokengate_replicas" || return 1
  fi
  ok "waiting for tokengate" k rollout status deployment/tokengate -n "$SYSTEM_NAMESPACE" --timeout=300s || return 1
  while true; do
    names=$(k get validatingwebhookconfiguration tokengate -o jsonpath='{.webhooks[*].name}' 2>/dev/null) || true
    if [[ $names == *csidrivers.validate.tokengate.dev* && $names == *secrets.validate.tokengate.dev* ]]; then break; fi
    if ((SECONDS >= deadline)); then
      note "tokengate did not register its full webhook configurations again; validating webhooks: ${names:-none}"
      return 1
    fi
    sleep 2
  done
  ok "deleting the native policies" k delete -f "$NATIVE_POLICIES" --ignore-not-found || return 1
  # Every object of the file, the MutatingAdmissionPolicy and its binding included, must be gone.
  if ! names=$(k get -f "$NATIVE_POLICIES" --ignore-not-found -o name 2>"$work/native-left.err") || [[ -n $names ]]; then
    note "native policies still there after kubectl delete (or kubectl get failed):" "$names" "$(cat "$work/native-left.err")"
    return 1
  fi
  native_applied=0
  wait_for_policy "$EVIL_AUDIENCE=denied" && note "tokengate answers again, with its full webhook configurations"
}

native_scenario_forbidden_audience() {
  pod_manifest "native-forbidden-$run_id" "$NAMESPACE" "$APP_SA" "$EVIL_AUDIENCE" 3600 |
    denied "a pod with audience $EVIL_AUDIENCE" "$(native_denial pods)" "$NATIVE_MESSAGE" \
      "spec.volumes[0].projected.sources" "(rule pod-token-audiences)" -- k create -f -
}

native_scenario_compliant_pod() {
  local name=native-compliant-$run_id
  pod_manifest "$name" "$NAMESPACE" "$APP_SA" vault 3600 | ok "creating pod $name" k create -f - || return 1
  ok "reading pod $name back" k get pod "$name" -n "$NAMESPACE" -o name
}

native_scenario_lifetime_denial() {
  pod_manifest "native-too-long-$run_id" "$NAMESPACE" "$APP_SA" vault 10800 |
    denied "a vault pod with a 10800 s token" "$(native_denial pods)" "$NATIVE_MESSAGE" \
      "(rule pod-token-lifetimes)" -- k create -f -
}

native_scenario_token_request() {
  ok "kubectl create token $APP_SA --audience vault --duration 1h" \
    k create token "$APP_SA" -n "$NAMESPACE" --audience vault --duration 1h || return 1
  denied "kubectl create token $APP_SA --audience $EVIL_AUDIENCE" "$(native_denial tokenrequests)" \
    "$NATIVE_MESSAGE" "$EVIL_AUDIENCE" "(rule tokenrequest-audiences)" -- \
    k create token "$APP_SA" -n "$NAMESPACE" --audience "$EVIL_AUDIENCE" --duration 1h
}

native_scenario_csidriver() {
  csidriver_manifest "$EVIL_AUDIENCE" true |
    denied "CSIDriver $SECRETS_STORE_DRIVER with audience $EVIL_AUDIENCE" "$(native_denial csidrivers)" \
      "$NATIVE_MESSAGE" "$EVIL_AUDIENCE" "(rule csidriver-audiences)" -- k create --dry-run=server -f -
}

native_scenario_legacy_token_secret() {
  legacy_token_secret_manifest "native-legacy-$run_id" |
    denied "a legacy token Secret for $APP_SA" "$(native_denial legacy-token-secrets)" "$NATIVE_MESSAGE" \
      "$NAMESPACE/$APP_SA" "(rule legacy-token-secrets)" -- k create --dry-run=server -f -
}

native_scenario_injection() {
  azure_admitted "a pod labelled $AZURE_LABEL (dry run)" injected "native-azure-$run_id" "$NAMESPACE" label
}

native_scenario_injection_opted_out() {
  azure_admitted "a labelled pod with $SKIP_ANNOTATION: $AZURE_INJECTION (dry run)" nothing \
    "native-azure-opted-out-$run_id" "$NAMESPACE" label opt-out
}

native_scenario_injection_not_matching() {
  azure_admitted "an unlabelled pod in $NAMESPACE (dry run)" nothing "native-azure-unlabelled-$run_id" "$NAMESPACE" || return 1
  azure_admitted "a labelled pod in $OUTSIDE_NAMESPACE (dry run)" nothing \
    "native-azure-outside-$run_id" "$OUTSIDE_NAMESPACE" label
}

# A pod with its own volume named as the injection's is left to the webhook (the policy's
# skip-pods-the-webhook-must-plan; the narrowed pods.mutate is still called for it): with tokengate
# at zero that call fails, and the webhook's failurePolicy Fail refuses the pod rather than admit
# it unjudged. (tokengate itself would refuse it too: the volume collides.)
native_scenario_injection_colliding() {
  azure_pod_manifest "native-azure-colliding-$run_id" "$NAMESPACE" label colliding |
    denied "a labelled pod with its own volume $AZURE_VOLUME" 'failed calling webhook "pods.mutate.tokengate.dev"' -- \
      k create --dry-run=server -f -
}

run_native_phase() {
  if ! native_setup; then
    echo "FAIL: native phase: setup"
    failed=$((failed + 1))
    return
  fi
  run_scenario "native: pod with a forbidden audience is denied by the API server" native_scenario_forbidden_audience
  run_scenario "native: compliant pod is admitted without tokengate" native_scenario_compliant_pod
  run_scenario "native: token lifetime above the audience's maximum is denied" native_scenario_lifetime_denial
  run_scenario "native: kubectl create token follows the allow-list" native_scenario_token_request
  run_scenario "native: CSIDriver with a forbidden audience is denied" native_scenario_csidriver
  run_scenario "native: legacy token Secret is denied" native_scenario_legacy_token_secret
  run_scenario "native: pod-label injection is added by the MutatingAdmissionPolicy" native_scenario_injection
  run_scenario "native: a pod opting out of the injection gets nothing" native_scenario_injection_opted_out
  run_scenario "native: pods the injection does not match get nothing" native_scenario_injection_not_matching
  run_scenario "native: a pod with a colliding volume is refused (left to the unreachable webhook)" \
    native_scenario_injection_colliding
  run_scenario "native: tokengate scaled back up registers its full webhooks" native_restore
}

# ---------------------------------------------------------------------------------------------
# Set-up and clean-up.

restore_policy_file=manifests/policy/policy.yaml

cleanup() {
  if [[ ${E2E_KEEP:-} == 1 ]]; then
    echo "--- E2E_KEEP=1: leaving namespaces $NAMESPACE, $OUTSIDE_NAMESPACE and the test policy in place"
    return
  fi
  echo "--- cleanup"
  k delete csidriver -l "$PART_OF" --ignore-not-found --wait=false >/dev/null 2>&1 || note "could not delete the test CSIDriver"
  if [[ $MODE == local ]]; then
    # No kubelet: remove bound pods at once rather than waiting for one.
    k delete pods --all -n "$NAMESPACE" --force --grace-period=0 >/dev/null 2>&1 || true
  fi
  k delete namespace "$NAMESPACE" "$OUTSIDE_NAMESPACE" --ignore-not-found --wait=false >/dev/null 2>&1 ||
    note "could not delete the namespaces"
  if set_policy "$restore_policy_file" >/dev/null 2>&1; then
    note "ConfigMap $SYSTEM_NAMESPACE/$POLICY_CONFIGMAP restored from $restore_policy_file"
  else
    note "could not restore ConfigMap $SYSTEM_NAMESPACE/$POLICY_CONFIGMAP from $restore_policy_file"
  fi
  if [[ $MODE == local ]]; then
    # A bare API server has no namespace controller to finish the deletion.
    local ns deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)) && k get namespace "$NAMESPACE" "$OUTSIDE_NAMESPACE" >/dev/null 2>&1; do
      sleep 1
    done
    for ns in "$NAMESPACE" "$OUTSIDE_NAMESPACE"; do
      if k get namespace "$ns" >/dev/null 2>&1; then
        printf '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"%s"},"spec":{"finalizers":[]}}' "$ns" |
          k replace --raw "/api/v1/namespaces/$ns/finalize" -f - >/dev/null 2>&1 || note "namespace $ns is still terminating"
      fi
    done
  fi
}

finish() {
  local status=$?
  trap - EXIT
  if ((status != 0 && failed == 0)); then
    echo "FAIL: the suite stopped early (exit status $status)"
    failed=$((failed + 1))
  fi
  if [[ $phase == native ]] && ! native_restore; then
    echo "FAIL: native phase: restoring tokengate"
    failed=$((failed + 1))
  fi
  cleanup || true
  rm -rf "${work:?}"
  echo "$passed passed, $failed failed"
  if ((failed > 0)); then exit 1; fi
  exit 0
}

fatal() {
  echo "FAIL: setup: $*"
  failed=$((failed + 1))
  exit 1
}

wait_for_namespaces_gone() {
  local ns deadline=$((SECONDS + 180))
  for ns in "$NAMESPACE" "$OUTSIDE_NAMESPACE"; do
    while [[ $(k get namespace "$ns" -o jsonpath='{.status.phase}' 2>/dev/null || true) == Terminating ]]; do
      if ((SECONDS >= deadline)); then
        fatal "namespace $ns is still terminating after 180s (an API server without a namespace controller" \
          "never finishes: remove its finalizer with kubectl replace --raw /api/v1/namespaces/$ns/finalize)"
      fi
      sleep 2
    done
  done
}

case $MODE in
  cluster | local) ;;
  *) echo "MODE must be cluster or local, not \"$MODE\"" >&2; exit 2 ;;
esac
if [[ -n $NODE_CERT || -n $NODE_KEY ]]; then
  [[ -r $NODE_CERT && -r $NODE_KEY ]] || { echo "NODE_CERT and NODE_KEY must both name readable files" >&2; exit 2; }
  if [[ -z $NODE_NAME ]]; then
    NODE_NAME=$(openssl x509 -in "$NODE_CERT" -noout -subject -nameopt RFC2253 2>/dev/null |
      sed -n 's/.*CN=system:node:\([^,]*\).*/\1/p') || true
    [[ -n $NODE_NAME ]] || { echo "set NODE_NAME: no CN=system:node:<name> found in $NODE_CERT" >&2; exit 2; }
  fi
fi

work=$(mktemp -d)
trap finish EXIT

echo "tokengate e2e: MODE=$MODE, cluster $(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}' 2>/dev/null || echo '?')"
echo "--- setup"
k get namespace "$SYSTEM_NAMESPACE" -o name >/dev/null || fatal "namespace $SYSTEM_NAMESPACE not found: is tokengate installed?"
k get mutatingwebhookconfiguration tokengate -o name >/dev/null || fatal "MutatingWebhookConfiguration tokengate not found"
k get validatingwebhookconfiguration tokengate -o name >/dev/null || fatal "ValidatingWebhookConfiguration tokengate not found"

# The policy to put back at the end: the one found now, unless it is an earlier run's test policy.
if k get configmap "$POLICY_CONFIGMAP" -n "$SYSTEM_NAMESPACE" -o jsonpath='{.data.policy\.yaml}' > "$work/original-policy.yaml" 2>/dev/null &&
  [[ -s $work/original-policy.yaml ]] && ! grep -q "$MARKER_AUDIENCE" "$work/original-policy.yaml"; then
  restore_policy_file=$work/original-policy.yaml
  note "the current policy will be restored at the end"
else
  note "manifests/policy/policy.yaml will be restored at the end"
fi

wait_for_namespaces_gone
namespaces_manifest | ok "creating namespaces $NAMESPACE and $OUTSIDE_NAMESPACE" k apply -f - || fatal "cannot create the namespaces"
install_test_policy || fatal "tests/e2e/policy.yaml is not in force; does tokengate read ConfigMap $SYSTEM_NAMESPACE/$POLICY_CONFIGMAP?"
note "tests/e2e/policy.yaml is in force"

if [[ $phase == native ]]; then
  run_native_phase
  exit 0
fi

run_scenario "compliant pod is admitted" scenario_compliant_pod
run_scenario "pod with a forbidden audience is denied" scenario_forbidden_audience
run_scenario "vault outside e2e-* namespaces is denied" scenario_namespace_denial
run_scenario "token lifetime above the audience's maximum is denied" scenario_lifetime_denial
run_scenario "IRSA injection adds volume, mounts and env" scenario_injection
run_scenario "pod-label injection: added, opted out, refused on a colliding volume" scenario_label_injection
run_scenario "CSIDriver with a forbidden audience or without republish is denied" scenario_csidriver_forbidden
run_scenario "CSIDriver secrets-store with republish is admitted" scenario_csidriver_allowed
run_scenario "kubectl create token follows the allow-list" scenario_token_request
run_scenario "Deployment with a forbidden audience is denied at apply time" scenario_deployment
if [[ -n $NODE_CERT ]]; then
  run_scenario "node TokenRequests are limited to the bound pod's audiences" scenario_node_token_request
else
  skip "node TokenRequests are limited to the bound pod's audiences" "NODE_CERT and NODE_KEY not set"
fi
run_scenario "a ConfigMap policy change takes effect" scenario_policy_change
run_scenario "an invalid policy is refused and the last good one kept" scenario_invalid_policy
if [[ $MODE == cluster ]]; then
  run_scenario "deleting a tokengate pod under traffic fails no request" scenario_pod_deletion
else
  # Not a skip: with MODE=local there are no tokengate pods to delete.
  echo "--- deleting a tokengate pod under traffic: not part of MODE=local (no tokengate pods)"
fi
