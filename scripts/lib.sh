# shellcheck shell=bash
# Helpers shared by the scripts in this folder: messages, failures, phase timing, settings.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_DIR=${FUNDING_VENV:-$REPO_ROOT/.venv}
CACHE_DIR=${FUNDING_CACHE_DIR:-$REPO_ROOT/.cache}
WHEELHOUSE=${FUNDING_WHEELHOUSE:-$CACHE_DIR/wheelhouse}
# The systemd test images; point these at e.g. a public Debian/Ubuntu systemd image to test on it instead.
MOLECULE_DEBIAN12_IMAGE=${MOLECULE_DEBIAN12_IMAGE:-binance-funding/systemd-debian:12}
MOLECULE_DEBIAN13_IMAGE=${MOLECULE_DEBIAN13_IMAGE:-binance-funding/systemd-debian:13}
export MOLECULE_DEBIAN12_IMAGE MOLECULE_DEBIAN13_IMAGE
DOCKERD_PIDFILE=$CACHE_DIR/dockerd.pid
DOCKERD_LOG=$CACHE_DIR/dockerd.log

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# phase NAME COMMAND...: run a step, time it, remember the figure for the summary.
PHASE_SUMMARY=()
phase() {
  local name=$1; shift
  local start end rc
  log "$name"
  start=$(date +%s)
  "$@"; rc=$?
  end=$(date +%s)
  PHASE_SUMMARY+=("$(printf '%-28s %5ss  %s' "$name" "$((end - start))" "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")")")
  return $rc
}

print_phase_summary() {
  [ ${#PHASE_SUMMARY[@]} -gt 0 ] || return 0
  printf '\n%-28s %6s  %s\n' "phase" "time" "result" >&2
  printf '%s\n' "${PHASE_SUMMARY[@]}" >&2
}

is_root() { [ "$(id -u)" -eq 0 ]; }
