"""Event log lines a machine can read: `event=<name> key=value ...`, one line per event, stable keys.

`journalctl -o cat | grep event=` and log shippers split these without a regex per message: a value without
spaces, quotes, `=` or backslashes is written bare; any other is a double-quoted JSON string (shlex.split and
logfmt parsers read both). Keys are lower_snake_case; durations end in _s, counts are whole numbers. The events
and their fields are listed in the README (Logs).
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

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


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, "%s", event_line(event, **fields))
