#!/usr/bin/env bash
# The README's "run the service" command.
#   scripts/demo.sh up     deploy site.yml into a local systemd container, then show /funding/health and BTCUSDT
#   scripts/demo.sh down   remove the container
# FUNDING_EXCHANGE=auto (default) uses Binance when fstream.binance.com:443 answers and the simulated exchange
# otherwise; =binance or =simulator forces one.
set -uo pipefail
# shellcheck source=scripts/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$REPO_ROOT" || exit 1
export PATH="$VENV_DIR/bin:$PATH" ANSIBLE_FORCE_COLOR=0

binance_reachable() {
  timeout 4 bash -c 'exec 3<>/dev/tcp/fstream.binance.com/443' 2>/dev/null
}

choose_exchange() {
  case "${FUNDING_EXCHANGE:-auto}" in
    simulator) echo simulator ;;
    binance) echo binance ;;
    auto) if binance_reachable; then echo binance; else echo simulator; fi ;;
    *) die "FUNDING_EXCHANGE must be auto, binance or simulator" ;;
  esac
}

up() {
  ensure_venv
  ensure_docker
  build_image "$MOLECULE_DEBIAN12_IMAGE" bookworm
  ensure_wheelhouse
  if [ "$(choose_exchange)" = binance ]; then
    log "Binance answers: the demo uses the real exchange"
    export FUNDING_DEMO_WS_URL="wss://fstream.binance.com/market/stream?streams=!markPrice@arr"
    export FUNDING_DEMO_REST_URL="https://fapi.binance.com"
  else
    log "no route to Binance (or FUNDING_EXCHANGE=simulator): the demo uses the simulated exchange on 127.0.0.1:9000"
  fi
  molecule converge -s demo || die "the deployment failed; see the output above"
  log "curl -s localhost:8888/funding/health"
  curl -s localhost:8888/funding/health; echo
  log "curl -s localhost:8888/funding/BTCUSDT"
  curl -s localhost:8888/funding/BTCUSDT; echo
  log "the service runs in container binance-funding-demo; logs: docker exec binance-funding-demo journalctl -u binance-funding-ws"
  log "stop it with: make demo-down"
}

down() {
  ensure_venv
  molecule destroy -s demo
  stop_docker_engine_if_started
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) die "usage: scripts/demo.sh up|down" ;;
esac
