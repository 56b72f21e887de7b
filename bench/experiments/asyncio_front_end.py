#!/usr/bin/env python3
"""EXPERIMENT, NOT PRODUCT: our Bottle application behind a minimal asyncio HTTP/1.1 server.

Evidence for the API throughput finding in bench/README.md: the application itself
answers /funding/{symbol} in ~65 us in-process, yet under waitress the service does
about what the seed's FastAPI does, because waitress's asyncore loop, its worker-thread
hand-off and its pure-Python parser cost ~0.5 ms per request. This front end (stdlib
asyncio, keep-alive, the app called inline) serves the same app several times faster.
The state file is re-read by a background thread (stat every 5 ms), never in a request.
It handles only well-formed GET requests without bodies: enough to measure, not to deploy.

    python3 bench/experiments/asyncio_front_end.py STATE_FILE PORT
    wrk -t2 -c16 -d10s http://127.0.0.1:PORT/funding/BTCUSDT
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from pathlib import Path
from typing import Any, List

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "roles" / "funding" / "files"))

from funding_api_app import ApiConfig, build_app  # noqa: E402
from funding_api_metrics import RequestCounter  # noqa: E402
from funding_api_view import StateViews  # noqa: E402
from funding_state import StateReader  # noqa: E402

RELOAD_POLL_SECONDS = 0.005


class BackgroundViews(StateViews):
    """Requests get the last built view without stat or lock; a thread stats the file and rebuilds the view,
    so no request ever waits for a parse (only for the GIL)."""

    def __init__(self, reader: StateReader) -> None:
        super().__init__(reader)
        self._current = super().current()
        threading.Thread(target=self._refresh_forever, name="state-reload", daemon=True).start()

    def _refresh_forever(self) -> None:
        while True:
            self._current = super().current()
            time.sleep(RELOAD_POLL_SECONDS)

    def current(self) -> Any:
        return self._current


class HttpProtocol(asyncio.Protocol):
    def __init__(self, app: Any) -> None:
        self.app = app
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4:]
            self.transport.write(self.respond(head.split("\r\n", 1)[0]))

    def respond(self, request_line: str) -> bytes:
        method, target, protocol = request_line.split(" ", 2)
        path, _, query = target.partition("?")
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                   "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "0", "SERVER_PROTOCOL": protocol,
                   "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr}
        answer: List[Any] = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> None:
            answer[:] = [status, headers]

        body = b"".join(self.app(environ, start_response))
        status, headers = answer
        lines = ["HTTP/1.1 " + status]
        lines += ["%s: %s" % (k, v) for k, v in headers if k.lower() != "content-length"]
        lines.append("Content-Length: %d" % len(body))
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def serve(state_file: str, port: int) -> None:
    app = build_app(BackgroundViews(StateReader(state_file)), ApiConfig(), RequestCounter())
    server = await asyncio.get_running_loop().create_server(lambda: HttpProtocol(app), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
