"""Log lines a machine can read: every line of every program is `key=value` pairs (logfmt), one line per record.

    level=WARNING event=disconnect conn=3 reason="server closed the connection (1000)" delay_s=1.24 attempt=2 msg="..."

`level`, `event` (what happened; "log" for a line that names no event) and `msg` (the sentence for people) are on
every line; an event adds its own stable fields (log_event, or `extra={"event": ..., "fields": {...}}`). Outside
journald (which stamps time and unit itself) `ts` and `logger` come first. A traceback is one `exc="..."` field, not
extra lines. A value without spaces, quotes, `=` or backslashes is written bare; any other is a double-quoted JSON
string, so `journalctl -o cat | grep event=reconnect`, shlex.split and logfmt parsers all read it. Keys are
lower_snake_case; durations end in _s, counts are whole numbers. The README lists the events (Logs).
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any, Dict

KEY = re.compile(r"^[a-z][a-z0-9_]*$")
BARE = re.compile(r'^[^\s"=\\]+$')


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return ("%.3f" % value).rstrip("0").rstrip(".") if value != int(value) else "%d" % value
    text = str(value)
    return text if BARE.match(text) else json.dumps(text, ensure_ascii=False)


def event_line(event: str, **fields: Any) -> str:
    """`event=<event> k=v ...` in the order given."""
    parts = ["event=" + format_value(event)]
    for key, value in fields.items():
        if not KEY.match(key):
            raise ValueError("log field name %r is not lower_snake_case" % key)
        parts.append("%s=%s" % (key, format_value(value)))
    return " ".join(parts)


def log_event(logger: logging.Logger, level: int, event: str, msg: str = "", **fields: Any) -> None:
    """One event: its name, its fields, and optionally a sentence for people."""
    for key in fields:
        if not KEY.match(key):
            raise ValueError("log field name %r is not lower_snake_case" % key)
    logger.log(level, "%s", msg, extra={"event": event, "fields": fields})


def event(name: str, **fields: Any) -> Dict[str, Any]:
    """`extra=` for a logging call that is an event: `log.info("...", extra=event("connected", conn=3))`."""
    for key in fields:
        if not KEY.match(key):
            raise ValueError("log field name %r is not lower_snake_case" % key)
    return {"event": name, "fields": fields}


class KeyValueFormatter(logging.Formatter):
    """Every record as one logfmt line (see the module's docstring)."""

    def __init__(self, under_journald: bool) -> None:
        super().__init__()
        self.under_journald = under_journald

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if not self.under_journald:
            parts.append("ts=" + self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + ".%03d" % record.msecs)
        parts.append("level=" + record.levelname)
        if not self.under_journald:
            parts.append("logger=" + format_value(record.name))
        fields = getattr(record, "fields", None) or {}
        parts.append(event_line(str(getattr(record, "event", None) or "log"), **fields))
        message = record.getMessage()
        if message:
            parts.append("msg=" + json.dumps(message, ensure_ascii=False))
        if record.exc_info:
            parts.append("exc=" + json.dumps(self.formatException(record.exc_info), ensure_ascii=False))
        return " ".join(parts)
