"""Settings from FUNDING_* environment variables, with --help, shared by every program.

Each program declares its settings once as a tuple of Setting; `load` turns
the environment into typed values and `--help` lists every variable with its
default. A bad value exits with status 2 and a message naming the variable.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str
    parse: Callable[[str], Any] = str


class SettingsError(ValueError):
    pass


def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be zero or a positive number")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError("must be a port from 1 to 65535")
    return value


def log_level(text: str) -> str:
    name = text.strip().upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return name


def url_with_scheme(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text.strip())
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError("must be a %s URL" % " or ".join(s + "://" for s in schemes))
        return text.strip()

    return parse


LOG_LEVEL = Setting("FUNDING_LOG_LEVEL", "INFO", "log level: DEBUG, INFO, WARNING, ERROR", log_level)
DISCONNECT_GRACE = Setting(
    "FUNDING_DISCONNECT_GRACE_SECONDS",
    "15",
    "a reconnect shorter than this is not reported as disconnected (drops, Binance's 24 h close)",
    non_negative_float,
)
STALE_SECONDS = Setting(
    "FUNDING_STALE_SECONDS",
    "180",
    "data older than this is stale (API: 503; monitor: a warning)",
    positive_float,
)
STATE_FILE = Setting(
    "FUNDING_STATE_FILE", "/var/lib/binance-funding/.funding_state.json", "path of the shared state file"
)


def build_parser(prog: str, description: str, settings: Sequence[Setting]) -> argparse.ArgumentParser:
    width = max(len(s.env) for s in settings) if settings else 0
    lines = ["environment variables (default in brackets):"]
    for s in settings:
        lines.append("  %-*s  %s [%s]" % (width, s.env, s.help, s.default))
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def resolve(settings: Sequence[Setting], environ: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Typed values keyed by variable name; raise SettingsError naming every bad variable."""
    env = os.environ if environ is None else environ
    values: Dict[str, Any] = {}
    problems = []
    for s in settings:
        raw = env.get(s.env, "")
        text = raw if raw.strip() else s.default
        try:
            values[s.env] = s.parse(text)
        except (ValueError, TypeError) as exc:
            problems.append("%s=%r: %s" % (s.env, text, exc))
    if problems:
        raise SettingsError("; ".join(problems))
    return values


def load(
    prog: str,
    description: str,
    settings: Sequence[Setting],
    argv: Optional[Sequence[str]] = None,
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
) -> "tuple[argparse.Namespace, Dict[str, Any]]":
    """Parse argv (for --help and program flags) and the environment; exit 2 on bad input."""
    parser = build_parser(prog, description, settings)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        values = resolve(settings)
    except SettingsError as exc:
        print("%s: invalid configuration: %s" % (prog, exc), file=sys.stderr)
        raise SystemExit(2) from None
    return args, values


def setup_logging(level: str, name: str) -> logging.Logger:
    """Plain lines on stderr: journald adds the time, host and unit itself."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger(name)


def api_workers(text: str) -> int:
    """A count of API worker processes; 0 means one per CPU core, at most 4."""
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 (one per core, at most 4) or a positive whole number")
    if value == 0:
        value = min(4, os.cpu_count() or 1)
    return value


def positive_milliseconds(text: str) -> float:
    """Milliseconds in the environment, seconds in the program."""
    return positive_float(text) / 1000.0


API_WORKERS = Setting(
    "FUNDING_API_WORKERS",
    "0",
    "worker processes of the API server (0: one per CPU core, at most 4)",
    api_workers,
)
API_STATE_POLL = Setting(
    "FUNDING_API_STATE_POLL_MS",
    "2",
    "how often each API worker looks for a new state file, in milliseconds (off the request path)",
    positive_milliseconds,
)
API_HEADER_TIMEOUT = Setting(
    "FUNDING_API_HEADER_TIMEOUT",
    "30",
    "seconds a client has to send its request head before the connection is closed",
    positive_int,
)
API_MAX_STREAMS = Setting(
    "FUNDING_API_MAX_STREAMS",
    "64",
    "open /funding/stream connections over all API workers; one more is answered 503 with Retry-After",
    positive_int,
)
API_STREAM_SEND_TIMEOUT = Setting(
    "FUNDING_API_STREAM_SEND_TIMEOUT_SECONDS",
    "10",
    "a /funding/stream client that has not taken what was sent for this long is dropped",
    positive_float,
)
