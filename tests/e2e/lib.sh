# Helpers shared by kind.sh and local.sh (sourced, not run): argument parsing, --dry-run
# printing, creating the policy once, waiting for the webhooks.
# shellcheck shell=bash

dry_run=0

# usage: the calling script's header comment (line 2 up to `set -euo`).
usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

# parse_runner_args ARGS...: --dry-run sets dry_run=1; --help prints usage; anything else fails.
parse_runner_args() {
  local arg
  for arg in "$@"; do
    case $arg in
      --dry-run) dry_run=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
  done
}

# run CMD...: run a command, or print it under --dry-run.
run() {
  if ((dry_run)); then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# run_to FILE CMD...: run a command with its output into FILE, or print it under --dry-run.
run_to() {
  local file=$1
  shift
  if ((dry_run)); then
    printf '+'
    printf ' %q' "$@"
    printf ' > %q\n' "$file"
  else
    "$@" > "$file"
  fi
}

say() { printf '==> %s\n' "$*"; }

# create_policy NAMESPACE: the install's first step, as docs/install.md gives it: the policy ConfigMap
# (manifests/policy, mode Warn) created once. An existing one is the admins' and is left alone.
create_policy() {
  local namespace=$1
  if ((!dry_run)) && kubectl get configmap tokengate-policy -n "$namespace" >/dev/null 2>&1; then
    echo "the policy ConfigMap $namespace/tokengate-policy exists: left as it is"
    return 0
  fi
  # `create` refuses what exists (the namespace, on a cluster tokengate was installed on before)
  # and creates the rest: what counts is that the ConfigMap exists afterwards.
  run kubectl create --save-config -k manifests/policy || true
  if ((!dry_run)); then
    kubectl get configmap tokengate-policy -n "$namespace" >/dev/null ||
      { echo "kubectl create -k manifests/policy did not create $namespace/tokengate-policy" >&2; return 1; }
  fi
}

# wait_for_tokengate PROBE_FILE SECONDS WHERE: repeats a server-side dry-run create of an object
# the policy forbids until tokengate answers it: denied by tokengate (mode Enforce) or admitted
# with tokengate's warning (mode Warn, as installed), not "failed calling webhook ..." and not
# admitted silently (webhooks not registered yet).
wait_for_tokengate() {
  local probe_file=$1 limit=$2 where=$3 answer deadline
  local probe=(kubectl create --dry-run=server -f "$probe_file")
  if ((dry_run)); then
    run "${probe[@]}"
    echo "# (repeated until the error comes from tokengate, for up to $limit s)"
    return 0
  fi
  deadline=$((SECONDS + limit))
  while true; do
    answer=$("${probe[@]}" 2>&1) || true
    # Not just "tokengate": an unreachable webhook is reported as "failed calling webhook ...tokengate.dev".
    if [[ $answer == *"denied the request: tokengate:"* || $answer == *"Warning: tokengate:"* ]]; then break; fi
    if ((SECONDS >= deadline)); then
      echo "the API server does not get answers from tokengate $where within $limit s; last answer: $answer" >&2
      return 1
    fi
    sleep 1
  done
  echo "tokengate answers: ${answer%%$'\n'*}"
}
