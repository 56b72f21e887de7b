"""GET /ui: the live page, three static files read once when the worker starts.

The page (funding_ui/index.html, funding_ui/funding_ui.js, funding_ui/funding_ui.css) has no inline
script or style and loads nothing from elsewhere, so its Content-Security-Policy allows only this origin:
scripts and styles from /ui/, data from /funding/stream and /funding/health.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import orjson

log = logging.getLogger("funding_api")

UI_DIRECTORY = Path(__file__).resolve().parent / "funding_ui"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
COMMON_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
    ("Server", "binance-funding"),
]
# URL path -> (file name, content type)
FILES = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/": ("index.html", "text/html; charset=utf-8"),
    "/ui/funding_ui.js": ("funding_ui.js", "text/javascript; charset=utf-8"),
    "/ui/funding_ui.css": ("funding_ui.css", "text/css; charset=utf-8"),
}


def _not_found(path: str) -> bytes:
    shown = path if len(path) <= 60 else path[:60] + "..."
    return orjson.dumps({"error": "not_found", "detail": "no such endpoint: %s" % shown, "status": 404})


class UiFiles:
    """The RSGI handler of /ui and /ui/*: the page's files from memory."""

    def __init__(self, count_request: Callable[[str, str], None], directory: Optional[Path] = None) -> None:
        self.count_request = count_request
        self.files: Dict[str, Tuple[bytes, List[Tuple[str, str]]]] = {}
        directory = directory or UI_DIRECTORY
        for path, (name, content_type) in FILES.items():
            try:
                body = (directory / name).read_bytes()
            except OSError as exc:
                log.error("the page's file %s cannot be read (%s): /ui answers 404", directory / name, exc)
                continue
            self.files[path] = (body, [("Content-Type", content_type)] + COMMON_HEADERS)

    async def __call__(self, scope: Any, proto: Any) -> None:
        method = scope.method
        found = self.files.get(scope.path)
        if method not in ("GET", "HEAD"):
            self.count_request("/ui", "405")
            body = orjson.dumps({"error": "method_not_allowed", "detail": "only GET and HEAD are supported",
                                 "status": 405})
            proto.response_bytes(405, [("Content-Type", "application/json"), ("Allow", "GET, HEAD")], body)
            return
        if found is None:
            self.count_request("/ui", "404")
            headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
            proto.response_bytes(404, headers, b"" if method == "HEAD" else _not_found(scope.path))
            return
        body, headers = found
        self.count_request("/ui", "200")
        proto.response_bytes(200, headers, b"" if method == "HEAD" else body)
