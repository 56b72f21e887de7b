"""HTTP load: requests per second and latency percentiles at N keep-alive connections.

`wrk` (Debian's package) with bench/wrk_report.lua when it is installed and works;
otherwise a Python generator: processes of threads, each thread one raw keep-alive
socket sending the request back to back and timing each response.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"
WRK_MARKER = "BENCH_WRK_JSON "


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # connection/read/write errors, timeouts and non-2xx answers

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


class LoadError(RuntimeError):
    pass


def wrk_available() -> Optional[str]:
    """Why wrk cannot be used, or None when it can."""
    if shutil.which("wrk") is None:
        return "wrk is not installed"
    try:
        subprocess.run(["wrk", "--version"], check=False, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return "wrk does not run: %s" % exc
    return None


def wrk_version() -> str:
    try:
        done = subprocess.run(["wrk", "--version"], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "wrk"
    first = (done.stdout or done.stderr).splitlines()
    return " ".join(first[0].split()[:2]) if first else "wrk"


def run_wrk(port: int, path: str, connections: int, seconds: float) -> LoadResult:
    threads = 1 if connections == 1 else 2
    command = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % max(1, round(seconds)), "--timeout", "10s",
               "-s", str(WRK_SCRIPT), "http://127.0.0.1:%d%s" % (port, path)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith(WRK_MARKER):
            data = json.loads(line[len(WRK_MARKER):])
            errors = sum(data[key] for key in ("connect_errors", "read_errors", "write_errors", "status_errors",
                                               "timeouts"))
            return LoadResult(data["requests"], data["duration_us"] / 1e6, data["p50_us"] / 1000.0,
                              data["p99_us"] / 1000.0, errors)
    raise LoadError("wrk gave no result (exit %s): %s %s" % (done.returncode, done.stdout[-500:], done.stderr[-500:]))


# --- the Python fallback -------------------------------------------------------------------------------------------


def _read_response(sock: socket.socket, buffer: bytearray) -> Tuple[int, bytearray]:
    """Read one HTTP/1.1 response with Content-Length; return (status, bytes left over)."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        buffer += chunk
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    total = end + 4 + length
    while len(buffer) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        buffer += chunk
    return status, buffer[total:]


def _connection_loop(port: int, request: bytes, deadline: float, latencies: List[float], errors: List[int]) -> None:
    sock: Optional[socket.socket] = None
    buffer = bytearray()
    while time.monotonic() < deadline:
        if sock is None:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                errors[0] += 1
                time.sleep(0.05)
                continue
            buffer = bytearray()
        started = time.perf_counter()
        try:
            sock.sendall(request)
            status, buffer = _read_response(sock, buffer)
        except (OSError, ValueError, IndexError):
            errors[0] += 1
            sock.close()
            sock = None
            continue
        latencies.append(time.perf_counter() - started)
        if not 200 <= status < 300:
            errors[0] += 1
    if sock is not None:
        sock.close()


def _worker(port: int, path: str, threads: int, seconds: float, start_at: float,
            queue: "multiprocessing.Queue") -> None:
    request = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: keep-alive\r\n\r\n" % (path, port)).encode()
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds
    latencies: List[float] = []
    errors = [0]
    workers = [threading.Thread(target=_connection_loop, args=(port, request, deadline, latencies, errors))
               for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    queue.put((latencies, errors[0]))


def run_python(port: int, path: str, connections: int, seconds: float, processes: int = 2) -> LoadResult:
    processes = max(1, min(processes, connections))
    shares = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    queue: multiprocessing.Queue = multiprocessing.Queue()
    start_at = time.time() + 0.5
    children = [multiprocessing.Process(target=_worker, args=(port, path, share, seconds, start_at, queue))
                for share in shares]
    for child in children:
        child.start()
    latencies: List[float] = []
    errors = 0
    for _ in children:
        part, failed = queue.get(timeout=seconds + 60)
        latencies.extend(part)
        errors += failed
    for child in children:
        child.join(10)
    if not latencies:
        raise LoadError("no request was answered")
    latencies.sort()
    return LoadResult(len(latencies), seconds, percentile(latencies, 50) * 1000.0, percentile(latencies, 99) * 1000.0,
                      errors)


def percentile(sorted_values: List[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(pct / 100.0 * len(sorted_values)) - 1))
    return sorted_values[rank]


def run_load(generator: str, port: int, path: str, connections: int, seconds: float) -> LoadResult:
    if generator == "wrk":
        return run_wrk(port, path, connections, seconds)
    return run_python(port, path, connections, seconds)
