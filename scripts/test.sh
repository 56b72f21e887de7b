#!/usr/bin/env bash
# The project's one test command (make test): bootstrap what is missing, then every check in order.
#   scripts/test.sh                 everything: lint, unit and end-to-end pytest, every Molecule scenario
#   scripts/test.sh unit            pytest for the programs only (no Docker)
#   scripts/test.sh lint            yamllint, ansible-lint, ruff
#   scripts/test.sh molecule [S..]  Molecule scenarios only (default: all of them)
set -uo pipefail
# shellcheck source=scripts/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$REPO_ROOT" || exit 1

what=${1:-all}
shift || true
SCENARIOS=("$@")
# Every scenario but these, default first. demo is the README's demo.
NOT_IN_MAKE_TEST=" demo "
if [ ${#SCENARIOS[@]} -eq 0 ]; then
  SCENARIOS=(default)
  for dir in molecule/*/; do
    name=$(basename "$dir")
    [ -f "$dir/molecule.yml" ] && [ "$name" != default ] && [[ "$NOT_IN_MAKE_TEST" != *" $name "* ]] \
      && SCENARIOS+=("$name")
  done
fi

started=$(date +%s)
finish() {
  local rc=$?
  stop_docker_engine_if_started
  print_phase_summary
  printf '%-28s %5ss  %s\n' "total" "$(($(date +%s) - started))" "$([ $rc -eq 0 ] && echo PASSED || echo FAILED)" >&2
  exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

export PATH="$VENV_DIR/bin:$PATH:$CACHE_DIR/bin"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0

run_lint() {
  phase "yamllint" yamllint --strict . || return 1
  phase "ansible-lint (production)" ansible-lint --profile production --offline || return 1
  phase "ruff" ruff check . || return 1
}

run_unit() {
  phase "bootstrap: promtool" ensure_promtool || return 1
  phase "bootstrap: chromium" ensure_chromium || return 1
  phase "pytest (programs)" python -m pytest tests -q -p no:cacheprovider || return 1
  phase "python 3.9 (oldest supported)" run_oldest_python || return 1
}

# The programs promise Python >= 3.9: where a 3.9 interpreter exists, import every program and run the unit tests
# of the pure modules under it.
run_oldest_python() {
  local py="" venv="$CACHE_DIR/venv-py39" program candidate
  for candidate in ${FUNDING_PYTHON39:-} python3.9 /usr/bin/python3.9 /root/.pyenv/versions/3.9*/bin/python; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' >/dev/null 2>&1; then
      py=$candidate
      break
    fi
  done
  if [ -z "$py" ]; then
    log "no Python 3.9 interpreter on this machine (set FUNDING_PYTHON39): skipped"
    return 0
  fi
  local want
  want=$(sha256sum roles/funding/files/requirements.txt | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    { [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"; } && "$venv/bin/pip" install --quiet \
      --disable-pip-version-check -r roles/funding/files/requirements.txt pytest hypothesis pyyaml prometheus-client \
      >"$CACHE_DIR/venv-py39.log" 2>&1 \
      || { rm -rf "$venv"; tail -n 20 "$CACHE_DIR/venv-py39.log" >&2; return 1; }
    echo "$want" >"$venv/.requirements.sha256"
  fi
  for program in roles/funding/files/binance_funding_ws_daemon.py roles/funding/files/funding_api_server.py \
      roles/funding/files/funding_health_monitor.py roles/funding/files/funding_rest_comparison.py \
      roles/funding/files/funding_history_recorder.py; do
    "$venv/bin/python" "$program" --help >/dev/null || { warn "$program --help fails on Python 3.9"; return 1; }
  done
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_feed.py tests/test_daemon_units.py \
    tests/test_api_units.py tests/test_role_variables.py tests/test_terms.py tests/test_history_store.py \
    tests/test_daemon_gap_streams.py tests/test_api_stream_units.py tests/test_api_versions.py
}

# The fleet scenario's rollout runs with the oldest ansible-core the role supports (requirements-ansible-oldest.txt),
# reaching the containers with the dev virtualenv's community.docker connection plugin.
use_oldest_ansible_for_fleet() {
  ensure_oldest_ansible || return 1
  FUNDING_FLEET_ANSIBLE_PLAYBOOK=$OLDEST_ANSIBLE_VENV/bin/ansible-playbook
  FUNDING_FLEET_ANSIBLE_CORE=$(sed -n 's/^ansible-core==//p' "$REPO_ROOT/requirements-ansible-oldest.txt")
  FUNDING_FLEET_COLLECTIONS_PATH=$("$VENV_DIR/bin/python" -c \
    'import ansible_collections, os; print(os.path.dirname(list(ansible_collections.__path__)[0]))') || return 1
  export FUNDING_FLEET_ANSIBLE_PLAYBOOK FUNDING_FLEET_ANSIBLE_CORE FUNDING_FLEET_COLLECTIONS_PATH
}

run_molecule() {
  local scenario
  if [[ " ${SCENARIOS[*]} " == *" fleet "* ]]; then
    phase "bootstrap: oldest ansible-core" use_oldest_ansible_for_fleet || return 1
  fi
  for scenario in "${SCENARIOS[@]}"; do
    phase "molecule test -s $scenario" molecule test -s "$scenario" || return 1
  done
}

phase "bootstrap: virtualenv" ensure_venv || exit 1
case "$what" in
  lint) run_lint ;;
  unit) run_unit ;;
  molecule|all)
    if [ "$what" = all ]; then
      run_lint || exit 1
      run_unit || exit 1
    fi
    phase "bootstrap: docker engine" ensure_docker || exit 1
    phase "bootstrap: images" ensure_images || exit 1
    phase "bootstrap: wheelhouse" ensure_wheelhouse || exit 1
    run_molecule
    ;;
  *) die "usage: scripts/test.sh [all|unit|lint|molecule [SCENARIO...]]" ;;
esac
