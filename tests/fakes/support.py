"""Helpers for the monitor and comparison tests: the fake systemd, daemon-shaped state files, program runs.

The fake `systemctl` and `sudo` next to this file read and write a directory (see their headers); `FakeSystemd`
is the test's handle on that directory.
"""

from __future__ import annotations

import atexit
import functools
import getpass
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import funding_state
from role_templates import render

FAKES = Path(__file__).resolve().parent
REPO = FAKES.parent.parent
PROGRAMS = REPO / "roles" / "funding" / "files"
FAKE_SYSTEMCTL = FAKES / "systemctl"
FAKE_SUDO = FAKES / "sudo"
WS_UNIT = "binance-funding-ws.service"
API_UNIT = "binance-funding-api.service"
PROGRAM_TIMEOUT = 90


@functools.cache
def rendered_sudoers() -> Path:
    """The role's sudoers drop-in, rendered by Ansible for this user with the fake systemctl: what fake sudo grants."""
    text = render(
        "funding-health-monitor.sudoers.j2",
        {"funding_user": getpass.getuser(), "funding_systemctl_path": str(FAKE_SYSTEMCTL)},
    )
    handle, name = tempfile.mkstemp(prefix="funding-sudoers-", suffix=".rendered")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    path = Path(name)
    atexit.register(path.unlink)
    return path


class FakeSystemd:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "units").mkdir(parents=True, exist_ok=True)
        (root / "restart-result").mkdir(parents=True, exist_ok=True)

    def set_state(self, unit: str, state: str) -> None:
        (self.root / "units" / unit).write_text(state + "\n")

    def state(self, unit: str) -> str:
        path = self.root / "units" / unit
        return path.read_text().strip() if path.exists() else "inactive"

    def set_restart_result(self, unit: str, result: str) -> None:
        (self.root / "restart-result" / unit).write_text(result + "\n")

    def calls(self) -> List[str]:
        log = self.root / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def restart_calls(self) -> List[str]:
        """The restart commands the monitor ran through sudo (what sudo was asked, allowed or not)."""
        return [line for line in self.calls() if line.startswith("sudo ") and " restart " in line]

    def env(self) -> Dict[str, str]:
        return {
            "FAKE_SYSTEMD_DIR": str(self.root),
            "FAKE_SUDOERS": str(rendered_sudoers()),
            "FUNDING_SYSTEMCTL": str(FAKE_SYSTEMCTL),
            "FUNDING_SUDO": str(FAKE_SUDO),
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_url() -> str:
    """A loopback URL nobody listens on."""
    return "http://127.0.0.1:%d" % free_port()


def daemon_record(quote: Mapping[str, Any], updated_at: float) -> Dict[str, Any]:
    """One funding_state entry as the daemon stores it, from a simulator /_sim/symbols quote."""
    return {
        "fundingRate": quote["fundingRate"],
        "markPrice": quote["markPrice"],
        "indexPrice": quote.get("indexPrice"),
        "nextFundingTime": quote["nextFundingTime"],
        "updatedAt": updated_at,
        "eventTime": quote["eventTime"],
        "fundingIntervalHours": quote.get("fundingIntervalHours"),
        **{key: quote[key] for key in ("contractType", "underlyingType") if quote.get(key)},
    }


def universe_of_quotes(quotes: Mapping[str, Mapping[str, Any]], now: float) -> Optional[Dict[str, Any]]:
    """The state file's `universe` as the daemon writes it, from simulator quotes that carry exchangeInfo's facts."""
    symbols = {
        s: {"contractType": q["contractType"], "underlyingType": q.get("underlyingType") or "",
            "quoteAsset": q.get("quoteAsset") or "USDT", "marginAsset": q.get("quoteAsset") or "USDT"}
        for s, q in quotes.items() if q.get("contractType") and q.get("perpetual") and q.get("fundingRate") is not None
    }
    return {"fetched_at": now - 60, "symbols": symbols} if symbols else None


def daemon_state(
    quotes: Mapping[str, Mapping[str, Any]],
    now: Optional[float] = None,
    data_age: float = 2.0,
    connected: bool = True,
    **status: Any,
) -> Dict[str, Any]:
    """A state file payload like the daemon writes: every perpetual of `quotes`, updated `data_age` seconds ago."""
    now = time.time() if now is None else now
    updated = now - data_age
    records = {s: daemon_record(q, updated) for s, q in quotes.items() if q.get("fundingRate") is not None}
    connection = funding_state.new_connection_status(
        connected=connected,
        last_connected_time=now - 3600,
        messages_received=36936,
        last_message_time=updated,
        last_data_time=updated,
        daemon_started_at=now - 3600,
        connections_opened=1,
    )
    universe = universe_of_quotes(quotes, now)
    if universe is not None:  # the daemon serves nothing outside its universe
        records = {s: r for s, r in records.items() if s in universe["symbols"]}
    connection.update(universe_known=universe is not None,
                      expected_symbols=len(universe["symbols"]) if universe else None)
    connection.update(status)
    return funding_state.build_payload(records, connection, now, 4242, universe=universe)


def write_state(path: Path, payload: Mapping[str, Any]) -> None:
    funding_state.write_state_atomic(str(path), payload)


def run_program(
    name: str, env: Mapping[str, str], args: Sequence[str] = (), timeout: float = PROGRAM_TIMEOUT
) -> subprocess.CompletedProcess:
    """Run one of the role's programs as a script, the way systemd does, with only the given FUNDING_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FUNDING_", "FAKE_"))}
    base.update(env)
    return subprocess.run(
        [sys.executable, str(PROGRAMS / name), *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def run_fake(argv: Sequence[str], systemd: FakeSystemd) -> subprocess.CompletedProcess:
    """Run a fake (sudo or systemctl) directly, as the monitor would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_")}
    env.update({k: v for k, v in systemd.env().items() if k.startswith("FAKE_")})
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=30, check=False)


class ApiServer:
    """The real funding_api_server.py on a free loopback port, serving a given state file."""

    def __init__(self, state_file: Path, log_file: Path) -> None:
        self.state_file = state_file
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDING_")}
        env.update(FUNDING_STATE_FILE=str(state_file), FUNDING_API_PORT=str(self.port), FUNDING_LOG_LEVEL="WARNING")
        self._log = open(log_file, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, str(PROGRAMS / "funding_api_server.py")],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_until_answering(self, deadline_seconds: float = 30.0) -> None:
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("API server exited with %s" % self.process.returncode)
            try:
                urllib.request.urlopen(self.url + "/funding/health", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # 503 is an answer
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("API server did not answer within %gs" % deadline_seconds)

    def get(self, path: str) -> "tuple[int, Any]":
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
