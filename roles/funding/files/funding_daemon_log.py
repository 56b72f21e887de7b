"""The daemon's logger (named after the program, as every line says `logger=binance_funding_ws_daemon`) and how its
log lines describe an exception."""

from __future__ import annotations

import logging

PROGRAM = "binance_funding_ws_daemon"

log = logging.getLogger(PROGRAM)


def describe_error(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__
