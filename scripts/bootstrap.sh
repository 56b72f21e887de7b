#!/usr/bin/env bash
# Everything the tests and the demo need, made idempotent: the dev virtualenv, a Docker engine, the systemd
# test images (built from Debian's packages with debootstrap) and the wheelhouse of runtime dependencies.
# Sourced by scripts/test.sh and scripts/demo.sh; run on its own it prepares everything and leaves dockerd running.
set -uo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEBIAN_MIRROR=${FUNDING_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the role and the tests need in the image: nothing is installed in it later (its containers have no network).
IMAGE_PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,python3-packaging,sudo,curl,ca-certificates,iproute2,procps
STARTED_DOCKERD=0
mkdir -p "$CACHE_DIR"

# install_requirements LABEL FILE [HASHED_FILE...]: pip install -r FILE into the venv unless the hash of FILE and the
# other files is the one recorded for LABEL, so a warm venv costs nothing and a changed pin refreshes it.
install_requirements() {
  local label=$1 file=$2 stamp want
  stamp="$VENV_DIR/.$label.sha256"
  want=$(cat "${@:2}" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    log "$label in $VENV_DIR: up to date"
    return 0
  fi
  log "installing $(basename "$file") into $VENV_DIR"
  if ! "$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check -r "$file" >"$CACHE_DIR/pip-$label.log" 2>&1; then
    tail -n 20 "$CACHE_DIR/pip-$label.log" >&2
    die "pip could not install $file (PyPI unreachable or a pin unavailable; log: $CACHE_DIR/pip-$label.log)"
  fi
  echo "$want" >"$stamp"
}

ensure_venv() {
  if [ ! -x "$VENV_DIR/bin/python" ]; then
    log "creating virtualenv $VENV_DIR"
    python3 -m venv "$VENV_DIR" || die "python3 -m venv failed: install python3-venv (apt-get install -y python3-venv)"
  fi
  install_requirements requirements "$REPO_ROOT/requirements-dev.txt" \
    "$REPO_ROOT/roles/funding/files/requirements.txt" "$REPO_ROOT/roles/binance_simulator/files/simulator-requirements.txt"
}

ensure_docker_packages() {
  command -v dockerd >/dev/null && command -v debootstrap >/dev/null && return 0
  if ! is_root; then
    command -v docker >/dev/null && docker info >/dev/null 2>&1 && return 0
    die "Docker (and debootstrap) are not installed and this is not root. Install them first:
    sudo apt-get update && sudo apt-get install -y docker.io debootstrap && sudo systemctl start docker
  then run this command again (as a user in the docker group, or as root)."
  fi
  log "installing docker.io and debootstrap from Debian's packages"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap; } \
      >"$CACHE_DIR/apt-install.log" 2>&1; then
    tail -n 20 "$CACHE_DIR/apt-install.log" >&2
    die "apt-get could not install docker.io/debootstrap (Debian mirror unreachable?); log: $CACHE_DIR/apt-install.log"
  fi
}

# The browser test of the live page (tests/test_ui_browser.py) drives Debian's Chromium through its chromedriver.
ensure_chromium() {
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
  if ! is_root; then
    die "Chromium is not installed and this is not root. Install it first:
    sudo apt-get update && sudo apt-get install -y chromium chromium-driver
  then run this command again."
  fi
  log "installing chromium and chromium-driver from Debian's packages"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
      chromium chromium-driver; } >"$CACHE_DIR/apt-chromium.log" 2>&1; then
    tail -n 20 "$CACHE_DIR/apt-chromium.log" >&2
    die "apt-get could not install chromium/chromium-driver (Debian mirror unreachable?); log: $CACHE_DIR/apt-chromium.log"
  fi
}

ensure_docker_engine() {
  if docker info >/dev/null 2>&1; then
    log "using the Docker engine that is already running"
    return 0
  fi
  is_root || die "no Docker engine answers and this is not root: start it (sudo systemctl start docker) and retry"
  log "starting dockerd --bridge=none (log: $DOCKERD_LOG)"
  # --bridge=none keeps Docker off private address ranges; containers use the host's or no network.
  dockerd --bridge=none --iptables=false --ip6tables=false >"$DOCKERD_LOG" 2>&1 &
  echo $! >"$DOCKERD_PIDFILE"
  STARTED_DOCKERD=1
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null || break
    sleep 1
  done
  tail -n 20 "$DOCKERD_LOG" >&2
  die "dockerd did not come up within 60 s; log: $DOCKERD_LOG"
}

stop_docker_engine_if_started() {
  [ "$STARTED_DOCKERD" = 1 ] || return 0
  local pid
  pid=$(cat "$DOCKERD_PIDFILE" 2>/dev/null) || return 0
  log "stopping the dockerd this run started (pid $pid)"
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -9 "$pid" 2>/dev/null
  rm -f "$DOCKERD_PIDFILE"
  STARTED_DOCKERD=0
mkdir -p "$CACHE_DIR"
}

# build_image IMAGE SUITE: a systemd-enabled Debian image from Debian's packages, once.
build_image() {
  local image=$1 suite=$2 rootfs
  case "$image" in
    binance-funding/*) ;;
    *) log "image $image is not one this project builds; molecule will pull it"; return 0 ;;
  esac
  if [ "$(docker image inspect --format '{{ index .Config.Labels "funding.packages" }}' "$image" 2>/dev/null)" \
      = "$IMAGE_PACKAGES" ]; then
    log "image $image exists, reusing it"
    return 0
  fi
  is_root || die "building $image needs root (debootstrap); run as root or set the MOLECULE_*_IMAGE variables"
  rootfs=$(mktemp -d "$CACHE_DIR/rootfs-$suite.XXXXXX")
  log "building $image with debootstrap ($suite from $DEBIAN_MIRROR), about 1-2 minutes"
  if ! debootstrap --variant=minbase --include="$IMAGE_PACKAGES" "$suite" "$rootfs" "$DEBIAN_MIRROR" \
      >"$CACHE_DIR/debootstrap-$suite.log" 2>&1; then
    tail -n 20 "$CACHE_DIR/debootstrap-$suite.log" >&2
    rm -rf "$rootfs"
    die "debootstrap $suite failed (Debian mirror $DEBIAN_MIRROR unreachable?); log: $CACHE_DIR/debootstrap-$suite.log"
  fi
  # Keep the image small and apt usable inside it.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  if ! tar -C "$rootfs" -c . | docker import -c 'CMD ["/lib/systemd/systemd"]' -c 'ENV container=docker' \
      -c "LABEL funding.packages=$IMAGE_PACKAGES" - "$image" \
      >/dev/null; then
    rm -rf "$rootfs"
    die "docker import of $image failed"
  fi
  rm -rf "$rootfs"
}

ensure_images() {
  build_image "$MOLECULE_DEBIAN12_IMAGE" bookworm
  build_image "$MOLECULE_DEBIAN13_IMAGE" trixie
}

# The role installs offline from these wheels (the test containers cannot reach PyPI over HTTPS).
ensure_wheelhouse() {
  local stamp="$WHEELHOUSE/.requirements.sha256" want pyver
  want=$(cat "$REPO_ROOT/roles/funding/files/requirements.txt" "$REPO_ROOT/roles/binance_simulator/files/simulator-requirements.txt" \
    | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    log "wheelhouse $WHEELHOUSE is up to date"
    return 0
  fi
  log "downloading runtime wheels into $WHEELHOUSE"
  rm -rf "$WHEELHOUSE" && mkdir -p "$WHEELHOUSE"
  for pyver in 3.9 3.10 3.11 3.12 3.13; do
    if ! "$VENV_DIR/bin/pip" download --quiet --disable-pip-version-check --only-binary=:all: \
        --python-version "$pyver" -d "$WHEELHOUSE" \
        -r "$REPO_ROOT/roles/funding/files/requirements.txt" -r "$REPO_ROOT/roles/binance_simulator/files/simulator-requirements.txt" \
        >>"$CACHE_DIR/wheelhouse.log" 2>&1; then
      tail -n 20 "$CACHE_DIR/wheelhouse.log" >&2
      die "pip download for Python $pyver failed (PyPI unreachable?); log: $CACHE_DIR/wheelhouse.log"
    fi
  done
  echo "$want" >"$stamp"
}

# promtool (for the Prometheus rule tests) from Debian's prometheus package: only the binary, unpacked into
# .cache/bin with apt-get download + dpkg-deb, so no Prometheus server is installed or started on this machine.
ensure_promtool() {
  if command -v promtool >/dev/null || [ -x "$CACHE_DIR/bin/promtool" ]; then
    log "promtool: $(command -v promtool || echo "$CACHE_DIR/bin/promtool")"
    return 0
  fi
  local work
  work=$(mktemp -d "$CACHE_DIR/promtool.XXXXXX")
  log "fetching promtool from Debian's prometheus package into $CACHE_DIR/bin"
  if ! (cd "$work" && { apt-get download prometheus || { is_root && apt-get update -qq && apt-get download prometheus; }; }) \
      >"$CACHE_DIR/promtool.log" 2>&1; then
    tail -n 20 "$CACHE_DIR/promtool.log" >&2
    rm -rf "$work"
    die "apt-get download prometheus failed (Debian mirror unreachable?); or install it: sudo apt-get install prometheus"
  fi
  mkdir -p "$CACHE_DIR/bin"
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root" && install -m 0755 "$work/root/usr/bin/promtool" "$CACHE_DIR/bin/promtool"
  local rc=$?
  rm -rf "$work"
  [ $rc -eq 0 ] || die "could not unpack promtool from the prometheus package"
}

# The oldest ansible-core the role claims (requirements-ansible-oldest.txt) in its own virtualenv, for the fleet
# scenario's rollout. ansible-core 2.16's controller runs on Python 3.10-3.12, so one of those interpreters is used.
OLDEST_ANSIBLE_VENV=$CACHE_DIR/venv-ansible-oldest
ensure_oldest_ansible() {
  local file="$REPO_ROOT/requirements-ansible-oldest.txt" want py="" candidate
  want=$(sha256sum "$file" | cut -d' ' -f1)
  if [ -x "$OLDEST_ANSIBLE_VENV/bin/ansible-playbook" ] \
      && [ "$(cat "$OLDEST_ANSIBLE_VENV/.requirements.sha256" 2>/dev/null)" = "$want" ]; then
    log "oldest ansible-core in $OLDEST_ANSIBLE_VENV: $("$OLDEST_ANSIBLE_VENV/bin/ansible-playbook" --version | head -1)"
    return 0
  fi
  for candidate in ${FUNDING_ANSIBLE_OLDEST_PYTHON:-} python3.12 python3.11 python3.10 python3; do
    if "$candidate" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' >/dev/null 2>&1; then
      py=$candidate
      break
    fi
  done
  [ -n "$py" ] || die "the oldest ansible-core ($(grep -v '^#' "$file")) needs a Python 3.10-3.12 controller; none found (set FUNDING_ANSIBLE_OLDEST_PYTHON)"
  log "installing $(grep -v '^#' "$file") into $OLDEST_ANSIBLE_VENV"
  rm -rf "$OLDEST_ANSIBLE_VENV"
  if ! { "$py" -m venv "$OLDEST_ANSIBLE_VENV" && "$OLDEST_ANSIBLE_VENV/bin/pip" install --quiet \
      --disable-pip-version-check -r "$file"; } >"$CACHE_DIR/venv-ansible-oldest.log" 2>&1; then
    tail -n 20 "$CACHE_DIR/venv-ansible-oldest.log" >&2
    rm -rf "$OLDEST_ANSIBLE_VENV"
    die "pip could not install $file (PyPI unreachable?); log: $CACHE_DIR/venv-ansible-oldest.log"
  fi
  echo "$want" >"$OLDEST_ANSIBLE_VENV/.requirements.sha256"
}

ensure_docker() {
  ensure_docker_packages
  ensure_docker_engine
}

bootstrap_all() {
  ensure_venv
  ensure_promtool
  ensure_chromium
  ensure_docker
  ensure_images
  ensure_wheelhouse
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  bootstrap_all
  log "ready: venv $VENV_DIR, images $MOLECULE_DEBIAN12_IMAGE $MOLECULE_DEBIAN13_IMAGE, wheelhouse $WHEELHOUSE"
fi
