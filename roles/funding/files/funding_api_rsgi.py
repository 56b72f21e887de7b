"""The API's front door in each Granian worker: an RSGI application.

Granian serves one interface per server. The ordinary endpoints are the Bottle
WSGI application (funding_api_app), called inline here: it never blocks (the
state view is prepared off the request path), so running it on the worker's
event loop costs what Granian's WSGI thread hand-off cost (bench/README.md has
the figures). What WSGI cannot do is hold a response open without pinning a
Python thread, and no Granian interface tells the application when a client
stops reading; so the long-lived endpoints live here, on the event loop:

  GET /funding/stream   server-sent events (funding_api_stream)
  GET /ui, /ui/*        the live page (static files, strict CSP)

Everything else goes to the WSGI application unchanged.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

log = logging.getLogger("funding_api")

WsgiApp = Callable[[Dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Handler = Callable[[Any, Any], Any]

_EMPTY_INPUT = io.BytesIO(b"")
_INVALID_PATH_BODY = b'{"error":"invalid_path","detail":"the path is not valid UTF-8","status":400}'


class _StartResponse:
    __slots__ = ("headers", "status")

    def __init__(self) -> None:
        self.status = 500
        self.headers: List[Tuple[str, str]] = []

    def __call__(self, status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> None:
        self.status = int(status[:3])
        self.headers = headers


def wsgi_environ(scope: Any, base: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The WSGI environ of an RSGI request scope; None when its path is not valid UTF-8.

    RSGI gives the path percent-decoded as UTF-8 with invalid bytes replaced by U+FFFD; WSGI wants the bytes as
    latin-1. A path with U+FFFD in it is refused (no symbol or route contains one).
    """
    path = scope.path
    if "\ufffd" in path:
        return None
    environ = dict(base)
    environ["REQUEST_METHOD"] = scope.method
    environ["PATH_INFO"] = path.encode("utf-8").decode("latin-1")
    environ["QUERY_STRING"] = scope.query_string
    environ["SERVER_PROTOCOL"] = "HTTP/1.0" if scope.http_version == "1" else "HTTP/" + scope.http_version
    environ["REMOTE_ADDR"] = scope.client.rsplit(":", 1)[0]
    environ["wsgi.input"] = _EMPTY_INPUT
    for name, value in scope.headers.items():
        if name == "content-length":
            environ["CONTENT_LENGTH"] = value
        elif name == "content-type":
            environ["CONTENT_TYPE"] = value
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = environ[key] + "," + value if key in environ else value
    return environ


class RsgiFront:
    """RSGI application: `routes` (exact paths, or prefixes ending in '/') are served by async handlers, the rest by
    the WSGI application inline. `on_start(loop)` runs once in the worker's event loop (e.g. the stream hub)."""

    def __init__(
        self,
        wsgi_app: WsgiApp,
        routes: Optional[Dict[str, Handler]] = None,
        on_start: Optional[Callable[[asyncio.AbstractEventLoop], None]] = None,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.routes = dict(routes or {})
        self.prefixes = [(p, h) for p, h in self.routes.items() if p.endswith("/")]
        self.on_start = on_start
        self.base_environ: Dict[str, Any] = {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SCRIPT_NAME": "",
            "SERVER_SOFTWARE": "Granian",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "0",
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multiprocess": True,
            "wsgi.multithread": False,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.on_start is not None:
            self.on_start(loop)

    def handler_for(self, path: str) -> Optional[Handler]:
        handler = self.routes.get(path)
        if handler is None:
            for prefix, candidate in self.prefixes:
                if path.startswith(prefix):
                    return candidate
        return handler

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        handler = self.handler_for(scope.path)
        if handler is not None:
            await handler(scope, proto)
            return
        self.call_wsgi(scope, proto)

    def call_wsgi(self, scope: Any, proto: Any) -> None:
        environ = wsgi_environ(scope, self.base_environ)
        if environ is None:
            headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
            proto.response_bytes(400, headers, b"" if scope.method == "HEAD" else _INVALID_PATH_BODY)
            return
        start = _StartResponse()
        result = self.wsgi_app(environ, start)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        proto.response_bytes(start.status, start.headers, body)
