"""Starting, watching and stopping the processes a benchmark runs: simulator, daemons, APIs.

Each stack is one daemon and one API reading the daemon's state file; `ours`
runs the programs from roles/funding/files, `baseline` the seed design from
bench/baseline. Everything listens on 127.0.0.1 on ports picked here.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = REPO / "roles" / "funding" / "files"
BASELINE = REPO / "bench" / "baseline"
SIMULATOR_TESTS = REPO / "tests"

STACKS = ("ours", "baseline")

if str(SIMULATOR_TESTS) not in sys.path:
    sys.path.insert(0, str(SIMULATOR_TESTS))

from sim_client import start_simulator as launch_simulator  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 5.0) -> Tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class ProcessError(RuntimeError):
    pass


@dataclass
class Managed:
    """A child process with its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ProcessError("%s exited with status %s; its log %s ends with:\n%s" % (
                self.name, self.process.returncode, self.log_path, tail(self.log_path)))

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def spawn(name: str, command: List[str], log_dir: Path, env: Optional[Dict[str, str]] = None) -> Managed:
    log_path = log_dir / ("%s.log" % name)
    child_env = dict(os.environ)
    child_env.update(env or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=child_env, cwd=str(log_dir))
    return Managed(name, process, log_path)


@dataclass
class Stack:
    """One daemon + one API over one state file."""

    kind: str
    daemon: Managed
    api: Managed
    api_port: int
    state_file: Path
    extra: Dict[str, Any] = field(default_factory=dict)

    def processes(self) -> List[Managed]:
        return [self.daemon, self.api]

    def stop(self) -> None:
        for managed in (self.api, self.daemon):
            managed.stop()


def start_stack(kind: str, ws_url: str, rest_url: str, work_dir: Path, python: str = sys.executable) -> Stack:
    directory = work_dir / kind
    directory.mkdir(parents=True, exist_ok=True)
    state_file = directory / ".funding_state.json"
    port = free_port()
    if kind == "ours":
        env = {
            "FUNDING_WS_URL": ws_url,
            "FUNDING_STATE_FILE": str(state_file),
            "FUNDING_REST_URL": rest_url,
            "FUNDING_API_HOST": "127.0.0.1",
            "FUNDING_API_PORT": str(port),
            "FUNDING_LOG_LEVEL": "INFO",
        }
        daemon = spawn("ours-daemon", [python, str(PROGRAMS / "binance_funding_ws_daemon.py")], directory, env)
        api = spawn("ours-api", [python, str(PROGRAMS / "funding_api_server.py")], directory, env)
    elif kind == "baseline":
        daemon = spawn("baseline-daemon", [python, str(BASELINE / "baseline_daemon.py"), "--url", ws_url,
                                           "--state-file", str(state_file)], directory)
        api = spawn("baseline-api", [python, str(BASELINE / "baseline_api.py"), "--host", "127.0.0.1",
                                     "--port", str(port), "--state-file", str(state_file)], directory)
    else:
        raise ValueError("unknown stack %r" % kind)
    return Stack(kind, daemon, api, port, state_file)


def start_api_only(kind: str, state_file: Path, work_dir: Path, python: str = sys.executable) -> Managed:
    """One API over `state_file`, without a daemon; `.port` is where it listens."""
    port = free_port()
    if kind == "ours":
        env = {"FUNDING_STATE_FILE": str(state_file), "FUNDING_API_HOST": "127.0.0.1", "FUNDING_API_PORT": str(port),
               "FUNDING_LOG_LEVEL": "INFO"}
        managed = spawn("ours-api-alone", [python, str(PROGRAMS / "funding_api_server.py")], work_dir, env)
    else:
        managed = spawn("baseline-api-alone", [python, str(BASELINE / "baseline_api.py"), "--host", "127.0.0.1",
                                               "--port", str(port), "--state-file", str(state_file)], work_dir)
    managed.port = port
    return managed


def wait_until_serving(stack: Stack, symbol: str, min_symbols: int, timeout: float = 60.0) -> Dict[str, Any]:
    """Until /funding/health is 200 with at least min_symbols symbols and /funding/{symbol} is 200."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        for managed in stack.processes():
            managed.check_alive()
        try:
            status, body = http_get(stack.api_port, "/funding/health", timeout=2.0)
            health = json.loads(body)
            if status == 200 and health.get("symbolCount", 0) >= min_symbols:
                status, body = http_get(stack.api_port, "/funding/%s" % symbol, timeout=2.0)
                if status == 200:
                    return health
                last = "/funding/%s answered %d" % (symbol, status)
            else:
                last = "health %d with %s symbols" % (status, health.get("symbolCount"))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            last = "%s: %s" % (type(exc).__name__, exc)
        time.sleep(0.25)
    raise ProcessError("%s stack not serving within %.0f s (%s); logs: %s, %s" % (
        stack.kind, timeout, last, stack.daemon.log_path, stack.api.log_path))


def start_simulator(symbols: int, log_dir: Path, python: str = sys.executable) -> Any:
    """The simulated exchange with Binance's timings (pushes every 3 s, @1s every 1 s)."""
    return launch_simulator(["--symbols", str(symbols), "--log-level", "WARNING"], log_dir=log_dir, python=python)
