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
# Every scenario but the demo, default first.
if [ ${#SCENARIOS[@]} -eq 0 ]; then
  SCENARIOS=(default)
  for dir in molecule/*/; do
    name=$(basename "$dir")
    [ -f "$dir/molecule.yml" ] && [ "$name" != default ] && [ "$name" != demo ] && SCENARIOS+=("$name")
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

export PATH="$VENV_DIR/bin:$PATH"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0

run_lint() {
  phase "yamllint" yamllint --strict . || return 1
  phase "ansible-lint (production)" ansible-lint --profile production --offline || return 1
  phase "ruff" ruff check . || return 1
}

run_unit() {
  phase "pytest (programs)" python -m pytest tests -q -p no:cacheprovider || return 1
}

run_molecule() {
  local scenario
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
