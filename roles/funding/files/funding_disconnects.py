"""Why a WebSocket connection ended, as one of a few stable kinds: the daemon counts each kind in the state file
(`connection_status["disconnects_<kind>"]`) and the API exposes them as `funding_daemon_disconnects_total{reason}`,
so a dashboard can show disconnect reasons without parsing the free-text reason in the journal."""

from __future__ import annotations

from typing import Tuple

STATUS_PREFIX = "disconnects_"
# (kind, how the daemon's close reason starts); the first match wins, anything else is "other".
_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ("connect_failed", "connect failed"),
    ("server_closed", "server closed"),
    ("connection_lost", "connection lost"),
    ("receive_error", "receive error"),
    ("send_error", "send error"),
    ("no_data", "no markPriceUpdate"),
    ("rotated", "rotated"),
    ("stopping", "daemon stopping"),
    ("internal_error", "internal error"),
)
KINDS: Tuple[str, ...] = tuple(kind for kind, _ in _PREFIXES) + ("other",)


def kind_of(reason: str) -> str:
    """The kind of a close reason such as "server closed the connection (1000 ...)"."""
    text = (reason or "").strip()
    for kind, prefix in _PREFIXES:
        if text.startswith(prefix):
            return kind
    return "other"


def status_key(kind: str) -> str:
    return STATUS_PREFIX + kind
