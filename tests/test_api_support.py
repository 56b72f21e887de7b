"""Helpers for the API tests: state files, the real server as a subprocess, raw HTTP.

The server is started exactly as systemd starts it (the script, FUNDING_*
variables, a NOTIFY_SOCKET), on port 0; the READY=1 message carries the
address it listens on, so the tests also prove READY comes once it listens.
No tests live here.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import funding_state
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "roles" / "funding" / "files" / "funding_api_server.py"
START_DEADLINE = 30.0
STOP_DEADLINE = 15.0
HTTP_TIMEOUT = 15.0


def record(now: float, age: float = 1.0, rate: float = 0.0001, price: float = 100.0, **extra: Any) -> Dict[str, Any]:
    rec = {
        "fundingRate": rate,
        "markPrice": price,
        "indexPrice": price + 0.5,
        "nextFundingTime": 1764748800000,
        "updatedAt": now - age,
        "eventTime": int((now - age) * 1000),
    }
    rec.update(extra)
    return rec


def write_state(
    path: Path,
    symbols: Dict[str, Dict[str, Any]],
    connected: bool = True,
    now: Optional[float] = None,
    universe: Optional[Dict[str, Dict[str, str]]] = None,
    delisted: Optional[Dict[str, float]] = None,
    **status: Any,
) -> None:
    """Write a state file atomically, as the daemon does; on a ServedStateFile, return once the API serves it."""
    now = time.time() if now is None else now
    fields = {"connected": connected, "last_connected_time": now - 60, "messages_received": 1234}
    fields.update(status)
    conn = funding_state.new_connection_status(**fields)
    payload = funding_state.build_payload(
        symbols, conn, now, 4242, universe=None if universe is None else {"fetched_at": now - 5, "symbols": universe},
        delisted=delisted)
    written_after = time.time()
    funding_state.write_state_atomic(str(path), payload)
    settle = getattr(path, "wait_until_served", None)
    if settle is not None:
        settle(written_after, good=True)


class RisingPrice:
    """While in its `with` block, rewrites the state file every `interval` seconds with a higher markPrice for
    `symbol` (1 000 001, 1 000 002, ...: above any price fresh_symbols gives), as the daemon would on a rising
    market."""

    def __init__(self, path: Path, symbol: str, interval: float = 0.01) -> None:
        self.path = path
        self.symbol = symbol
        self.interval = interval
        self.price = 1_000_000.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="rising-price", daemon=True)

    def run(self) -> None:
        symbols = fresh_symbols()
        while not self.stop.is_set():
            self.price += 1.0
            symbols[self.symbol] = dict(symbols[self.symbol], markPrice=self.price, updatedAt=time.time())
            write_state(self.path, symbols)
            self.stop.wait(self.interval)

    def __enter__(self) -> "RisingPrice":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(10)


class ServedStateFile(type(Path())):  # type: ignore[misc]
    """The state file of a one-worker API under test: every change through it returns once the API serves it.

    A one-worker API picks a new file up in the background (every FUNDING_API_STATE_POLL_MS), not on the
    request, so a test that writes and then asks must first wait for the pick-up: until /funding/health shows a
    parse that started after the write (stateLoadedAt), or a state-file error for a damaged or missing file.
    """

    api_port = 0

    def bind(self, port: int) -> "ServedStateFile":
        self.api_port = port
        return self

    def health(self) -> Dict[str, Any]:
        return get(self.api_port, "/funding/health").json()

    def wait_until_served(
        self, written_after: float, error_before: Any = None, good: bool = False, deadline: float = 10.0
    ) -> None:
        """Until a good file parsed after `written_after` is served, or (unless `good`) another state-file error."""
        if not self.api_port:
            return
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            health = self.health()
            error, loaded_at = health.get("stateFileError"), health.get("stateLoadedAt")
            if error is None and loaded_at is not None and loaded_at >= written_after:
                return
            if not good and error is not None and error != error_before:
                return
            time.sleep(0.002)
        raise AssertionError("the API did not pick up the state file written at %.3f" % written_after)

    def write_bytes(self, data: bytes) -> int:  # type: ignore[override]
        error_before = self.health().get("stateFileError") if self.api_port else None
        written_after = time.time()
        # Atomically, as the daemon writes: a reader never sees half of it.
        tmp = self.with_name(self.name + ".tmp")
        Path(tmp).write_bytes(data)
        os.replace(tmp, self)
        self.wait_until_served(written_after, error_before)
        return len(data)

    def write_text(self, data: str, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        return self.write_bytes(data.encode("utf-8"))

    def unlink(self, missing_ok: bool = False) -> None:  # type: ignore[override]
        error_before = self.health().get("stateFileError") if self.api_port else None
        written_after = time.time()
        super().unlink(missing_ok)
        self.wait_until_served(written_after, error_before)


def fresh_symbols(now: Optional[float] = None, count: int = 0) -> Dict[str, Dict[str, Any]]:
    """BTCUSDT, ETHUSDT, SOLUSDC (8 h, 4 h, unknown interval) plus `count` generated USDT symbols."""
    now = time.time() if now is None else now
    symbols = {
        "BTCUSDT": record(now, age=2.0, rate=0.00001864, price=91897.67414493, fundingIntervalHours=8),
        "ETHUSDT": record(now, age=1.0, rate=-0.0002, price=3000.5, fundingIntervalHours=4),
        "SOLUSDC": record(now, age=0.5, rate=0.0003, price=140.25),
    }
    for i in range(count):
        symbols["GEN%04dUSDT" % i] = record(now, age=1.0, rate=((i % 11) - 5) * 1e-5, price=1.0 + i)
    return symbols


@dataclass
class Reply:
    status: int
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())


def parse_response(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Reply(status, headers, body)


def raw_request(port: int, request: bytes, timeout: float = HTTP_TIMEOUT) -> Reply:
    """Send bytes exactly as given on a new connection; read until the answer is complete or the server closes."""
    # A HEAD answer announces the length of a body it does not send.
    bodiless = request.lstrip().upper().startswith(b"HEAD ")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks: List[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            data = b"".join(chunks)
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                reply = parse_response(data)
                length = reply.headers.get("content-length")
                if bodiless or (length is not None and len(body) >= int(length)):
                    return reply
    return parse_response(b"".join(chunks))


def get(port: int, target: str, method: str = "GET", headers: Optional[Dict[str, str]] = None) -> Reply:
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: 127.0.0.1", "Connection: close"]
    lines += ["%s: %s" % item for item in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if method == "HEAD":
        return head_request(port, request)
    return raw_request(port, request)


def head_request(port: int, request: bytes) -> Reply:
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    reply = parse_response(head + b"\r\n\r\n")
    reply.body = body
    return reply


def short_tempdir() -> str:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    return tempfile.mkdtemp(prefix="api-", dir="/tmp")


@dataclass
class ApiProcess:
    process: subprocess.Popen
    port: int
    state_file: Path
    log_path: Path
    notify: socket.socket
    workdir: str
    notifications: List[str] = field(default_factory=list)

    def url(self, target: str) -> str:
        return "http://127.0.0.1:%d%s" % (self.port, target)

    def get(self, target: str, **kwargs: Any) -> Reply:
        return get(self.port, target, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def receive_notifications(self, until: str, deadline: float) -> List[str]:
        """Collect sd_notify datagrams until one contains `until` or the deadline passes."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            self.notify.settimeout(max(0.05, min(1.0, end - time.monotonic())))
            try:
                message = self.notify.recv(4096).decode("utf-8", "replace")
            except socket.timeout:
                if self.process.poll() is not None:
                    break
                continue
            self.notifications.append(message)
            if until in message:
                break
        return self.notifications

    def drain_notifications(self) -> None:
        """Forget the datagrams already sent and collected: what receive_notifications sees next is new."""
        self.notify.settimeout(0.2)
        while True:
            try:
                self.notify.recv(4096)
            except OSError:
                break
        self.notifications.clear()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_DEADLINE)
        return self.process.returncode

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.notify.close()
            shutil.rmtree(self.workdir, ignore_errors=True)


# Starts a program the way systemd socket activation does: the given descriptors become 3, 4, ... (LISTEN_FDS, with
# LISTEN_PID of the process that runs the program).
SOCKET_ACTIVATION = """
import fcntl, os, sys
program, sources = sys.argv[1], [int(fd) for fd in sys.argv[2:]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in sources]
for fd in sources:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ.update(LISTEN_FDS=str(len(high)), LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, program])
"""


def reuseport_sockets(count: int, port: int = 0) -> List[socket.socket]:
    """`count` listening sockets on one loopback port in one SO_REUSEPORT group, as the role's socket unit has
    systemd make them (ListenStream= once per worker, ReusePort=yes)."""
    sockets: List[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        port = sock.getsockname()[1]
        sockets.append(sock)
    return sockets


def start_api(
    state_file: Optional[Path] = None,
    env: Optional[Dict[str, str]] = None,
    workdir: Optional[str] = None,
    listen_sockets: Sequence[socket.socket] = (),
) -> ApiProcess:
    workdir = workdir or short_tempdir()
    state_file = state_file or Path(workdir) / "state.json"
    notify_path = os.path.join(workdir, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNDING_", "WATCHDOG_", "NOTIFY_"))}
    full_env.update(
        {
            "FUNDING_API_HOST": "127.0.0.1",
            "FUNDING_API_PORT": "0",
            "FUNDING_STATE_FILE": str(state_file),
            "FUNDING_LOG_LEVEL": "INFO",
            "NOTIFY_SOCKET": notify_path,
            "PYTHONUNBUFFERED": "1",
        }
    )
    full_env.update(env or {})
    log_path = Path(workdir) / "api.log"
    command = [sys.executable, str(SERVER)]
    fds = [sock.fileno() for sock in listen_sockets]
    if fds:
        command = [sys.executable, "-c", SOCKET_ACTIVATION, str(SERVER), *map(str, fds)]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, pass_fds=fds)
    api = ApiProcess(process, 0, state_file, log_path, notify, workdir)
    try:
        messages = api.receive_notifications("READY=1", START_DEADLINE)
        ready = [m for m in messages if "READY=1" in m]
        if not ready:
            raise RuntimeError("API did not report READY=1; log:\n%s" % api.log())
        # STATUS=listening on http://127.0.0.1:PORT
        api.port = int(ready[0].rsplit(":", 1)[1].strip())
    except BaseException:
        api.close()
        raise
    return api


@pytest.fixture(scope="module")
def api_workdir():
    workdir = short_tempdir()
    yield workdir
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def api(api_workdir):
    """One real server per test module, with one worker; each test writes the state file it needs.

    One worker, so that "the API serves the file just written" is one fact (ServedStateFile waits for it); the
    behaviour of several workers has its own tests (api_workers fixture).
    """
    state_file = ServedStateFile(api_workdir) / "state.json"
    write_state(state_file, fresh_symbols())
    server = start_api(state_file, workdir=api_workdir, env={"FUNDING_API_WORKERS": "1"})
    state_file.bind(server.port)
    yield server
    server.close()


@pytest.fixture(scope="module")
def api_workers():
    """A real server with two worker processes (the default on a 2-core machine)."""
    workdir = short_tempdir()
    state_file = Path(workdir) / "state.json"
    write_state(state_file, fresh_symbols())
    # TMPDIR: the server's shared counters file lands in workdir, where the tests can read it.
    server = start_api(state_file, workdir=workdir, env={"FUNDING_API_WORKERS": "2", "TMPDIR": workdir})
    yield server
    server.close()


def worker_pids(api: "ApiProcess") -> List[int]:
    """The API's worker processes: the children of the server process."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == api.process.pid:
            pids.append(int(entry))
    return sorted(pids)


def tcp_sockets(port: int) -> Dict[int, str]:
    """{socket inode: TCP state} of this machine's IPv4 sockets with local port `port` (states as /proc/net/tcp
    writes them: "01" established, "0A" listening)."""
    found: Dict[int, str] = {}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                found[int(fields[9])] = fields[3]
    return found


def socket_inodes(pid: int) -> List[int]:
    """The inodes of the sockets process `pid` holds."""
    inodes = []
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.append(int(target[8:-1]))
    return inodes


def sockets_per_worker(api: "ApiProcess", state: str) -> Dict[int, int]:
    """{worker pid: how many of the API port's sockets in `state` it holds}."""
    on_port = tcp_sockets(api.port)
    return {
        pid: sum(1 for inode in set(socket_inodes(pid)) if on_port.get(inode) == state) for pid in worker_pids(api)
    }


def metric(api: "ApiProcess", name: str, **labels: str) -> Optional[float]:
    """One sample of the API's /metrics, parsed by Prometheus' own parser; None when it is not there."""
    reply = api.get("/metrics")
    assert reply.status == 200, reply
    for family in text_string_to_metric_families(reply.body.decode("utf-8")):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def assert_json_response(reply: Reply) -> Any:
    assert reply.header("content-type") == "application/json", reply
    assert reply.header("cache-control") == "no-store", reply
    return reply.json()


def assert_json_error(reply: Reply, status: int) -> Dict[str, Any]:
    assert reply.status == status, reply
    body = assert_json_response(reply)
    assert body["status"] == status
    assert isinstance(body["error"], str) and isinstance(body["detail"], str)
    assert "Traceback" not in reply.body.decode("utf-8", "replace")
    return body


def wait_until(predicate: Any, deadline: float = 15.0, interval: float = 0.05) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)


def free_port() -> Tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


def call(app, path, query="", method="GET"):
    """One request straight into a WSGI app: (status, headers, body)."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8888",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
    }
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"] = status
        started["headers"] = dict(headers)

    body = b"".join(app(environ, start_response))
    return int(started["status"][:3]), started["headers"], body
