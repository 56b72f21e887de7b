#!/usr/bin/env python3
"""binance-funding HTTP API: the shared state file served as JSON on 127.0.0.1:8888.

The Bottle application (funding_api_app) runs under waitress: an asyncore
loop accepts connections and buffers each request until it is complete, and
only a complete request takes one of FUNDING_API_THREADS worker threads, so a
client that sends half a request and waits holds a socket, never a thread.
Every request stats the state file and parses it only when it changed, so
what is served is at most one daemon write old (the seed cached for 1 s).

systemd: Type=notify (READY=1 once the socket listens); with WatchdogSec set,
a thread sends WATCHDOG=1 only after a real HTTP request to this server
answered; SIGTERM stops cleanly with exit status 0.
"""

from __future__ import annotations

import http.client
import logging
import signal
import sys
import threading
import time
from typing import Any, Dict, Optional, Sequence

import funding_settings
import funding_systemd
from funding_api_app import JSON_HEADERS, ApiConfig, build_app, error_body
from funding_api_metrics import RequestCounter
from funding_api_view import StateViews
from funding_history import HistoryReader
from funding_rest_budget import default_budget_path
from funding_state import StateReader
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask

PROG = "funding_api_server"
log = logging.getLogger("funding_api")


S = funding_settings
HOST = S.API_HOST
PORT = S.API_PORT
STALE_SECONDS = S.STALE_SECONDS
THREADS = S.API_THREADS
CONNECTION_LIMIT = S.API_CONNECTION_LIMIT
CHANNEL_TIMEOUT = S.API_CHANNEL_TIMEOUT
SETTINGS = (
    HOST, PORT, S.STATE_FILE, STALE_SECONDS, S.DISCONNECT_GRACE, S.MAX_MESSAGE_AGE, THREADS, CONNECTION_LIMIT,
    CHANNEL_TIMEOUT, S.HISTORY_DB, S.LOG_LEVEL,
)

# A 1000-symbol batch URL is about 41 KB; the application answers 414 above 64 KiB of query,
# waitress answers 431 (as JSON, below) above this.
MAX_REQUEST_HEADER_BYTES = 128 * 1024
MAX_REQUEST_BODY_BYTES = 16 * 1024  # only GET and HEAD are served; a body is never needed


class JsonErrorTask(ErrorTask):
    """waitress's answer to a request it could not parse, as JSON like every other error.

    waitress answers 501 for a Transfer-Encoding it does not implement; that is
    the client's request, so it is a 400 here (no client input yields a 5xx).
    """

    def execute(self) -> None:
        error = self.request.error
        code = error.code if 400 <= error.code < 500 else 400
        kind = {413: "body_too_large", 431: "headers_too_large"}.get(code, "bad_request")
        body = error_body(code, kind, "%s: %s" % (error.reason, error.body))
        counter = getattr(self.channel.server, "request_counter", None)
        if counter is not None:
            counter.count("other", str(code))
        self.status = "%d %s" % (code, error.reason if code == error.code else "Bad Request")
        self.response_headers.extend(JSON_HEADERS)
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


class FundingWSGIServer(TcpWSGIServer):
    channel_class = JsonErrorChannel

    def __init__(self, application: Any, request_counter: Optional[RequestCounter] = None, **adjustments: Any):
        self.request_counter = request_counter
        super().__init__(application, map={}, **adjustments)


def waitress_adjustments(host: str, port: int, threads: int, connection_limit: int, channel_timeout: int) -> Dict:
    return {
        "host": host,
        "port": port,
        "threads": threads,
        "connection_limit": connection_limit,
        "channel_timeout": channel_timeout,
        # How often idle channels are looked for; by default 30 s, which would double channel_timeout.
        "cleanup_interval": max(1, min(10, channel_timeout // 3)),
        "max_request_header_size": MAX_REQUEST_HEADER_BYTES,
        "max_request_body_size": MAX_REQUEST_BODY_BYTES,
        "ident": "",  # no Server header, no product name in error bodies
        "expose_tracebacks": False,
        "asyncore_use_poll": True,  # select() cannot watch descriptors above 1023
    }


def create_server(app: Any, counter: RequestCounter, **adjustments: Any) -> FundingWSGIServer:
    """Bind and listen (raises OSError when it cannot); serve with .run()."""
    return FundingWSGIServer(app, request_counter=counter, **adjustments)


def self_check_address(host: str, port: int) -> "tuple[str, int]":
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


class WatchdogFeeder(threading.Thread):
    """WATCHDOG=1 only after the server answered a real request over its socket.

    That proves the whole path a client uses (accept loop, request parser,
    worker threads, application, state file) rather than merely that a thread
    of this process is alive; a server that cannot answer is restarted.
    """

    def __init__(self, host: str, port: int, interval: float) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.address = self_check_address(host, port)
        self.interval = interval
        self.timeout = max(0.5, min(10.0, interval / 2))
        self.stop_event = threading.Event()

    def run(self) -> None:
        delay = 0.0
        while not self.stop_event.wait(delay):
            started = time.monotonic()
            problem = self_check(self.address[0], self.address[1], self.timeout)
            if problem is None:
                funding_systemd.watchdog()
            else:
                log.warning("self-check failed (%s); not feeding the systemd watchdog", problem)
            delay = max(0.0, self.interval - (time.monotonic() - started))


def quiet_waitress(level: str) -> None:
    # "Task queue depth is N" is logged per request while all threads are busy: a journald flood under load.
    if level != "DEBUG":
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)


def stop_on_sigterm() -> None:
    def handler(signum: int, frame: Any) -> None:
        # Leaves waitress's loop through its own SystemExit path, which shuts the worker threads down.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    _, values = funding_settings.load(PROG, __doc__.splitlines()[0], SETTINGS, argv)
    level = values[funding_settings.LOG_LEVEL.env]
    funding_settings.setup_logging(level, "funding_api")
    quiet_waitress(level)
    state_file = values[funding_settings.STATE_FILE.env]
    views = StateViews(StateReader(state_file))
    history_db = values[funding_settings.HISTORY_DB.env]
    config = ApiConfig(
        stale_seconds=values[STALE_SECONDS.env], disconnect_grace_seconds=values[funding_settings.DISCONNECT_GRACE.env],
        history=HistoryReader(history_db), history_budget_file=default_budget_path(history_db),
    )
    counter = RequestCounter()
    app = build_app(views, config, counter)
    adjustments = waitress_adjustments(
        values[HOST.env],
        values[PORT.env],
        values[THREADS.env],
        values[CONNECTION_LIMIT.env],
        values[CHANNEL_TIMEOUT.env],
    )
    stop_on_sigterm()
    try:
        server = create_server(app, counter, **adjustments)
    except (OSError, ValueError) as exc:
        log.error("cannot listen on %s port %s: %s", values[HOST.env], values[PORT.env], exc)
        return 1
    host, port = str(server.effective_host), int(server.effective_port)
    view, snapshot = views.current()
    log.info(
        "listening on http://%s:%d with %d threads; state file %s (%s)",
        host,
        port,
        adjustments["threads"],
        state_file,
        snapshot.error or "%d symbols" % (view.count if view else 0),
    )
    funding_systemd.ready("listening on http://%s:%d" % (host, port))
    feeder = None
    interval = funding_systemd.watchdog_interval()
    if interval:
        feeder = WatchdogFeeder(host, port, interval)
        feeder.start()
    try:
        server.run()
    finally:
        funding_systemd.stopping()
        if feeder is not None:
            feeder.stop_event.set()
        server.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
