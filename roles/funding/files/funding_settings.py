"""Every FUNDING_* setting of every binance-funding program, defined once: name, parser, default, meaning.

All programs read the one funding.env, so a name means the same thing, parses
the same way and has the same default wherever it is read. Each program lists
the settings it reads (a tuple of the Settings below); `load` turns the
environment into typed values and `--help` lists those variables with their
defaults and meanings from here. A bad value exits with status 2 and a message
naming the variable.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlsplit

from funding_log import KeyValueFormatter
from funding_state import DEFAULT_STATE_FILE
from funding_version import VERSION


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str
    parse: Callable[[str], Any] = str
    # A secret (a webhook URL with its token): --help, errors and logs never show its value.
    secret: bool = False


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


def port_or_zero(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port from 1 to 65535 (0 picks a free one)")
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


http_url = url_with_scheme("http", "https")
OFF_WORDS = ("off", "none", "disabled")


def optional_http_url(text: str) -> Optional[str]:
    """An http(s) base URL without a trailing slash, or None for off/none/disabled."""
    if text.strip().lower() in OFF_WORDS:
        return None
    return http_url(text).rstrip("/")


def optional_webhook_url(text: str) -> Optional[str]:
    """An http(s) URL, or None when empty or off/none/disabled. The error never repeats the value (a secret)."""
    stripped = text.strip()
    if not stripped or stripped.lower() in OFF_WORDS:
        return None
    parts = urlsplit(stripped)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL, or empty for no webhook")
    return stripped


def absolute_path(text: str) -> str:
    if not os.path.isabs(text):
        raise ValueError("must be an absolute path (the sudoers rule matches it exactly)")
    return text


UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@-]+\.service$")


def unit_name(text: str) -> str:
    if not UNIT_NAME.match(text):
        raise ValueError("must be a systemd service name like name.service")
    return text


# --------------------------------------------------------------------------- shared
LOG_LEVEL = Setting("FUNDING_LOG_LEVEL", "INFO", "log level: DEBUG, INFO, WARNING, ERROR", log_level)
STATE_FILE = Setting("FUNDING_STATE_FILE", DEFAULT_STATE_FILE, "path of the shared state file")
REST_URL = Setting(
    "FUNDING_REST_URL",
    "https://fapi.binance.com",
    "Binance USDⓈ-M REST base URL (daemon: exchangeInfo, the contract universe, and fundingInfo; monitor: ping and "
    "spot check; comparison tool); "
    "'off' makes no REST calls",
    optional_http_url,
)
HTTP_TIMEOUT = Setting(
    "FUNDING_HTTP_TIMEOUT_SECONDS", "10", "timeout of each REST or API request", positive_float
)

# --------------------------------------------------------------------------- health (funding_health)
DISCONNECT_GRACE = Setting(
    "FUNDING_DISCONNECT_GRACE_SECONDS",
    "15",
    "a disconnect shorter than this (a start, a drop, Binance's 24 h close) is a reconnect, not unhealthy",
    non_negative_float,
)
STALE_SECONDS = Setting(
    "FUNDING_STALE_SECONDS",
    "180",
    "data older than this is stale (API: 503; monitor: a warning per stale symbol)",
    positive_float,
)
UNIVERSE_REFRESH_SECONDS = Setting(
    "FUNDING_UNIVERSE_REFRESH_SECONDS",
    "600",
    "how often the contract universe (REST exchangeInfo, weight 1) is fetched again (+-10 % jitter)",
    positive_float,
)
ARRAY_GRACE_SECONDS = Setting(
    "FUNDING_ARRAY_GRACE_SECONDS",
    "6",
    "a universe symbol the all-market array has not delivered this long after connecting (or after its listing) "
    "gets its own <symbol>@markPrice@1s stream",
    positive_float,
)
SYMBOL_EXPIRE_SECONDS = Setting(
    "FUNDING_SYMBOL_EXPIRE_SECONDS",
    "3600",
    "without a universe, a symbol no stream carried for this long is removed (and answers 404 delisted)",
    positive_float,
)
COVERAGE_GRACE_SECONDS = Setting(
    "FUNDING_COVERAGE_GRACE_SECONDS",
    "120",
    "coverage of the universe under 99 % for longer than this (and this long after the daemon started) is unhealthy",
    non_negative_float,
)
MAX_MESSAGE_AGE = Setting(
    "FUNDING_MAX_MESSAGE_AGE_SECONDS", "60", "no market data for longer than this is unhealthy", positive_float
)

# --------------------------------------------------------------------------- daemon
DEFAULT_WS_URL = "wss://fstream.binance.com/market/stream?streams=!markPrice@arr"
WS_URL = Setting(
    "FUNDING_WS_URL", DEFAULT_WS_URL, "WebSocket URL of the !markPrice@arr stream (combined or raw)",
    url_with_scheme("wss", "ws"),
)
NO_DATA_SECONDS = Setting(
    "FUNDING_NO_DATA_SECONDS", "30", "reconnect when an open connection delivered no markPriceUpdate for this long",
    positive_float,
)
RECONNECT_INITIAL = Setting(
    "FUNDING_RECONNECT_INITIAL_SECONDS", "1", "first reconnect delay (doubles per failed attempt)", positive_float
)
RECONNECT_MAX = Setting("FUNDING_RECONNECT_MAX_SECONDS", "60", "longest reconnect delay", positive_float)
HEALTHY_RESET = Setting(
    "FUNDING_HEALTHY_RESET_SECONDS", "5",
    "seconds of data on one connection after which the reconnect delay starts over", positive_float,
)
ROTATE_SECONDS = Setting(
    "FUNDING_ROTATE_SECONDS", "82800",
    "replace a connection this old (before Binance's 24 h limit) without a data gap", positive_float,
)
CONNECT_TIMEOUT = Setting(
    "FUNDING_CONNECT_TIMEOUT_SECONDS", "10", "timeout of the TCP/TLS/WebSocket handshake", positive_float
)
WRITE_COALESCE = Setting(
    "FUNDING_WRITE_COALESCE_SECONDS", "0.005",
    "after a change, wait this long for more before writing the state file once", non_negative_float,
)
WRITE_HEARTBEAT = Setting(
    "FUNDING_WRITE_HEARTBEAT_SECONDS", "5", "rewrite the state file at least this often (keeps updated_at current)",
    positive_float,
)
SUMMARY_SECONDS = Setting("FUNDING_SUMMARY_SECONDS", "300", "interval of the summary log line", positive_float)
INTERVALS_REFRESH = Setting(
    "FUNDING_INTERVALS_REFRESH_SECONDS", "3600", "how often fundingInfo is fetched again", positive_float
)

# --------------------------------------------------------------------------- API
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


API_HOST = Setting("FUNDING_API_HOST", "127.0.0.1", "address to listen on (keep it on loopback)")
API_PORT = Setting("FUNDING_API_PORT", "8888", "TCP port to listen on (0 picks a free one)", port_or_zero)
API_WORKERS = Setting(
    "FUNDING_API_WORKERS", "0", "worker processes of the API server (0: one per CPU core, at most 4)", api_workers
)
API_STATE_POLL = Setting(
    "FUNDING_API_STATE_POLL_MS", "2",
    "how often each API worker looks for a new state file, in milliseconds (off the request path)",
    positive_milliseconds,
)
API_HEADER_TIMEOUT = Setting(
    "FUNDING_API_HEADER_TIMEOUT", "30", "seconds a client has to send its request head before the connection is closed",
    positive_int,
)
API_MAX_STREAMS = Setting(
    "FUNDING_API_MAX_STREAMS", "64",
    "open /funding/stream connections over all API workers; one more is answered 503 with Retry-After", positive_int,
)
API_STREAM_SEND_TIMEOUT = Setting(
    "FUNDING_API_STREAM_SEND_TIMEOUT_SECONDS", "10",
    "a /funding/stream client that has had data waiting for it this long without catching up is dropped",
    positive_float,
)

# --------------------------------------------------------------------------- health monitor
API_URL = Setting("FUNDING_API_URL", "http://127.0.0.1:8888", "base URL of the local funding API", http_url)
MIN_SYMBOLS = Setting("FUNDING_MIN_SYMBOLS", "500", "fewer symbols than this is an error", positive_int)
SPOT_CHECK_SYMBOL = Setting("FUNDING_SPOT_CHECK_SYMBOL", "BTCUSDT", "symbol compared against Binance REST")
PRICE_WARN_PERCENT = Setting(
    "FUNDING_PRICE_WARN_PERCENT", "0.1", "mark price difference from REST that is a warning", positive_float
)
PRICE_ERROR_PERCENT = Setting(
    "FUNDING_PRICE_ERROR_PERCENT", "1.0", "mark price difference from REST that is an error", positive_float
)
SPOT_SAME_MOMENT = Setting(
    "FUNDING_SPOT_SAME_MOMENT_SECONDS", "0.1", "REST and local values closer than this are the same moment",
    non_negative_float,
)
SPOT_TIME_GAP = Setting(
    "FUNDING_SPOT_TIME_GAP_SECONDS", "5", "REST and local timestamps further apart than this are noted",
    positive_float,
)
DAEMON_STUCK = Setting(
    "FUNDING_DAEMON_STUCK_SECONDS", "180",
    "restart an active daemon only after this long without data (REST reachable)", positive_float,
)
MAX_RESTARTS = Setting("FUNDING_MAX_RESTARTS", "3", "restarts allowed per unit within the window", positive_int)
RESTART_WINDOW = Setting("FUNDING_RESTART_WINDOW_MINUTES", "30", "window of the restart limit", positive_float)
RESTART_WAIT = Setting(
    "FUNDING_RESTART_WAIT_SECONDS", "20", "how long to wait for a restarted unit to become active", positive_float
)
SYSTEMCTL_TIMEOUT = Setting(
    "FUNDING_SYSTEMCTL_TIMEOUT_SECONDS", "30", "timeout of each systemctl/sudo call", positive_float
)
SYSTEMCTL = Setting("FUNDING_SYSTEMCTL", "/usr/bin/systemctl", "absolute path of systemctl", absolute_path)
SUDO = Setting("FUNDING_SUDO", "/usr/bin/sudo", "absolute path of sudo", absolute_path)
MONITOR_STATE_FILE = Setting(
    "FUNDING_MONITOR_STATE_FILE", "/var/lib/binance-funding/monitor-restarts.json",
    "restart history (JSON, written atomically)", absolute_path,
)
MONITOR_STATUS_FILE = Setting(
    "FUNDING_MONITOR_STATUS_FILE", "/var/lib/binance-funding/monitor-status.json",
    "the last check's verdict and the webhook bookkeeping (JSON, written atomically)", absolute_path,
)
ALERT_WEBHOOK_URL = Setting(
    "FUNDING_ALERT_WEBHOOK_URL", "",
    "http(s) URL that receives a JSON POST (Slack/Mattermost 'text' plus fields) on health transitions and "
    "restarts; empty: no webhook",
    optional_webhook_url, secret=True,
)
ALERT_MIN_INTERVAL = Setting(
    "FUNDING_ALERT_MIN_INTERVAL_MINUTES", "30",
    "at most one webhook per state (healthy, unhealthy, restart) per this many minutes", non_negative_float,
)
ALERT_TIMEOUT = Setting(
    "FUNDING_ALERT_TIMEOUT_SECONDS", "5", "the webhook POST gives up after this long in total", positive_float
)
WS_UNIT = Setting("FUNDING_WS_UNIT", "binance-funding-ws.service", "unit of the WebSocket daemon", unit_name)
API_UNIT = Setting("FUNDING_API_UNIT", "binance-funding-api.service", "unit of the HTTP API", unit_name)

# ----------------------------------------------------------------------- settlement history (recorder, API, monitor)
HISTORY_DB = Setting(
    "FUNDING_HISTORY_DB", "/var/lib/binance-funding/funding-history.sqlite3",
    "SQLite database of settled funding rates (written by the recorder, read by the API and the monitor)",
    absolute_path,
)
HISTORY_BACKFILL_DAYS = Setting(
    "FUNDING_HISTORY_BACKFILL_DAYS", "7", "days of settlements the recorder fetches on its first run",
    non_negative_float,
)
HISTORY_RETENTION_DAYS = Setting(
    "FUNDING_HISTORY_RETENTION_DAYS", "365", "settlements older than this many days are pruned (daily)",
    positive_float,
)
HISTORY_REST_BUDGET = Setting(
    "FUNDING_HISTORY_REST_BUDGET", "120",
    "fundingRate requests the recorder may make per FUNDING_HISTORY_REST_WINDOW_SECONDS (Binance: 500 per 300 s "
    "shared with fundingInfo; 120 + the daemon's fundingInfo stays under 25 %)", positive_int,
)
HISTORY_REST_WINDOW = Setting(
    "FUNDING_HISTORY_REST_WINDOW_SECONDS", "300", "window of FUNDING_HISTORY_REST_BUDGET", positive_float
)
HISTORY_CONFIRM_DELAY = Setting(
    "FUNDING_HISTORY_CONFIRM_DELAY_SECONDS", "10",
    "a settlement is asked of REST this long after its funding time (Binance publishes it shortly after)",
    non_negative_float,
)
HISTORY_RUN_SECONDS = Setting(
    "FUNDING_HISTORY_RUN_SECONDS", "45", "a recorder run stops asking REST after this long (it runs every minute)",
    positive_float,
)

# --------------------------------------------------------------------------- comparison tool
COMPARE_BEHIND = Setting(
    "FUNDING_COMPARE_BEHIND_SECONDS", "180",
    "a symbol whose value is this far behind REST's counts as stale (a problem)", positive_float,
)


def collect_registry(values: Iterable[Any]) -> Dict[str, Setting]:
    """Every Setting among values by name; RuntimeError when one name has two definitions."""
    found: Dict[str, Setting] = {}
    for value in values:
        if isinstance(value, Setting):
            if value.env in found and found[value.env] is not value:
                raise RuntimeError("%s is defined twice" % value.env)
            found[value.env] = value
    return found


REGISTRY: Dict[str, Setting] = collect_registry(list(globals().values()))


def build_parser(prog: str, description: str, settings: Sequence[Setting]) -> argparse.ArgumentParser:
    width = max(len(s.env) for s in settings) if settings else 0
    lines = ["environment variables (default in brackets):"]
    for s in settings:
        default = "secret, not shown" if s.secret else s.default
        lines.append("  %-*s  %s [%s]" % (width, s.env, s.help, default))
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + VERSION)
    return parser


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
            problems.append("%s=%s: %s" % (s.env, "(secret, not shown)" if s.secret else repr(text), exc))
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
    """key=value lines on stderr (funding_log); under journald without the time, which journald adds itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(under_journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger(name)

