#!/usr/bin/env bash
# Checks the deployment manifests and the end-to-end suite without docker or a cluster:
#
#   tests/e2e/check.sh
#
#   - shellcheck on every script under tests/e2e/, certs/ and benches/load/;
#   - every kustomize overlay (and the base) rendered with kubectl kustomize, with certificates
#     from certs/generate.sh made in a temporary copy (the work tree is left alone), and the
#     rendered objects validated with kubernetes-validate --strict against Kubernetes 1.37.0
#     (cert-manager's kinds have no schema there: warnings, not failures);
#   - the generated certificate verified as kube-apiserver will (openssl verify -purpose
#     sslserver, SANs, serverAuth) and its CA in the overlays' caBundles; the dev overlay running
#     tokengate:dev, the local one pointing every webhook at https://127.0.0.1:8443;
#   - tests/e2e/policy.yaml valid (tokengate policy validate) and its derived variants as
#     expected;
#   - the objects the scenarios create (scenarios.sh --render) valid for Kubernetes 1.37.0 and
#     judged by tokengate check as the scenarios expect: admitted ones pass, each denied one fails;
#   - tests/e2e/kind.sh --dry-run and tests/e2e/local.sh --dry-run exit 0 and print the commands
#     they are meant to run.
#
# Needs shellcheck (apt-get install -y shellcheck), kubectl, kubernetes-validate
# (pip install kubernetes-validate), openssl and cargo. Ends with "N passed, M failed" and exits
# 1 when any check failed.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}
case "${1:-}" in
  "") ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/../.."

readonly K8S_VERSION=1.37.0
passed=0
failed=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# check NAME COMMAND...: runs COMMAND, output to a log shown only on failure.
check() {
  local name=$1 log
  shift
  log=$work/check-$((passed + failed)).log
  if "$@" > "$log" 2>&1; then
    echo "ok:     $name"
    passed=$((passed + 1))
  else
    echo "FAILED: $name"
    sed 's/^/        /' "$log"
    failed=$((failed + 1))
  fi
}

# expect_status STATUS COMMAND...: COMMAND must exit with STATUS (0 = success).
expect_status() {
  local want=$1 got=0
  shift
  "$@" || got=$?
  if ((got != want)); then
    echo "exit status $got, expected $want: $*"
    return 1
  fi
}

# Runs tokengate from this work tree; built on first use.
tokengate() {
  cargo run --quiet -- "$@"
}

# kubernetes-validate: fails on errors, and on warnings other than cert-manager's missing schemas.
validate_objects() {
  local output status=0 line bad=0
  output=$(kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$@" 2>&1) || status=$?
  printf '%s\n' "$output"
  while IFS= read -r line; do
    [[ -n $line ]] || continue
    case $line in
      WARN*"Couldn't find schema for kind "*" with api version cert-manager.io/"*) ;;
      *) bad=1 ;;
    esac
  done <<<"$output"
  ((status == 0 && bad == 0))
}

shell_scripts() {
  find tests/e2e certs benches/load -type f -name '*.sh' | sort
}

run_shellcheck() {
  command -v shellcheck >/dev/null || { echo "shellcheck is not installed (apt-get install -y shellcheck)"; return 1; }
  local -a scripts
  mapfile -t scripts < <(shell_scripts)
  echo "${scripts[*]}"
  shellcheck -x "${scripts[@]}"
}

# Renders the base and every overlay from a copy of manifests/ and certs/, so certs/generate.sh
# writes its files there rather than into the work tree.
render_manifests() {
  local copy=$work/repo dir name
  mkdir -p "$copy"
  cp -R manifests certs "$copy/"
  rm -rf "$copy/certs/out" "$copy"/manifests/overlays/*/generated
  "$copy/certs/generate.sh" "$copy/certs/out"
  mkdir -p "$work/rendered"
  for dir in "$copy/manifests/base" "$copy/manifests/webhooks" "$copy"/manifests/overlays/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    kubectl kustomize "$dir" > "$work/rendered/$name.yaml"
    echo "rendered $name: $(grep -c '^kind:' "$work/rendered/$name.yaml") objects"
  done
}

validate_rendered() {
  local -a files
  mapfile -t files < <(find "$work/rendered" -name '*.yaml' | sort)
  ((${#files[@]} >= 5)) || { echo "expected the base, the webhooks and three overlays, rendered: ${files[*]}"; return 1; }
  validate_objects "${files[@]}"
}

# The certificate certs/generate.sh made verifies the way kube-apiserver will check it, and the
# rendered overlays carry its CA.
check_certificate() {
  local out=$work/repo/certs/out text want ca_bundle
  openssl verify -CAfile "$out/ca.crt" -purpose sslserver "$out/tls.crt" || return 1
  text=$(openssl x509 -in "$out/tls.crt" -noout -text)
  for want in DNS:tokengate.tokengate-system.svc DNS:tokengate.tokengate-system.svc.cluster.local \
    "IP Address:127.0.0.1" "TLS Web Server Authentication" CA:FALSE; do
    grep -qF -- "$want" <<<"$text" || { echo "the serving certificate lacks $want"; return 1; }
  done
  ca_bundle=$(base64 < "$out/ca.crt" | tr -d '\n')
  for want in dev local; do
    [[ $(grep -cF -- "caBundle: $ca_bundle" "$work/rendered/$want.yaml") == 6 ]] ||
      { echo "overlay $want does not carry the generated CA in all 6 webhooks"; return 1; }
  done
  echo "certificate and caBundles consistent"
}

# What kind.sh and local.sh rely on in the overlays.
check_overlays_for_scripts() {
  local dev=$work/rendered/dev.yaml local=$work/rendered/local.yaml result=0
  grep -q 'image: tokengate:dev$' "$dev" || { echo "overlay dev does not run image tokengate:dev"; result=1; }
  grep -q 'name: tokengate-tls$' "$dev" || { echo "overlay dev has no Secret tokengate-tls"; result=1; }
  [[ $(grep -c 'url: https://127.0.0.1:8443/\(validate\|mutate\)$' "$local") == 6 ]] ||
    { echo "overlay local does not point all 6 webhooks at https://127.0.0.1:8443"; result=1; }
  if grep -qE '^kind: (Deployment|Service|PodDisruptionBudget)$' "$local"; then
    echo "overlay local still has a Deployment, Service or PodDisruptionBudget"
    result=1
  fi
  grep -q '^  name: tokengate-policy$' "$local" || { echo "overlay local has no policy ConfigMap"; result=1; }
  return "$result"
}

render_scenario_objects() {
  tests/e2e/scenarios.sh --render "$work/objects"
}

validate_scenario_objects() {
  local -a files
  mapfile -t files < <(find "$work/objects/admitted" "$work/objects/denied" -name '*.yaml' | sort)
  validate_objects "${files[@]}"
}

# Every object the scenarios expect to be admitted passes tokengate check.
check_admitted() {
  tokengate check --policy tests/e2e/policy.yaml "$work/objects/admitted"
}

# Each object the scenarios expect to be denied fails tokengate check on its own (exit 1, not 2).
check_denied() {
  local file result=0
  for file in "$work"/objects/denied/*.yaml; do
    expect_status 1 tokengate check --policy tests/e2e/policy.yaml --objects "$work/objects/admitted/namespaces.yaml" "$file" ||
      result=1
  done
  # The readiness probes of kind.sh and local.sh run before the test policy is installed.
  for file in "$work/objects/denied/pod-probe.yaml" "$work/objects/denied/csidriver-probe.yaml"; do
    expect_status 1 tokengate check --policy manifests/base/policy.yaml "$file" || result=1
  done
  return "$result"
}

# A dry run must succeed and print the commands that matter.
dry_run_prints() {
  local script=$1 output want missing=0
  shift
  output=$("$script" --dry-run) || { echo "$script --dry-run failed"; return 1; }
  printf '%s\n' "$output"
  for want in "$@"; do
    if ! grep -qF -- "$want" <<<"$output"; then
      echo "MISSING from the dry run: $want"
      missing=1
    fi
  done
  return "$missing"
}

kind_config_nodes() {
  local control_planes workers
  control_planes=$(grep -cE '^ *- role: control-plane *$' tests/e2e/kind-config.yaml || true)
  workers=$(grep -cE '^ *- role: worker *$' tests/e2e/kind-config.yaml || true)
  echo "control planes: $control_planes, workers: $workers"
  ((control_planes == 1 && workers == 2))
}

parse_workflow() {
  if ! python3 -c 'import yaml' 2>/dev/null; then
    echo "python3 with PyYAML not available: only looking for the commands"
    grep -qF tests/e2e/kind.sh .github/workflows/e2e.yaml && grep -qF shellcheck .github/workflows/e2e.yaml
    return
  fi
  python3 - .github/workflows/e2e.yaml <<'PY'
import sys, yaml
with open(sys.argv[1]) as f:
    workflow = yaml.safe_load(f)
jobs = workflow["jobs"]
runs = " ".join(step.get("run", "") for job in jobs.values() for step in job["steps"])
assert "tests/e2e/kind.sh" in runs, "no job runs tests/e2e/kind.sh"
assert "shellcheck" in runs, "no job runs shellcheck"
print("jobs:", ", ".join(jobs))
PY
}

check "shellcheck tests/e2e, certs and benches/load scripts" run_shellcheck
check "render the base and every overlay (kubectl kustomize)" render_manifests
check "rendered manifests valid for Kubernetes $K8S_VERSION (kubernetes-validate --strict)" validate_rendered
check "generated certificate verifies as kube-apiserver will check it" check_certificate
check "overlays dev and local are what kind.sh and local.sh expect" check_overlays_for_scripts
check "tests/e2e/policy.yaml is a valid policy" tokengate policy validate tests/e2e/policy.yaml
check "render the scenario objects (scenarios.sh --render)" render_scenario_objects
check "scenario objects valid for Kubernetes $K8S_VERSION" validate_scenario_objects
check "the policy variant allowing evil.example.com is valid" tokengate policy validate "$work/objects/policies/evil.yaml"
check "the garbage policy is refused" expect_status 1 tokengate policy validate "$work/objects/policies/garbage.yaml"
check "objects the scenarios expect admitted pass tokengate check" check_admitted
check "objects the scenarios expect denied fail tokengate check" check_denied
check "tests/e2e/kind.sh --dry-run" dry_run_prints tests/e2e/kind.sh \
  "kind create cluster --name tokengate-e2e --config tests/e2e/kind-config.yaml" \
  "docker build -t tokengate:dev ." \
  "kind load docker-image tokengate:dev" \
  "certs/generate.sh" \
  "kubectl apply -k manifests/overlays/dev" \
  "kubectl rollout status deployment/tokengate" \
  "kubectl create --dry-run=server" \
  "MODE=cluster" \
  "kind delete cluster --name tokengate-e2e"
check "tests/e2e/local.sh --dry-run" dry_run_prints tests/e2e/local.sh \
  "certs/generate.sh" \
  "kubectl apply -k manifests/overlays/local" \
  "cargo build --release --locked" \
  "target/release/tokengate serve --policy-configmap tokengate-system/tokengate-policy --tls-cert certs/out/tls.crt --tls-key certs/out/tls.key --listen 127.0.0.1:8443 --admin-listen 127.0.0.1:8080 --manage-webhooks --webhook-url https://127.0.0.1:8443 --webhook-ca-bundle certs/out/ca.crt" \
  "http://127.0.0.1:8080/readyz" \
  "MODE=local" \
  "kubectl delete mutatingwebhookconfiguration tokengate" \
  "kubectl delete validatingwebhookconfiguration tokengate"
check "tests/e2e/kind-config.yaml has one control plane and two workers" kind_config_nodes
check ".github/workflows/e2e.yaml parses and runs kind.sh and shellcheck" parse_workflow

echo "$passed passed, $failed failed"
((failed == 0))
