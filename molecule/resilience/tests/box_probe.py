#!/usr/bin/env python3
"""Probes the resilience tests run inside the box with the system python3 (standard library only).

    box_probe.py fresh --since EPOCH [--timeout S] [--other-pid PID]
        wait until the daemon is connected and has stored market data received after EPOCH
    box_probe.py api --since EPOCH [--timeout S]
        wait until /funding/health answers 200 (any status when --any-status)
    box_probe.py snapshot
        the state file's per-symbol values and connection_status, as one JSON object
    box_probe.py tamper --mode corrupt|delete [--seconds S]
        keep corrupting or deleting the state file for S seconds while asking the API; then wait for a good file
    box_probe.py load [--requests N] [--half-open N]
        clients holding half-sent requests, then N parallel requests; the API must answer them all
    box_probe.py pager-escape --marker PATH -- COMMAND...
        run COMMAND on a pseudo-terminal, try less's `!` shell escape, report whether MARKER appeared

Each prints one JSON object on stdout; times are epoch seconds, as the controller's (same kernel clock).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

STATE_FILE = "/var/lib/binance-funding/.funding_state.json"
API_HOST, API_PORT = "127.0.0.1", 8888
POLL_SECONDS = 0.1


def read_state() -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    try:
        with open(STATE_FILE, "rb") as handle:
            return json.loads(handle.read()), None
    except (OSError, ValueError) as exc:
        return None, "%s: %s" % (type(exc).__name__, exc)


def get(path: str, timeout: float = 5.0) -> Tuple[int, bytes]:
    connection = http.client.HTTPConnection(API_HOST, API_PORT, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_fresh(since: float, timeout: float, other_pid: Optional[int]) -> Dict[str, Any]:
    """Connected, and market data received after `since` stored in the file (by a new daemon if other_pid)."""
    deadline = time.time() + timeout
    last: Any = None
    while time.time() < deadline:
        state, error = read_state()
        if state is not None:
            status = state.get("connection_status", {})
            records = state.get("funding_state", {})
            fresh = sum(1 for record in records.values() if (record.get("updatedAt") or 0) > since)
            last = {"connected": status.get("connected"), "freshSymbols": fresh, "pid": state.get("daemon_pid"),
                    "lastMessageTime": status.get("last_message_time")}
            if (status.get("connected") is True and fresh > 0 and (status.get("last_message_time") or 0) > since
                    and (other_pid is None or state.get("daemon_pid") != other_pid)):
                return {"ok": True, "at": time.time(), "elapsed": time.time() - since, **last}
        else:
            last = error
        time.sleep(POLL_SECONDS)
    return {"ok": False, "at": time.time(), "elapsed": time.time() - since, "last": last}


def wait_api(since: float, timeout: float, any_status: bool, healthy: bool = False) -> Dict[str, Any]:
    """Until /funding/health answers 200 (or 503 too with any_status; with healthy only 200 with status healthy,
    not degraded)."""
    deadline = time.time() + timeout
    last: Any = None
    while time.time() < deadline:
        try:
            status, body = get("/funding/health", timeout=2)
            last = status
            if status == 200 or (any_status and status in (200, 503)):
                answer = json.loads(body)
                last = (status, answer.get("status"))
                if not healthy or answer.get("status") == "healthy":
                    return {"ok": True, "at": time.time(), "elapsed": time.time() - since, "status": status,
                            "body": answer}
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last = "%s: %s" % (type(exc).__name__, exc)
        time.sleep(POLL_SECONDS)
    return {"ok": False, "at": time.time(), "elapsed": time.time() - since, "last": last}


def snapshot() -> Dict[str, Any]:
    state, error = read_state()
    if state is None:
        return {"ok": False, "error": error}
    return {"ok": True, "funding_state": state["funding_state"], "connection_status": state["connection_status"],
            "updated_at": state.get("updated_at"), "daemon_pid": state.get("daemon_pid"),
            "mtime": os.stat(STATE_FILE).st_mtime}


# --- tamper: the state file corrupted or deleted underneath, while the API is asked what it serves ------------------

CORRUPT_TEXT = b'{"funding_state": {"BTCUSDT": {"markPrice": 1.0, "fundingRa'


def tamper(mode: str, seconds: float, recover_timeout: float) -> Dict[str, Any]:
    """For `seconds`, keep corrupting (writing a torn JSON in place) or deleting the state file, as a buggy or
    hostile process would, while asking the API every 0.1 s; then wait until the daemon has written a good file."""
    stop = threading.Event()
    tampered = [0]

    def keep_tampering() -> None:
        while not stop.is_set():
            try:
                if mode == "corrupt":
                    with open(STATE_FILE, "r+b") as handle:  # in place: same inode, owner and mode
                        handle.truncate(0)
                        handle.write(CORRUPT_TEXT)
                else:
                    os.unlink(STATE_FILE)
                tampered[0] += 1
            except OSError:
                pass
            stop.wait(0.05)

    started = time.time()
    thread = threading.Thread(target=keep_tampering, daemon=True)
    thread.start()
    seen: Dict[str, Any] = {"health": {}, "symbol": {}, "servingLastGoodState": 0, "stateFileErrors": [],
                            "symbolPrices": 0, "problems": []}
    while time.time() - started < seconds:
        try:
            status, body = get("/funding/health", timeout=3)
            health = json.loads(body)
            seen["health"][str(status)] = seen["health"].get(str(status), 0) + 1
            if health.get("servingLastGoodState"):
                seen["servingLastGoodState"] += 1
            error = health.get("stateFileError")
            if error and len(seen["stateFileErrors"]) < 3 and error not in seen["stateFileErrors"]:
                seen["stateFileErrors"].append(error)
            status, body = get("/funding/BTCUSDT", timeout=3)
            record = json.loads(body)
            seen["symbol"][str(status)] = seen["symbol"].get(str(status), 0) + 1
            price = record.get("markPrice")
            if isinstance(price, (int, float)) and price > 0 and price != 1.0:
                seen["symbolPrices"] += 1
            else:
                seen["problems"].append({"status": status, "body": body[:200].decode("utf-8", "replace")})
        except (OSError, http.client.HTTPException, ValueError) as exc:
            seen["problems"].append(repr(exc)[:200])
        time.sleep(0.1)
    stop.set()
    thread.join(2)
    ended = time.time()
    deadline = ended + recover_timeout
    recovered = None
    while time.time() < deadline:
        state, _ = read_state()
        if state is not None and (state.get("updated_at") or 0) > ended:
            recovered = {"at": time.time(), "elapsed": time.time() - ended, "pid": state.get("daemon_pid")}
            break
        time.sleep(0.05)
    return {"mode": mode, "tampered": tampered[0], "startedAt": started, "endedAt": ended, "seen": seen,
            "recovered": recovered}


# --- load: half-sent requests plus many parallel ones ---------------------------------------------------------------

LOAD_PATHS = (
    "/funding/health",
    "/funding/BTCUSDT",
    "/funding/batch?symbols=BTCUSDT,ETHUSDT,SOLUSDT,NOSUCHUSDT",
    "/funding?quote=USDT&sort=-fundingRate&limit=20",
    "/funding/ETHUSDT",
    "/metrics",
)


def half_open_clients(count: int) -> List[socket.socket]:
    """Connections that send the start of a request and then nothing."""
    clients = []
    for number in range(count):
        client = socket.create_connection((API_HOST, API_PORT), timeout=5)
        partial = "GET /funding/BTCUSDT HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half-Open: %d\r\n" % number
        client.sendall(partial.encode("ascii"))
        clients.append(client)
    return clients


def load(requests: int, half_open: int) -> Dict[str, Any]:
    holders = half_open_clients(half_open)
    barrier = threading.Barrier(requests, timeout=60)
    results: List[Tuple[str, int, float, str]] = [("", 0, 0.0, "")] * requests

    def one(index: int) -> None:
        path = LOAD_PATHS[index % len(LOAD_PATHS)]
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        started = time.monotonic()
        problem = ""
        status = 0
        try:
            status, body = get(path, timeout=60)
            if path != "/metrics":
                json.loads(body)
            if b"Traceback" in body:
                problem = "traceback in body"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            problem = "%s: %s" % (type(exc).__name__, exc)
        results[index] = (path, status, time.monotonic() - started, problem)

    threads = [threading.Thread(target=one, args=(index,), daemon=True) for index in range(requests)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    wall = time.monotonic() - started

    # The half-open clients are still waiting (or were closed by the server's idle timeout): never answered 5xx.
    half_open_states = []
    for client in holders:
        readable, _, _ = select.select([client], [], [], 0)
        data = b""
        if readable:
            try:
                data = client.recv(200)
            except OSError as exc:
                data = repr(exc).encode()
        half_open_states.append("waiting" if not readable else ("closed" if not data else data[:40].decode("latin-1")))
        client.close()

    latencies = sorted(result[2] for result in results if result[1])
    by_status: Dict[str, int] = {}
    problems = []
    for path, status, _, problem in results:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
        bad_status = status >= 500 and not (status == 503 and path == "/funding/health")
        if problem or status == 0 or bad_status:
            problems.append({"path": path, "status": status, "problem": problem})
    after_status, _ = get("/funding/BTCUSDT")

    def percentile(fraction: float) -> Optional[float]:
        return round(latencies[min(len(latencies) - 1, int(fraction * len(latencies)))], 4) if latencies else None

    return {"requests": requests, "answered": len(latencies), "byStatus": by_status, "problems": problems[:20],
            "problemCount": len(problems), "wallSeconds": round(wall, 3), "p50": percentile(0.5),
            "p99": percentile(0.99), "max": percentile(1.0), "halfOpen": half_open_states,
            "afterwardsStatus": after_status}


# --- pager escape ---------------------------------------------------------------------------------------------------


def pager_escape(marker: str, command: List[str], environ: Dict[str, str]) -> Dict[str, Any]:
    """Run `command` on a small pty (so systemctl pages through less) and type less's shell escape."""
    import pty  # noqa: PLC0415 (only this probe needs a terminal)
    import struct  # noqa: PLC0415

    try:
        os.unlink(marker)
    except FileNotFoundError:
        pass
    pid, fd = pty.fork()
    if pid == 0:  # child: a 10-row terminal, so the status output does not fit and the pager stays
        import fcntl  # noqa: PLC0415
        import termios  # noqa: PLC0415

        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 10, 80, 0, 0))
        os.execvpe(command[0], command, {**os.environ, "TERM": "xterm", **environ})
    output = b""

    def pump(seconds: float) -> None:
        nonlocal output
        deadline = time.time() + seconds
        while time.time() < deadline:
            readable, _, _ = select.select([fd], [], [], 0.1)
            if readable:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    return
                if not chunk:
                    return
                output += chunk

    pump(3)
    paged = b"--More--" in output or b"(END)" in output or output.rstrip().endswith(b":")
    # `!` first, alone: both more and less then read the command line up to Return.
    for keys, seconds in ((b"!", 0.7), (b"touch " + marker.encode() + b"\r", 1.5), (b"\r", 0.5), (b"q", 0.5),
                          (b"q", 0.5)):
        try:
            os.write(fd, keys)
        except OSError:
            break
        pump(seconds)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    text = output.decode("utf-8", "replace")
    return {"markerCreated": os.path.exists(marker), "paged": paged,
            "pagerSecureMessage": "not available" in text.lower(), "output": text[-600:]}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="probe", required=True)
    fresh = sub.add_parser("fresh")
    fresh.add_argument("--since", type=float, required=True)
    fresh.add_argument("--timeout", type=float, default=60)
    fresh.add_argument("--other-pid", type=int)
    api = sub.add_parser("api")
    api.add_argument("--since", type=float, required=True)
    api.add_argument("--timeout", type=float, default=60)
    api.add_argument("--any-status", action="store_true")
    api.add_argument("--healthy", action="store_true", help="wait for 200 with status healthy (not degraded)")
    sub.add_parser("snapshot")
    tamper_parser = sub.add_parser("tamper")
    tamper_parser.add_argument("--mode", choices=("corrupt", "delete"), required=True)
    tamper_parser.add_argument("--seconds", type=float, default=3)
    tamper_parser.add_argument("--recover-timeout", type=float, default=30)
    load_parser = sub.add_parser("load")
    load_parser.add_argument("--requests", type=int, default=1000)
    load_parser.add_argument("--half-open", type=int, default=5)
    pager = sub.add_parser("pager-escape")
    pager.add_argument("--marker", required=True)
    pager.add_argument("--env", action="append", default=[], help="NAME=VALUE for the command's environment")
    pager.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.probe == "fresh":
        result = wait_fresh(args.since, args.timeout, args.other_pid)
    elif args.probe == "api":
        result = wait_api(args.since, args.timeout, args.any_status, args.healthy)
    elif args.probe == "snapshot":
        result = snapshot()
    elif args.probe == "tamper":
        result = tamper(args.mode, args.seconds, args.recover_timeout)
    elif args.probe == "load":
        result = load(args.requests, args.half_open)
    else:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        environ = dict(item.split("=", 1) for item in args.env)
        result = pager_escape(args.marker, command, environ)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
