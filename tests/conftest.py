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
