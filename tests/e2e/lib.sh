# Helpers shared by kind.sh and local.sh (sourced, not run): argument parsing, --dry-run
# printing, waiting for the webhooks.
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

# wait_for_tokengate PROBE_FILE SECONDS WHERE: repeats a server-side dry-run create of an object
# tokengate denies until the denial comes from tokengate (not "failed calling webhook ...").
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
    if [[ $answer == *"denied the request: tokengate:"* ]]; then break; fi
    if ((SECONDS >= deadline)); then
      echo "the API server does not get answers from tokengate $where within $limit s; last answer: $answer" >&2
      return 1
    fi
    sleep 1
  done
  echo "tokengate answers: ${answer%%$'\n'*}"
}
