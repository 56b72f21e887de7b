#!/usr/bin/env python3
"""binance-funding HTTP API: the shared state file served as JSON on 127.0.0.1:8888.

The Bottle application (funding_api_app) runs under Granian (HTTP parsed in
Rust) in FUNDING_API_WORKERS worker processes (by default one per core, at
most 4), each accepting on its own listening socket of one SO_REUSEPORT group
on the port, so the kernel spreads connections over them. Each worker serves Granian's RSGI
interface (funding_api_rsgi): /funding/stream (server-sent events,
funding_api_stream) and /ui (funding_api_ui) are coroutines on the worker's
event loop, every other request is the WSGI application called inline (see
funding_api_rsgi for why not Granian's WSGI interface). This process is their
supervisor: it holds the sockets, starts each worker as `--worker N` (a fresh
interpreter, so the supervisor itself stays small), replaces a worker that
dies, and stops them all on SIGTERM, exiting 0 within a few seconds.

A client that sends half a request and waits holds a socket in a worker's Rust
event loop, never a Python thread; FUNDING_API_HEADER_TIMEOUT closes it. Each
worker keeps the current view of the state file and a thread refreshes it every
FUNDING_API_STATE_POLL_MS when the file changed. The workers announce the
version they serve in a small shared file; a request whose worker is behind
another brings it up to date before answering, so no worker answers with an
older state than another one already served (funding_api_view). Request
counters live in a file shared by the workers, so one scrape of /metrics shows
the totals of all of them.

The listening sockets come from systemd when the unit is socket-activated
(binance-funding-api.socket lists the address once per worker with
ReusePort=yes: LISTEN_FDS), so they outlive restarts and no connection is
refused meanwhile; otherwise this process binds them.

systemd: Type=notify; READY=1 once every worker has built its view and a real
request over the socket was answered; with WatchdogSec set, the supervisor
sends WATCHDOG=1 only after such a self-check succeeded, so hung workers are
noticed.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import funding_settings
import funding_systemd
from funding_api_metrics import SharedCounters, counters_file_size
from funding_api_versions import versions_file_size
from funding_log import event
from funding_monitor_state import MonitorFiles

PROG = "funding_api_server"
log = logging.getLogger("funding_api")


S = funding_settings
HOST = S.API_HOST
PORT = S.API_PORT
SETTINGS = (
    HOST, PORT, S.STATE_FILE, S.STALE_SECONDS, S.DISCONNECT_GRACE, S.MAX_MESSAGE_AGE, S.COVERAGE_GRACE_SECONDS,
    S.API_WORKERS, S.API_STATE_POLL, S.API_HEADER_TIMEOUT, S.API_MAX_STREAMS, S.API_STREAM_SEND_TIMEOUT,
    S.LOG_LEVEL, S.MONITOR_STATE_FILE, S.MONITOR_STATUS_FILE, S.MAX_RESTARTS, S.RESTART_WINDOW, S.WS_UNIT,
    S.API_UNIT, S.HISTORY_DB,
)

BACKLOG = 1024
# A 1000-symbol batch URL is about 41 KB; the application answers 414 above 48 KiB of query. Granian answers a
# request target of 64 KiB or more itself (414), and a request head beyond its buffer (about 256 KiB) with 431.
MAX_BUFFER_BYTES = 128 * 1024
# Python threads per worker that run the application. The application is CPU-bound under the GIL, so one thread
# per process is fastest; the Rust side queues complete requests meanwhile (a half-sent one never reaches Python).
BLOCKING_THREADS = 1
WORKER_STOP_SECONDS = 3.0
WORKER_EXIT_GRACE_SECONDS = 1.0
# A worker that dies within this many seconds of its start, this many times in a row, is a crash loop: the
# supervisor exits 1 and leaves the restart to systemd (Restart=always, with its start limit).
QUICK_DEATH_SECONDS = 5.0
CRASH_LOOP_DEATHS = 5
SD_LISTEN_FDS_START = 3


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs to build its application."""

    state_file: str
    stale_seconds: float
    disconnect_grace_seconds: float
    coverage_grace_seconds: float
    max_data_age_seconds: float
    poll_seconds: float
    log_level: str
    header_timeout: int
    counters_path: str
    versions_path: str
    started_at: float
    # With defaults (the settings' own), so that other fields with defaults may come before or after them.
    max_streams: int = funding_settings.API_MAX_STREAMS.parse(funding_settings.API_MAX_STREAMS.default)
    stream_send_timeout_seconds: float = funding_settings.API_STREAM_SEND_TIMEOUT.parse(
        funding_settings.API_STREAM_SEND_TIMEOUT.default
    )
    # The health monitor's files, whose restarts and verdicts /metrics exposes (None: not exposed).
    monitor: Optional[MonitorFiles] = None
    history_db: str = ""


# --- a worker process ---------------------------------------------------------------------------------------------


def build_worker_app(settings: WorkerSettings, worker_id: int) -> Callable[..., Any]:
    """The RSGI application of worker `worker_id` (from 1): the WSGI application, the stream hub and the page, with
    its state refresher running."""
    from funding_api_app import ApiConfig, build_app, evaluate_health  # noqa: PLC0415  (workers only)
    from funding_api_rsgi import RsgiFront  # noqa: PLC0415
    from funding_api_stream import StreamConfig, StreamEndpoint, StreamHub  # noqa: PLC0415
    from funding_api_ui import UiFiles  # noqa: PLC0415
    from funding_api_versions import ServedVersions  # noqa: PLC0415
    from funding_api_view import StateViews, ViewRefresher  # noqa: PLC0415
    from funding_history import HistoryReader  # noqa: PLC0415
    from funding_rest_budget import default_budget_path  # noqa: PLC0415
    from funding_state import StateReader  # noqa: PLC0415

    counter = SharedCounters(settings.counters_path, region=worker_id - 1)
    view_listeners: List[Callable[[], None]] = []

    def loaded() -> None:
        counter.count_load()
        for listener in view_listeners:
            listener()

    def load_failed() -> None:
        counter.count_load_error()
        for listener in view_listeners:
            listener()

    views = StateViews(StateReader(settings.state_file), on_load=loaded, on_error=load_failed,
                       versions=ServedVersions(settings.versions_path, slot=worker_id - 1))
    config = ApiConfig(
        stale_seconds=settings.stale_seconds,
        disconnect_grace_seconds=settings.disconnect_grace_seconds,
        coverage_grace_seconds=settings.coverage_grace_seconds,
        max_data_age_seconds=settings.max_data_age_seconds,
        started_at=settings.started_at,
        monitor=settings.monitor,
        history=HistoryReader(settings.history_db) if settings.history_db else None,
        history_budget_file=default_budget_path(settings.history_db) if settings.history_db else None,
    )
    wsgi_app = build_app(views, config, counter)
    stream_config = StreamConfig(
        max_streams=settings.max_streams, send_timeout_seconds=settings.stream_send_timeout_seconds
    )
    hub = StreamHub(
        views, stream_config, counter, lambda view, snap: evaluate_health(view, snap, time.time(), config).body
    )
    view_listeners.append(hub.notify)
    ui = UiFiles(counter.count)
    routes = {"/funding/stream": StreamEndpoint(hub, counter.count), "/ui": ui, "/ui/": ui}

    def started(loop: Any) -> None:
        exit_soon_after_sigterm()
        hub.start(loop)

    app = RsgiFront(wsgi_app, routes=routes, on_start=started)
    ViewRefresher(views, settings.poll_seconds).start()
    # Everything loaded so far lives as long as the process: keep the collector from scanning it on every reload.
    gc.freeze()
    counter.count_start()
    return app


def exit_soon_after_sigterm() -> None:
    """In a worker's event loop, after Granian set its own SIGTERM handling: exit WORKER_EXIT_GRACE_SECONDS after
    SIGTERM even if Granian's shutdown hangs.

    Granian's RSGI worker (2.5.7) sometimes never returns from its shutdown: its main thread waits in the Rust runtime
    while holding the GIL that a runtime thread needs. Granian still gets the signal (asyncio's wakeup descriptor) and
    stops accepting and finishes what is in flight; this handler only arms faulthandler's watchdog, a C thread that
    needs no GIL and ends the process with _exit if it is still there.
    """
    import faulthandler  # noqa: PLC0415

    sink = open(os.devnull, "w")  # noqa: SIM115 (kept for the watchdog's traceback until the process ends)

    def on_sigterm(signum: int, frame: Any) -> None:
        faulthandler.dump_traceback_later(WORKER_EXIT_GRACE_SECONDS, exit=True, file=sink)

    signal.signal(signal.SIGTERM, on_sigterm)


def leave_with_parent(parent: int) -> None:
    """A worker whose supervisor vanished (SIGKILL) stops too instead of serving on alone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def granian_worker_arguments(header_timeout: int, workers: int) -> Dict[str, Any]:
    """Granian's RSGI worker configuration (HTTP/1.1 only, bounded buffers, no access log)."""
    from granian.constants import HTTPModes, RuntimeModes, TaskImpl  # noqa: PLC0415
    from granian.http import HTTP1Settings  # noqa: PLC0415

    return {
        "runtime_mode": RuntimeModes.st,
        "runtime_threads": 1,
        "runtime_blocking_threads": 512,  # Granian's default (spawned only when needed)
        "blocking_threads": BLOCKING_THREADS,
        "blocking_threads_idle_timeout": 30,
        "backpressure": max(1, BACKLOG // workers),
        "task_impl": TaskImpl.asyncio,
        "http_mode": HTTPModes.http1,
        "http1_settings": HTTP1Settings(
            header_read_timeout=header_timeout * 1000, keep_alive=True, max_buffer_size=MAX_BUFFER_BYTES
        ),
        "http2_settings": None,
        "websockets": False,
        "static_path": None,
        "log_access_fmt": None,
        "ssl_ctx": (False, None, None, None, None, [], False),
        "scope_opts": {"url_path_prefix": None},
    }


def run_worker(settings: WorkerSettings, worker_id: int, workers: int, listen_fd: int) -> int:
    """Serve on the inherited socket until SIGTERM (Granian's RSGI worker, as its own server runs it)."""
    from granian._granian import SocketHolder  # noqa: PLC0415
    from granian._loops import loops  # noqa: PLC0415
    from granian.server.mp import MPServer  # noqa: PLC0415

    leave_with_parent(os.getppid())
    app = build_worker_app(settings, worker_id)
    serve = MPServer._spawn_rsgi_worker.__wrapped__  # the worker body, without Granian's multiprocessing wrapper
    arguments = granian_worker_arguments(settings.header_timeout, workers)
    serve(worker_id, app, SocketHolder(listen_fd, False, BACKLOG), loops.get("auto"), *arguments.values())
    # Leave without interpreter finalization, as Granian's own workers do (multiprocessing ends them with
    # os._exit): its Rust threads may still reach for the GIL, and would panic on a finalizing interpreter.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --- the supervisor -------------------------------------------------------------------------------------------------


def inherited_sockets() -> List[socket.socket]:
    """The listening sockets systemd passed (socket activation), or [] when there are none for this process.

    The role's socket unit lists the address once per worker with ReusePort=yes, so there is one socket per worker.
    """
    fds = os.environ.get("LISTEN_FDS", "")
    pid = os.environ.get("LISTEN_PID", "")
    if not fds.isdigit() or int(fds) < 1 or (pid and pid != str(os.getpid())):
        return []
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # the workers must not take them for their own
    sockets: List[socket.socket] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(fds)):
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise OSError("file descriptor %d from systemd is not a listening stream socket" % fd)
        sockets.append(sock)
    return sockets


def bind_sockets(host: str, port: int, count: int) -> List[socket.socket]:
    """`count` sockets listening on host:port in one SO_REUSEPORT group (raises OSError when it cannot).

    The kernel spreads new connections over the sockets of a group, and each worker accepts on its own one. Workers
    sharing one socket do not share the load: whichever wakes first accepts a whole burst of connections (16
    connections opened at once all went to one of two workers, half the throughput). A port anyone already listens
    on is refused first, so a second server never quietly joins the group of a running one.
    """
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))
        port = probe.getsockname()[1]
    sockets: List[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address, port))
            sock.listen(BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listening_sockets(host: str, port: int, workers: int) -> Tuple[List[socket.socket], str]:
    sockets = inherited_sockets()
    if sockets:
        return sockets, "%d socket%s from systemd" % (len(sockets), "s" if len(sockets) > 1 else "")
    return bind_sockets(host, port, workers), "bound, one per worker"


def self_check_address(host: str, port: int) -> Tuple[str, int]:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1", port
    if host in ("::", "[::]"):
        return "::1", port
    return host.strip("[]"), port


SELF_CHECK_REQUEST = (
    b"GET /funding/health HTTP/1.1\r\nHost: localhost\r\nUser-Agent: funding-api-watchdog\r\n"
    b"Connection: close\r\n\r\n"
)


def self_check(host: str, port: int, timeout: float) -> Optional[str]:
    """GET /funding/health from this very server; None when it answered (200 or 503) in full, else why not.

    Plain sockets rather than http.client: the supervisor stays free of http.client, email and ssl (memory).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(SELF_CHECK_REQUEST)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError as exc:
        return "%s: %s" % (type(exc).__name__, exc)
    answer = b"".join(chunks)
    head, separator, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ")
    if not separator or len(status_line) < 2 or not status_line[1].isdigit():
        return "no complete HTTP answer (%d bytes)" % len(answer)
    status = int(status_line[1])
    if status not in (200, 503):
        return "answered HTTP %d" % status
    return None


def self_check_round(host: str, port: int, timeout: float, parallel: int) -> Optional[str]:
    """`parallel` self-checks at once, each on its own connection; None when every one was answered.

    The kernel hands each connection to one worker; a worker whose Python thread hangs still accepts in its Rust
    event loop, so with twice as many checks as workers some reach it and time out.
    """
    problems: List[Optional[str]] = [None] * parallel

    def check(index: int) -> None:
        problems[index] = self_check(host, port, timeout)

    threads = [threading.Thread(target=check, args=(i,), name="self-check-%d" % i) for i in range(1, parallel)]
    for thread in threads:
        thread.start()
    check(0)
    for thread in threads:
        thread.join()
    failed = [p for p in problems if p is not None]
    return None if not failed else "%d of %d self-checks failed: %s" % (len(failed), parallel, failed[0])


class Supervision(threading.Thread):
    """READY=1 after the first answered self-check, then WATCHDOG=1 only after each fully answered round.

    A self-check is a real request over the listening socket: it proves the whole path a client uses (the socket,
    a worker's event loop, its Python thread, the application, the state view) rather than merely that a thread of
    this process is alive; a server that cannot answer is restarted by systemd's watchdog.
    """

    def __init__(
        self,
        host: str,
        port: int,
        watchdog_interval: Optional[float],
        workers_started: Callable[[], bool],
        parallel: int = 1,
    ) -> None:
        super().__init__(name="supervision", daemon=True)
        self.parallel = parallel
        self.workers_started = workers_started
        self.address = self_check_address(host, port)
        self.host, self.port = host, port
        self.interval = watchdog_interval
        self.timeout = max(0.5, min(10.0, watchdog_interval / 2)) if watchdog_interval else 2.0
        self.stop_event = threading.Event()

    def run(self) -> None:
        # READY once every worker has built its view (a request may reach any of them) and one answered.
        while not self.stop_event.is_set():
            started = self.workers_started()
            problem = self_check(self.address[0], self.address[1], self.timeout) if started else "starting"
            if problem is None:
                break
            log.debug("not answering yet (%s)", problem)
            self.stop_event.wait(0.05)
        else:
            return
        funding_systemd.ready("listening on http://%s:%d" % (self.host, self.port))
        if not self.interval:
            return
        funding_systemd.watchdog()
        delay = self.interval
        while not self.stop_event.wait(delay):
            began = time.monotonic()
            problem = self_check_round(self.address[0], self.address[1], self.timeout, self.parallel)
            if problem is None:
                funding_systemd.watchdog()
            else:
                log.warning("self-check failed (%s); not feeding the systemd watchdog", problem,
                            extra=event("self_check_failed", error=problem))
            delay = max(0.0, self.interval - (time.monotonic() - began))


def create_shared_file(kind: str, size: int) -> str:
    """A zeroed file of `size` bytes the workers map (`kind`: counters, versions), which only this service's
    processes see: in RUNTIME_DIRECTORY when systemd gives one, else TMPDIR or /tmp (private with PrivateTmp=).
    """
    # Created with O_EXCL and mode 0600, so nothing another user placed there is ever opened.
    directory = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or os.environ.get("TMPDIR") or "/tmp"  # noqa: S108
    path = os.path.join(directory, "api-%s-%d-%d" % (kind, os.getpid(), time.monotonic_ns()))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return path


class Workers:
    """The worker processes: started, replaced when one dies, stopped together.

    Worker N accepts on listening socket N (round robin when there are fewer sockets than workers); a replacement
    takes over its predecessor's socket, so connections that arrived meanwhile wait in that socket's backlog.
    """

    def __init__(self, count: int, listen_fds: Sequence[int], settings: WorkerSettings) -> None:
        self.count = count
        self.listen_fds = list(listen_fds)
        self.settings = settings
        self.processes: Dict[int, subprocess.Popen] = {}
        self.started_at: Dict[int, float] = {}
        self.quick_deaths = 0

    def listen_fd(self, worker_id: int) -> int:
        return self.listen_fds[(worker_id - 1) % len(self.listen_fds)]

    def command(self, worker_id: int) -> List[str]:
        s = self.settings
        return [
            sys.executable,
            os.path.abspath(__file__),
            "--worker=%d" % worker_id,
            "--workers=%d" % self.count,
            "--listen-fd=%d" % self.listen_fd(worker_id),
            "--counters=%s" % s.counters_path,
            "--versions=%s" % s.versions_path,
            "--started-at=%r" % s.started_at,
        ]

    def start(self, worker_id: int) -> None:
        process = subprocess.Popen(
            self.command(worker_id), pass_fds=(self.listen_fd(worker_id),), stdin=subprocess.DEVNULL
        )
        self.processes[worker_id] = process
        self.started_at[worker_id] = time.monotonic()
        log.info("worker %d started (pid %d)", worker_id, process.pid,
                 extra=event("worker_start", worker=worker_id, pid=process.pid))

    def start_all(self) -> None:
        for worker_id in range(1, self.count + 1):
            self.start(worker_id)

    def replace_the_dead(self) -> bool:
        """Start a new worker for each that exited; False once the deaths look like a crash loop."""
        for worker_id, process in list(self.processes.items()):
            status = process.poll()
            if status is None:
                continue
            lived = time.monotonic() - self.started_at[worker_id]
            self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
            log.error("worker %d (pid %d) exited with status %s after %.1f s", worker_id, process.pid, status, lived,
                      extra=event("worker_exit", worker=worker_id, pid=process.pid, status=status, lived_s=lived))
            if self.quick_deaths >= CRASH_LOOP_DEATHS:
                log.error("workers keep dying within %.0f s of their start: giving up", QUICK_DEATH_SECONDS,
                          extra=event("crash_loop", deaths=self.quick_deaths))
                return False
            self.start(worker_id)
        return True

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_SECONDS
        for worker_id, process in self.processes.items():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop within %.0f s: killed", worker_id, process.pid,
                            WORKER_STOP_SECONDS, extra=event("worker_killed", worker=worker_id, pid=process.pid))
                process.kill()
                process.wait()


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    # Internal: how the supervisor starts a worker process.
    for name in ("--worker", "--workers", "--listen-fd"):
        parser.add_argument(name, type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--counters", default="", help=argparse.SUPPRESS)
    parser.add_argument("--versions", default="", help=argparse.SUPPRESS)
    parser.add_argument("--started-at", type=float, default=0.0, help=argparse.SUPPRESS)


def worker_settings(
    values: Dict[str, Any], counters_path: str, versions_path: str, started_at: float
) -> WorkerSettings:
    return WorkerSettings(
        state_file=values[funding_settings.STATE_FILE.env],
        stale_seconds=values[funding_settings.STALE_SECONDS.env],
        disconnect_grace_seconds=values[funding_settings.DISCONNECT_GRACE.env],
        coverage_grace_seconds=values[funding_settings.COVERAGE_GRACE_SECONDS.env],
        max_data_age_seconds=values[funding_settings.MAX_MESSAGE_AGE.env],
        poll_seconds=values[funding_settings.API_STATE_POLL.env],
        log_level=values[funding_settings.LOG_LEVEL.env],
        header_timeout=values[funding_settings.API_HEADER_TIMEOUT.env],
        counters_path=counters_path,
        versions_path=versions_path,
        started_at=started_at,
        max_streams=values[funding_settings.API_MAX_STREAMS.env],
        stream_send_timeout_seconds=values[funding_settings.API_STREAM_SEND_TIMEOUT.env],
        monitor=MonitorFiles(
            restart_file=values[S.MONITOR_STATE_FILE.env],
            status_file=values[S.MONITOR_STATUS_FILE.env],
            window_seconds=values[S.RESTART_WINDOW.env] * 60,
            max_restarts=values[S.MAX_RESTARTS.env],
            units=(values[S.WS_UNIT.env], values[S.API_UNIT.env]),
        ),
        history_db=values[funding_settings.HISTORY_DB.env],
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, values = funding_settings.load(PROG, __doc__.splitlines()[0], SETTINGS, argv, add_worker_arguments)
    level = values[funding_settings.LOG_LEVEL.env]
    funding_settings.setup_logging(level, "funding_api")
    if args.worker:
        settings = worker_settings(values, args.counters, args.versions, args.started_at)
        return run_worker(settings, args.worker, args.workers, args.listen_fd)
    host, port = values[HOST.env], values[PORT.env]
    count = values[funding_settings.API_WORKERS.env]
    try:
        listeners, origin = listening_sockets(host, port, count)
    except (OSError, ValueError) as exc:
        log.error("cannot listen on %s port %s: %s", host, port, exc,
                  extra=event("listen_failed", host=host, port=port, error=str(exc)))
        return 1
    if len(listeners) > count:
        # Every socket needs a worker: a connection the kernel gave to an unserved one would wait forever.
        log.warning("%d listening sockets for %d workers: starting %d workers", len(listeners), count,
                    len(listeners), extra=event("workers_raised", sockets=len(listeners), workers=count))
        count = len(listeners)
    bound_host, bound_port = listeners[0].getsockname()[:2]
    counters_path = create_shared_file("counters", counters_file_size(count))
    versions_path = create_shared_file("versions", versions_file_size(count))
    counters = SharedCounters(counters_path)
    workers = Workers(count, [s.fileno() for s in listeners],
                      worker_settings(values, counters_path, versions_path, time.time()))
    stop = threading.Event()

    def on_sigterm(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    log.info(
        "listening on http://%s:%d (%s) with %d worker processes; state file %s",
        bound_host, bound_port, origin, count, values[funding_settings.STATE_FILE.env],
        extra=event("start", url="http://%s:%d" % (bound_host, bound_port), socket=origin, workers=count,
                    state_file=values[funding_settings.STATE_FILE.env]),
    )  # fmt: skip
    supervision = Supervision(
        str(bound_host),
        int(bound_port),
        funding_systemd.watchdog_interval(),
        lambda: counters.started_regions() >= count,
        parallel=2 * count,
    )
    exit_code = 0
    try:
        workers.start_all()
        supervision.start()
        while not stop.wait(0.1):
            if not workers.replace_the_dead():
                exit_code = 1
                break
    finally:
        funding_systemd.stopping()
        supervision.stop_event.set()
        workers.stop()
        for listener in listeners:
            listener.close()
        for path in (counters_path, versions_path):
            try:
                os.unlink(path)
            except OSError:
                pass
    log.info("stopped", extra=event("stop", exit_code=exit_code))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
