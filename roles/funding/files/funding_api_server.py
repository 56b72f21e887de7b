#!/usr/bin/env python3
"""binance-funding HTTP API: the shared state file served as JSON on 127.0.0.1:8888.

The Bottle application (funding_api_app) runs under Granian: this process is
the supervisor, FUNDING_API_WORKERS worker processes (one per core, at most 4,
by default) share its listening socket. Each worker serves Granian's RSGI
interface (funding_api_rsgi): /funding/stream (server-sent events,
funding_api_stream) and /ui (funding_api_ui) run on the worker's event loop,
every other request is the WSGI application called inline (see
funding_api_rsgi for why not Granian's WSGI interface). Granian parses HTTP
in Rust, so a client that sends half a request and waits holds a socket in
the Rust event loop, never a Python thread, and FUNDING_API_HEADER_TIMEOUT
closes it. Each worker keeps the current view of the state file and a thread
refreshes it every FUNDING_API_STATE_POLL_MS when the file changed, so no
request stats, parses or waits.

The listening socket comes from systemd when the unit is socket-activated
(binance-funding-api.socket: LISTEN_FDS), so it outlives restarts and no
connection is refused meanwhile; otherwise this process binds it.

systemd: Type=notify; READY=1 once a real request over the socket was
answered; with WatchdogSec set, the supervisor sends WATCHDOG=1 only after
such a self-check succeeded, so a hung worker is noticed. A worker that dies
is respawned. SIGTERM stops the workers and exits 0 within a few seconds.
"""

from __future__ import annotations

import gc
import http.client
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, List, Optional, Sequence, Tuple

import funding_settings
import funding_systemd
from funding_api_metrics import SharedCounters, counters_file_size
from funding_settings import Setting
from granian._granian import SocketHolder
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.mp import MPServer

PROG = "funding_api_server"
log = logging.getLogger("funding_api")


def port_or_zero(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port from 1 to 65535 (0 picks a free one)")
    return value


HOST = Setting("FUNDING_API_HOST", "127.0.0.1", "address to listen on (keep it on loopback)")
PORT = Setting("FUNDING_API_PORT", "8888", "TCP port to listen on (0 picks a free one)", port_or_zero)
SETTINGS = (
    HOST,
    PORT,
    funding_settings.STATE_FILE,
    funding_settings.STALE_SECONDS,
    funding_settings.DISCONNECT_GRACE,
    funding_settings.API_WORKERS,
    funding_settings.API_STATE_POLL,
    funding_settings.API_HEADER_TIMEOUT,
    funding_settings.API_MAX_STREAMS,
    funding_settings.API_STREAM_SEND_TIMEOUT,
    funding_settings.LOG_LEVEL,
)

BACKLOG = 1024
# A 1000-symbol batch URL is about 41 KB; the application answers 414 above 64 KiB of query. Granian answers a
# longer request line itself (414), and a request head beyond its buffer (about 256 KiB here) with 431, no body.
MAX_BUFFER_BYTES = 128 * 1024
# Python threads per worker that run the application. The application is CPU-bound under the GIL, so one thread
# per process is fastest; the Rust side queues complete requests meanwhile (a half-sent one never reaches Python).
BLOCKING_THREADS = 1
# Granian's RSGI worker sometimes never returns from its own shutdown (its main thread blocks in the runtime while
# a runtime thread waits to hand the final result to the event loop; seen with granian 2.5.7, every runtime mode and
# task implementation), so a worker is killed this soon after SIGTERM. Requests take microseconds, and open streams
# end with the process either way.
WORKER_STOP_SECONDS = 1
SD_LISTEN_FDS_START = 3


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs to build its application (picklable: Granian may spawn workers)."""

    state_file: str
    stale_seconds: float
    disconnect_grace_seconds: float
    poll_seconds: float
    log_level: str
    counters_path: str
    started_at: float
    max_streams: int
    stream_send_timeout_seconds: float


def build_worker_app(settings: WorkerSettings, worker_id: int) -> Callable[..., Any]:
    """Called in each worker process (worker_id from 1): the RSGI application, its state refresher, the stream hub."""
    # Imported here, so the supervisor does not carry Bottle and the application in its own memory.
    from funding_api_app import ApiConfig, build_app, evaluate_health  # noqa: PLC0415
    from funding_api_rsgi import RsgiFront  # noqa: PLC0415
    from funding_api_stream import StreamConfig, StreamEndpoint, StreamHub  # noqa: PLC0415
    from funding_api_ui import UiFiles  # noqa: PLC0415
    from funding_api_view import StateViews, ViewRefresher  # noqa: PLC0415
    from funding_state import StateReader  # noqa: PLC0415

    funding_settings.setup_logging(settings.log_level, "funding_api")
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

    views = StateViews(StateReader(settings.state_file), on_load=loaded, on_error=load_failed)
    config = ApiConfig(
        stale_seconds=settings.stale_seconds,
        disconnect_grace_seconds=settings.disconnect_grace_seconds,
        started_at=settings.started_at,
    )
    app = build_app(views, config, counter)
    stream_config = StreamConfig(
        max_streams=settings.max_streams, send_timeout_seconds=settings.stream_send_timeout_seconds
    )
    hub = StreamHub(
        views, stream_config, counter, lambda view, snap: evaluate_health(view, snap, time.time(), config).body
    )
    view_listeners.append(hub.notify)
    ui = UiFiles(counter.count)

    front = RsgiFront(
        app, routes={"/funding/stream": StreamEndpoint(hub, counter.count), "/ui": ui, "/ui/": ui}, on_start=hub.start
    )
    ViewRefresher(views, settings.poll_seconds).start()
    counter.count_start()
    # Everything loaded so far lives as long as the process: keep the collector from scanning it on every reload.
    gc.freeze()
    return front


def spawn_worker(worker_id: int, process_name: Optional[str], callback_loader: Callable[..., Any], *args: Any) -> None:
    """Granian's RSGI worker, told its own number (it picks the worker's counter region)."""
    return MPServer._spawn_rsgi_worker(worker_id, process_name, partial(callback_loader, worker_id), *args)


def inherited_socket() -> Optional[socket.socket]:
    """The listening socket systemd passed (socket activation), or None when there is none for this process."""
    fds = os.environ.get("LISTEN_FDS", "")
    pid = os.environ.get("LISTEN_PID", "")
    if not fds.isdigit() or int(fds) < 1 or (pid and pid != str(os.getpid())):
        return None
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # the workers must not take it for their own
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise OSError("file descriptor %d from systemd is not a listening stream socket" % SD_LISTEN_FDS_START)
    return sock


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on host:port (raises OSError when it cannot)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class FundingGranian(MPServer):
    """Granian's multi-process server on a socket we already hold (bound here or passed by systemd)."""

    def __init__(self, listener: socket.socket, **options: Any) -> None:
        self.listener = listener
        super().__init__("funding_api_app", **options)

    def _init_shared_socket(self) -> None:
        fd = self.listener.fileno()
        self.listener.set_inheritable(True)
        self._shd = SocketHolder(fd, False, self.backlog)
        self._sfd = fd
        self._sso = self.listener

    def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
        funding_systemd.stopping()
        super().signal_handler_interrupt(*args, **kwargs)


def granian_options(workers: int, header_timeout: int, log_level: str) -> dict:
    return {
        "interface": Interfaces.RSGI,
        "workers": workers,
        "blocking_threads": BLOCKING_THREADS,
        "http": HTTPModes.http1,
        "backlog": BACKLOG,
        "http1_settings": HTTP1Settings(
            header_read_timeout=header_timeout * 1000, keep_alive=True, max_buffer_size=MAX_BUFFER_BYTES
        ),
        "websockets": False,
        "respawn_failed_workers": True,
        "workers_kill_timeout": WORKER_STOP_SECONDS,
        "log_level": LogLevels(log_level.lower()),
        # Granian's lines go through our handler (journald adds time and unit); no access log.
        "log_dictconfig": {
            "handlers": {},
            "loggers": {
                "_granian": {"handlers": [], "propagate": True},
                "granian.access": {"handlers": [], "propagate": True, "level": "WARNING"},
            },
        },
        "log_access": False,
    }


def self_check_address(host: str, port: int) -> Tuple[str, int]:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1", port
    if host in ("::", "[::]"):
        return "::1", port
    return host.strip("[]"), port


def self_check(host: str, port: int, timeout: float) -> Optional[str]:
    """GET /funding/health from this very server; None when it answered (200 or 503), else why not."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/funding/health", headers={"User-Agent": "funding-api-watchdog"})
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        return "%s: %s" % (type(exc).__name__, exc)
    finally:
        connection.close()
    if response.status not in (200, 503):
        return "answered HTTP %d" % response.status
    return None


class Supervision(threading.Thread):
    """READY=1 after the first answered self-check, then WATCHDOG=1 only after each answered one.

    A self-check is a real request over the listening socket: it proves the whole path a client uses (the socket,
    a worker's event loop, its Python thread, the application, the state view) rather than merely that a thread of
    this process is alive; a server that cannot answer is restarted by systemd's watchdog.
    """

    def __init__(
        self, host: str, port: int, watchdog_interval: Optional[float], workers_started: Callable[[], bool]
    ) -> None:
        super().__init__(name="supervision", daemon=True)
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
            started = time.monotonic()
            problem = self_check(self.address[0], self.address[1], self.timeout)
            if problem is None:
                funding_systemd.watchdog()
            else:
                log.warning("self-check failed (%s); not feeding the systemd watchdog", problem)
            delay = max(0.0, self.interval - (time.monotonic() - started))


def create_counters_file(workers: int) -> str:
    """The shared request counters: one region per worker, in a file only this service's processes see."""
    directory = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
    fd, path = tempfile.mkstemp(prefix="api-counters-", dir=directory)
    try:
        os.ftruncate(fd, counters_file_size(workers))
    finally:
        os.close(fd)
    return path


def listening_socket(host: str, port: int) -> Tuple[socket.socket, str]:
    sock = inherited_socket()
    if sock is not None:
        return sock, "socket from systemd"
    return bind_socket(host, port), "bound"


def main(argv: Optional[Sequence[str]] = None) -> int:
    _, values = funding_settings.load(PROG, __doc__.splitlines()[0], SETTINGS, argv)
    level = values[funding_settings.LOG_LEVEL.env]
    funding_settings.setup_logging(level, "funding_api")
    host, port = values[HOST.env], values[PORT.env]
    workers = values[funding_settings.API_WORKERS.env]
    try:
        listener, origin = listening_socket(host, port)
    except (OSError, ValueError) as exc:
        log.error("cannot listen on %s port %s: %s", host, port, exc)
        return 1
    bound_host, bound_port = listener.getsockname()[:2]
    counters_path = create_counters_file(workers)
    settings = WorkerSettings(
        state_file=values[funding_settings.STATE_FILE.env],
        stale_seconds=values[funding_settings.STALE_SECONDS.env],
        disconnect_grace_seconds=values[funding_settings.DISCONNECT_GRACE.env],
        poll_seconds=values[funding_settings.API_STATE_POLL.env],
        log_level=level,
        counters_path=counters_path,
        started_at=time.time(),
        max_streams=values[funding_settings.API_MAX_STREAMS.env],
        stream_send_timeout_seconds=values[funding_settings.API_STREAM_SEND_TIMEOUT.env],
    )
    log.info(
        "listening on http://%s:%d (%s) with %d worker processes; state file %s",
        bound_host,
        bound_port,
        origin,
        workers,
        settings.state_file,
    )
    options = granian_options(workers, values[funding_settings.API_HEADER_TIMEOUT.env], level)
    server = FundingGranian(listener, address=str(bound_host), port=int(bound_port), **options)
    counters = SharedCounters(counters_path)
    supervision = Supervision(
        str(bound_host),
        int(bound_port),
        funding_systemd.watchdog_interval(),
        lambda: counters.started_regions() >= workers,
    )
    supervision.start()
    exit_code = 0
    try:
        server.serve(spawn_target=spawn_worker, target_loader=partial(build_worker_app, settings), wrap_loader=False)
    except SystemExit as exc:  # Granian exits 1 after a worker crash loop
        exit_code = exc.code if isinstance(exc.code, int) else 1
    finally:
        supervision.stop_event.set()
        funding_systemd.stopping()
        try:
            os.unlink(counters_path)
        except OSError:
            pass
    log.info("stopped")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
