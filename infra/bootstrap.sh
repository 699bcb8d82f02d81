#!/usr/bin/env bash
# Set up eomae on a fresh Debian machine (Python 3.11, root) and run it. Idempotent: a
# second run reuses the system packages and the virtual environment and starts at once.
#
#   bash infra/bootstrap.sh demo         # sample world -> local STAC API + COG server -> pipeline
#   bash infra/bootstrap.sh test [ARGS]  # the test suite (ARGS go to pytest)
#   bash infra/bootstrap.sh install      # only install
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EOMAE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
APT_PACKAGES=(postgresql-15 postgresql-15-postgis-3)
export PIP_CONSTRAINT="$ROOT/constraints.txt"  # every pip call: torch stays 2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

install_system() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { log "need root to install: ${missing[*]}"; exit 1; }
    sudo=(sudo)
  fi
  log "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

install_python() {
  command -v "$PYTHON" >/dev/null || PYTHON=python3
  # Re-install only when what we depend on changed.
  local stamp="$VENV/.eomae-installed" want
  want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  log "installing eomae and its dependencies into $VENV (first time: a few minutes)"
  "$VENV/bin/pip" install -q -e "$ROOT[dev]"
  echo "$want" > "$stamp"
}

cmd="${1:-demo}"; shift || true
install_system
install_python
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
case "$cmd" in
  install) log "installed; activate with: source $VENV/bin/activate" ;;
  demo)
    # One machine, loopback only: no Ray auth token, no usage-stats calls (overridable).
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
    export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
    exec eomae demo "$@"
    ;;
  test)
    # Ray: no auth prompts, quick failure detection, no usage-stats network calls.
    export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=1
    exec python -m pytest "$@"
    ;;
  *) log "unknown command '$cmd' (use: demo | test | install)"; exit 2 ;;
esac
