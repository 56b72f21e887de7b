#!/usr/bin/env bash
# make bench: our service against the seed design (bench/baseline), everything on 127.0.0.1.
# Prints a table and writes it to bench/results/latest.md. Options go to bench/run.py (see --help);
# BENCH_QUICK=1 is a one-minute smoke run. Takes about 6-7 minutes otherwise.
set -uo pipefail
# shellcheck source=scripts/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$REPO_ROOT" || exit 1

# wrk from Debian's packages when we may install it; otherwise bench/run.py falls back to its Python generator.
ensure_wrk() {
  command -v wrk >/dev/null && return 0
  if is_root && command -v apt-get >/dev/null; then
    log "installing wrk from Debian's packages"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }; } \
      >"$CACHE_DIR/apt-wrk.log" 2>&1 && return 0
    warn "apt-get could not install wrk (log: $CACHE_DIR/apt-wrk.log)"
  fi
  warn "wrk is not available: the Python load generator is used (install wrk for better figures)"
}

ensure_venv || exit 1
install_requirements bench-requirements "$REPO_ROOT/requirements-bench.txt" || exit 1
ensure_wrk
# The baseline must answer like our API, or the comparison is meaningless: check that first.
log "bench/test_bench_smoke.py: the baseline and our API answer alike"
"$VENV_DIR/bin/python" -m pytest -q -p no:cacheprovider "$REPO_ROOT/bench/test_bench_smoke.py" || exit 1
"$VENV_DIR/bin/python" "$REPO_ROOT/bench/run.py" "$@"
status=$?
# The settlement history's queries and size (bench/bench_history.py; BENCH_HISTORY_* options); BENCH_HISTORY=0 skips.
if [[ "${BENCH_HISTORY:-1}" != "0" ]]; then
  if [[ "${BENCH_QUICK:-0}" =~ ^(1|true|yes)$ ]]; then
    export BENCH_HISTORY_SYMBOLS="${BENCH_HISTORY_SYMBOLS:-50}" BENCH_HISTORY_SETTLEMENTS="${BENCH_HISTORY_SETTLEMENTS:-1000}"
  fi
  "$VENV_DIR/bin/python" "$REPO_ROOT/bench/bench_history.py" || status=1
fi
exit "$status"
