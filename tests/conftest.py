"""Shared pytest setup: the programs live in roles/funding/files, the simulator in files/."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = REPO / "roles" / "funding" / "files"
SIMULATOR_DIR = REPO / "roles" / "binance_simulator" / "files"

for directory in (PROGRAMS, SIMULATOR_DIR):
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))


# --- simulated exchange (owned by the simulator engineer) ----------------------------------------------------------

import pytest  # noqa: E402
from fakes.support import API_UNIT, WS_UNIT, ApiServer, FakeSystemd, daemon_state, write_state  # noqa: E402
from sim_client import FAST_ARGS, SimulatorClient, start_simulator  # noqa: E402


@pytest.fixture
def simulator_factory(tmp_path):
    """Start simulators with custom flags/env: `sim = simulator_factory("--fault", "stall")`; all stopped at teardown.

    Returns a RunningSimulator (`.client`, `.process`, `.log_path`, `.stop()`)."""
    started = []

    def start(*extra_args, env=None, fast=True):
        args = (*FAST_ARGS, *extra_args) if fast else tuple(extra_args)
        running = start_simulator(args, env=env, log_dir=tmp_path / f"simulator-{len(started)}")
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def simulator(simulator_factory) -> SimulatorClient:
    """A simulator with Binance's timings: pushes every 3 s (@1s: 1 s), pings every 180 s."""
    return simulator_factory(fast=False).client


@pytest.fixture
def fast_simulator(simulator_factory) -> SimulatorClient:
    """A simulator for quick tests: pushes every 0.2 s (@1s: 0.1 s), pings every 5 s."""
    return simulator_factory().client


@pytest.fixture(scope="module")
def monitor_api(tmp_path_factory) -> ApiServer:
    """The API, serving an empty daemon state, for the monitor's runs (tests write the states they need)."""
    directory = tmp_path_factory.mktemp("api")
    state_file = directory / "funding_state.json"
    write_state(state_file, daemon_state({}))
    server = ApiServer(state_file, directory / "api.log")
    try:
        server.wait_until_answering()
        yield server
    finally:
        server.stop()


@pytest.fixture
def systemd(tmp_path) -> FakeSystemd:
    """The fake systemd with both services active."""
    fake = FakeSystemd(tmp_path / "systemd")
    fake.set_state(WS_UNIT, "active")
    fake.set_state(API_UNIT, "active")
    return fake
