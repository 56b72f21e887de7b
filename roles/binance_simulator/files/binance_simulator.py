#!/usr/bin/env python3
"""Simulated Binance USDⓈ-M futures exchange on one loopback port: mark-price streams, REST and a fault control API.

WebSocket:  /market/stream?streams=NAME[/NAME...]            combined frames {"stream": ..., "data": ...}
            /market/ws/NAME  (or /market/ws, then SUBSCRIBE)  raw frames (the bare payload)
            NAME: !markPrice@arr[@1s] (an array: crypto perpetuals, dated, some SETTLING and COIN-M rows; no
            TradFi) or <symbol lowercase>@markPrice[@1s] (ONE object, any listed contract, TradFi included)
            live control: text frames {"method": "SUBSCRIBE"|"UNSUBSCRIBE"|"LIST_SUBSCRIPTIONS", "params": [...],
            "id": N} -> {"result": null|[...], "id": N}; errors {"error": {"code": 2|3, "msg": ...}, "id": N}
            rules: binary frame -> close 1008; more than 10 messages in 1 s -> close 1008; at most 1024 streams
            per connection (a SUBSCRIBE beyond is refused with code 2 and adds nothing)
            /stream?streams=...  /ws/...                        legacy paths: accepted, then silent forever
REST:       /fapi/v1/exchangeInfo  /fapi/v1/premiumIndex[?symbol=]  /fapi/v1/fundingInfo  /fapi/v1/ping  /fapi/v1/time
            /fapi/v1/fundingRate[?symbol=&startTime=&endTime=&limit=]  (settled rates; fundingInfo and fundingRate
            share 500 requests / 5 min: 429 with Retry-After, then 418)
Control:    GET /_sim/status  GET /_sim/symbols[?symbols=A,B|?all=1]  GET /_sim/universe  GET /_sim/connections
            GET /_sim/funding[?symbol=S]  (ledger, interval switches, fundingRate/fundingInfo requests and bucket)
            POST /_sim/fault {"fault": NAME, ...}  POST /_sim/clear  POST /_sim/counters/reset  (loopback only)

Faults (switches stay on until turned off with on=false or POST /_sim/clear; * marks one-shot actions):
  drop* mode=abrupt|close        stall        refuse        malformed        poison oversize_every=N
  rotate[*] after=SECONDS        freeze       rest_outage   rest_garbage     rest_skew percent=P
  list* symbol=S contractType=PERPETUAL|TRADIFI_PERPETUAL underlyingType=COIN|EQUITY|COMMODITY|INDEX
        price=P fundingIntervalHours=1|4|8      (a new TRADING contract, in exchangeInfo and on its streams)
  delist* symbol=S rows=no_funding|stop         (TRADING -> SETTLING; rows keep flowing without funding, or stop)
  exchange_info_outage mode=503|500|429|reset|hang        (only exchangeInfo fails; other REST keeps working)
  exchange_info_garbage kind=html|truncated|not_object|no_symbols|empty|no_perpetuals|too_many|
        malformed_entries|shrunk
  subscribe_error code=N msg=TEXT count=K       (SUBSCRIBE answered with that error, nothing added; K>0: K times)
  array_tradfi underlyingType=ALL|EQUITY|COMMODITY|INDEX[,...]   (TradFi rows appear on the array too)
  funding_rate* symbol=S rate=R                 (hold S's live rate at R, clamped to its cap: at the cap, the next
                                                settlement switches S to 1 h)
  funding_rest_limit status=429|418 retry_after=S   (fundingInfo and fundingRate refused with that status)
Listings and delistings change the market: clearing the faults does not undo them.

Every option can also be set by a SIM_* environment variable; flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from binance_sim_faults import (
    FAULT_NAMES,
    FaultError,
    FaultState,
    exchange_info_garbage,
    fault_summary,
    malformed_frames,
    oversized_frame,
    parse_fault_flag,
    poisoned_items,
)
from binance_sim_funding import QueryError as FundingQueryError
from binance_sim_funding import RestBucket
from binance_sim_funding import parse_query as parse_funding_query
from binance_sim_market import Market, MarketError
from binance_sim_streams import (
    ARRAY_STREAM_NAMES,
    MAX_MESSAGES_PER_SECOND,
    MAX_STREAMS_PER_CONNECTION,
    POLICY_VIOLATION,
    SPEEDS,
    ConnectionCounters,
    LimitCounters,
    Subscriptions,
    check_params,
    error_reply,
    valid_request_id,
)
from binance_sim_universe import DEFAULT_CONTRACT_COUNT
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

try:
    from websockets.asyncio.server import broadcast
except ImportError:  # websockets < 13.1 keeps it in the connection module
    from websockets.asyncio.connection import broadcast  # type: ignore[no-redef]

LOG = logging.getLogger("binance_simulator")

CLOSED_CONNECTIONS_KEPT = 200
EXCHANGE_INFO_HANG_SECONDS = 30.0
MAX_WRITE_BUFFER = 32 * 1024 * 1024  # a subscriber this far behind is cut off, as Binance does
MAX_REQUEST_HEAD = 16 * 1024
MAX_REQUEST_BODY = 64 * 1024
HOUSEKEEPING_SECONDS = 0.25

REST_OUTAGE_HTML = (
    "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>"
    "<h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body></html>\n"
)
REST_GARBAGE_HTML = (
    "<!DOCTYPE html><html><head><title>Binance</title></head><body><div id=\"maintenance\">"
    "<h1>System maintenance</h1><p>We are upgrading our systems. Please try again later.</p></div></body></html>\n"
)


# --- configuration ------------------------------------------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0.01:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0.01, got {text!r}")
    return value


def _optional_seconds(text: str) -> Optional[float]:
    """0 disables."""
    if text.strip() in ("0", "0.0", "off", "none", ""):
        return None
    return _positive_seconds(text)


def _non_negative_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= 24 * 400:
        raise argparse.ArgumentTypeError(f"must be 0..9600 hours, got {text!r}")
    return value


def _whole_number(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
        return value

    return parse


_port = _whole_number(0, 65535, "a port number")
_symbol_count = _whole_number(1, 20_000, "an integer")
_request_limit = _whole_number(1, 1_000_000, "a number of requests")


def _optional_count(text: str) -> Optional[int]:
    """Empty: the default."""
    if not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 20_000:
        raise argparse.ArgumentTypeError(f"must be 0..20000, got {value}")
    return value


def _fault(text: str) -> Tuple[str, Dict[str, Any]]:
    try:
        name, params = parse_fault_flag(text)
        FaultState().apply(name, params)  # validate now, so a typo fails at start with exit 2
    except FaultError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name, params


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"log level must be DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return level


OPTIONS = (
    # flag, environment variable, default, type, help
    ("--host", "SIM_HOST", "127.0.0.1", str, "address to listen on"),
    ("--port", "SIM_PORT", "9000", _port, "port for WebSocket, REST and control (0 picks a free one)"),
    ("--port-file", "SIM_PORT_FILE", "", str, "write the bound port to this file once listening"),
    ("--seed", "SIM_SEED", "42", int, "seed for the symbol universe and the random walk"),
    ("--symbols", "SIM_SYMBOLS", str(DEFAULT_CONTRACT_COUNT), _symbol_count,
     "contracts in exchangeInfo (at least the named ones), mixed like Binance's: 65%% PERPETUAL, 20%% "
     "TRADIFI_PERPETUAL, 15%% SETTLING, 1 PENDING_TRADING, dated quarterlies"),
    ("--tradfi", "SIM_TRADFI", "", _optional_count,
     "TRADIFI_PERPETUAL contracts among --symbols (default: 20%% of them, like Binance); more than 1024 makes a "
     "client open a second connection for per-symbol streams"),
    ("--push-interval", "SIM_PUSH_INTERVAL", "3.0", _positive_seconds, "seconds between !markPrice@arr pushes"),
    ("--fast-push-interval", "SIM_FAST_PUSH_INTERVAL", "1.0", _positive_seconds,
     "seconds between !markPrice@arr@1s pushes; the market ticks at this rate"),
    ("--ping-interval", "SIM_PING_INTERVAL", "180", _optional_seconds, "seconds between server pings (0: none)"),
    ("--ping-timeout", "SIM_PING_TIMEOUT", "600", _optional_seconds,
     "seconds a client may take to answer a ping before it is dropped (0: never)"),
    ("--connection-lifetime", "SIM_CONNECTION_LIFETIME", "86400", _positive_seconds,
     "seconds after which the server closes a connection (Binance: 24 h)"),
    ("--log-level", "SIM_LOG_LEVEL", "INFO", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    ("--funding-period-seconds", "SIM_FUNDING_PERIOD_SECONDS", "0", _optional_seconds,
     "seconds one funding hour lasts (0: a real hour); an 8 h symbol then settles every 8 x this"),
    ("--funding-history-hours", "SIM_FUNDING_HISTORY_HOURS", "168", _non_negative_hours,
     "funding hours of settlements the ledger holds at start (what a backfill finds)"),
    ("--funding-rest-limit", "SIM_FUNDING_REST_LIMIT", "500", _request_limit,
     "requests per 5 minutes that fundingInfo and fundingRate share (then 429, then 418)"),
)


def parse_config(argv: Optional[List[str]] = None, environ: Optional[Dict[str, str]] = None) -> argparse.Namespace:
    environ = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(
        prog="binance_simulator.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Faults: " + ", ".join(FAULT_NAMES) + ". --fault NAME[=VALUE] may be repeated; VALUE is rest_skew's "
        "percent, rotate's after (seconds of connection age), drop's mode (abrupt|close), poison's "
        "oversize_every, list's and delist's symbol, exchange_info_outage's mode, exchange_info_garbage's kind, "
        "subscribe_error's code, array_tradfi's underlyingType, or on/off for a switch. SIM_FAULTS takes a "
        "comma-separated list.",
    )
    for flag, variable, default, kind, text in OPTIONS:
        value = environ.get(variable, default)
        parser.add_argument(flag, default=value, type=kind, help=f"{text} [env {variable}, default {default}]")
    parser.add_argument(
        "--fault", action="append", type=_fault, default=[], metavar="NAME[=VALUE]",
        help="fault active from the start (repeatable) [env SIM_FAULTS, comma-separated]",
    )
    config = parser.parse_args(argv)
    env_faults = [text for text in environ.get("SIM_FAULTS", "").split(",") if text.strip()]
    try:
        config.fault = [_fault(text.strip()) for text in env_faults] + config.fault
    except argparse.ArgumentTypeError as exc:
        parser.error(f"SIM_FAULTS: {exc}")
    return config


# --- routing ------------------------------------------------------------------------------------------------------


@dataclass
class StreamRoute:
    label: str
    combined: bool
    names: List[str]
    legacy: bool


def stream_route(path: str, query: Dict[str, List[str]]) -> Optional[StreamRoute]:
    """The WebSocket route of a request path, or None when no stream lives there."""
    if path == "/market/stream":
        names = [name for value in query.get("streams", []) for name in value.split("/") if name]
        return StreamRoute(path, True, list(dict.fromkeys(names)), False)
    if path == "/market/ws" or path.startswith("/market/ws/"):
        name = path[len("/market/ws/"):] if path.startswith("/market/ws/") else ""
        return StreamRoute(path, False, [name] if name else [], False)
    if path == "/stream":
        return StreamRoute(path, True, [], True)
    if path == "/ws" or path.startswith("/ws/"):
        return StreamRoute("/ws", False, [], True)
    return None


REST_WEIGHTS = {"/fapi/v1/exchangeInfo": 1, "/fapi/v1/premiumIndex": 1, "/fapi/v1/fundingInfo": 1,
                "/fapi/v1/fundingRate": 1,
                "/fapi/v1/ping": 1, "/fapi/v1/time": 1}


def rest_weight(path: str, query: Dict[str, List[str]]) -> int:
    """Binance's request weight: premiumIndex without a symbol costs 10, the others 1; unknown paths 0."""
    if path == "/fapi/v1/premiumIndex" and "symbol" not in query:
        return 10
    return REST_WEIGHTS.get(path, 0)


def is_loopback(address: Any) -> bool:
    try:
        host = address[0] if isinstance(address, (tuple, list)) else address
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except (ValueError, IndexError, TypeError):
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class SimServerConnection(ServerConnection):
    """Lets plain HTTP requests with a body (POST /_sim/fault) through websockets' GET-only handshake parser.

    The request head is read first; the method and body are kept on the connection and websockets sees a bodiless
    GET, which `process_request` answers using the real method and body.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sim_method = "GET"
        self.sim_body = b""
        self.sim_route: Optional[StreamRoute] = None
        self._sim_buffer = bytearray()
        self._sim_head_done = False

    def _sim_release(self, data: bytes) -> None:
        self._sim_head_done = True
        self._sim_buffer = bytearray()
        super().data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._sim_head_done:
            super().data_received(data)
            return
        self._sim_buffer += data
        end = self._sim_buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._sim_buffer) > MAX_REQUEST_HEAD:
                self._sim_release(bytes(self._sim_buffer))
            return
        buffered = bytes(self._sim_buffer)
        lines = buffered[:end].split(b"\r\n")
        request_line = lines[0].split(b" ")
        length = 0
        kept = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    length = -1
                continue
            kept.append(line)
        if len(request_line) != 3 or not 0 <= length <= MAX_REQUEST_BODY or (
            request_line[0] == b"GET" and length == 0
        ):
            self._sim_release(buffered)  # websockets answers it (or rejects it) as usual
            return
        rest = buffered[end + 4:]
        if len(rest) < length:
            return  # wait for the rest of the body
        self.sim_method = request_line[0].decode("ascii", "replace")
        self.sim_body = rest[:length]
        head = b"\r\n".join([b"GET " + request_line[1] + b" " + request_line[2], *kept])
        self._sim_release(head + b"\r\n\r\n" + rest[length:])

    def eof_received(self) -> Optional[bool]:
        if not self._sim_head_done and self._sim_buffer:
            self._sim_release(bytes(self._sim_buffer))
        return super().eof_received()


# --- the simulator ------------------------------------------------------------------------------------------------


@dataclass
class ConnectionInfo:
    number: int
    label: str
    peer: str
    opened_at: float
    route: StreamRoute
    subscriptions: Subscriptions = field(default_factory=Subscriptions)
    counters: ConnectionCounters = field(default_factory=ConnectionCounters)
    close_cause: Optional[str] = None
    close_code: Optional[int] = None
    close_reason: str = ""
    closed_at: Optional[float] = None

    def describe(self, now: float, with_names: bool = False) -> Dict[str, Any]:
        subscriptions = self.subscriptions
        described: Dict[str, Any] = {
            "number": self.number,
            "path": self.label,
            "peer": self.peer,
            "ageSeconds": round((self.closed_at or now) - self.opened_at, 3),
            "streams": len(subscriptions),
            "arrayStreams": sorted(ARRAY_STREAM_NAMES[speed] for speed in subscriptions.array_speeds),
            "symbolStreams": {speed: len(symbols) for speed, symbols in subscriptions.symbols.items()},
            **self.counters.as_dict(),
        }
        if self.closed_at is not None:
            described.update(closeCause=self.close_cause, closeCode=self.close_code, closeReason=self.close_reason)
        if with_names:
            described["streamNames"] = list(subscriptions.names)
        return described


def _now_ms() -> int:
    return int(time.time() * 1000)


class Simulator:
    def __init__(self, config: argparse.Namespace, market: Market, faults: FaultState) -> None:
        self.config = config
        self.market = market
        self.faults = faults
        self.started_at = time.monotonic()
        self.subscribers: Dict[Tuple[bool, str], Set[ServerConnection]] = {
            (combined, speed): set() for combined in (True, False) for speed in SPEEDS
        }
        self.symbol_subscribers: Dict[str, Set[ServerConnection]] = {speed: set() for speed in SPEEDS}
        self.connections: Dict[ServerConnection, ConnectionInfo] = {}
        self.closed_connections: Deque[ConnectionInfo] = deque(maxlen=CLOSED_CONNECTIONS_KEPT)
        self.limits = LimitCounters()
        self.symbol_frames_sent = 0
        self.exchange_info_requests = 0
        self.subscribe_errors_left = 0
        self.stopping: Optional[asyncio.Event] = None
        self.rest_weight_total = 0
        self.rest_by_path: Dict[str, int] = {}
        self.rest_weight_window: Deque[Tuple[float, int]] = deque()
        self.pushes = {speed: 0 for speed in SPEEDS}
        self.frames_sent = 0
        self.connections_opened = 0
        self.closed_by_cause: Dict[str, int] = {}
        self.handshakes_refused = 0
        self.rest_requests = 0
        self.funding_bucket = RestBucket(config.funding_rest_limit)
        self.funding_requests = {"fundingInfo": 0, "fundingRate": 0}
        self.funding_refused: Dict[str, int] = {}
        self.port = 0
        self._background: Set[asyncio.Task] = set()

    # --- HTTP ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _respond(connection: ServerConnection, status: int, body: Any, content_type: str = "application/json") -> Any:
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        response = connection.respond(status, text)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = content_type if content_type != "application/json" else (
            "application/json;charset=UTF-8")
        return response

    def process_request(self, connection: ServerConnection, request: Any) -> Any:
        try:
            return self._route_request(connection, request)
        except Exception:
            LOG.exception("request %s failed", request.path)
            return self._respond(connection, 500, {"code": -1000, "msg": "Internal error in the simulator."})

    def _route_request(self, connection: ServerConnection, request: Any) -> Any:
        parts = urlsplit(request.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        method = getattr(connection, "sim_method", "GET")
        if path.startswith("/_sim/") or path == "/_sim":
            return self._control(connection, method, path, query)
        if path.startswith("/fapi/"):
            return self._rest(connection, method, path, query)
        route = stream_route(path, query)
        if route is None:
            return self._respond(connection, 404, {"code": -1, "msg": f"Not found: {path}"})
        if method != "GET":
            return self._respond(connection, 405, {"code": -1, "msg": "Method not allowed."})
        if self.faults.is_on("refuse") and "websocket" in request.headers.get("Upgrade", "").lower():
            self.handshakes_refused += 1
            LOG.info("refused WebSocket handshake on %s (fault refuse)", route.label)
            return self._respond(connection, 503, REST_OUTAGE_HTML, "text/html")
        if len(route.names) > MAX_STREAMS_PER_CONNECTION:
            return self._respond(connection, 400, {"code": -1, "msg": "Too many streams in the URL: at most %d per "
                                                   "connection" % MAX_STREAMS_PER_CONNECTION})
        if isinstance(connection, SimServerConnection):
            connection.sim_route = route
        return None  # websockets performs the upgrade (or answers 426 to a plain GET)

    def _rest(self, connection: ServerConnection, method: str, path: str, query: Dict[str, List[str]]) -> Any:
        """Count the request's weight like Binance (per IP, one-minute window) and answer it."""
        self.rest_requests += 1
        weight = rest_weight(path, query)
        now = time.monotonic()
        if weight:
            self.rest_weight_total += weight
            self.rest_by_path[path] = self.rest_by_path.get(path, 0) + 1
            self.rest_weight_window.append((now, weight))
        while self.rest_weight_window and self.rest_weight_window[0][0] <= now - 60.0:
            self.rest_weight_window.popleft()
        response = self._rest_answer(connection, method, path, query)
        if weight and response is not None and hasattr(response, "headers"):
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(sum(w for _, w in self.rest_weight_window))
        return response

    def _rest_answer(self, connection: ServerConnection, method: str, path: str,
                     query: Dict[str, List[str]]) -> Any:
        if self.faults.is_on("rest_outage"):
            return self._respond(connection, 503, REST_OUTAGE_HTML, "text/html")
        if method != "GET":
            return self._respond(connection, 405, {"code": -1, "msg": "Method not allowed."})
        if self.faults.is_on("rest_garbage"):
            return self._respond(connection, 200, REST_GARBAGE_HTML, "text/html")
        if path == "/fapi/v1/exchangeInfo":
            return self._exchange_info(connection)
        if path == "/fapi/v1/ping":
            return self._respond(connection, 200, {})
        if path == "/fapi/v1/time":
            return self._respond(connection, 200, {"serverTime": _now_ms()})
        if path in ("/fapi/v1/fundingInfo", "/fapi/v1/fundingRate"):
            return self._funding_rest(connection, path, query)
        if path == "/fapi/v1/premiumIndex":
            skew = self.faults.skew_percent
            if "symbol" not in query:
                return self._respond(connection, 200, self.market.premium_index(skew))
            symbol = query["symbol"][-1].strip().upper()
            if not symbol:
                return self._respond(connection, 400, {
                    "code": -1102,
                    "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                })
            if not self.market.rest_symbol(symbol):
                return self._respond(connection, 400, {"code": -1121, "msg": "Invalid symbol."})
            return self._respond(connection, 200, self.market.premium_index_entry(symbol, skew))
        return self._respond(connection, 404, {"code": -1, "msg": f"Not found: {path}"})

    def _funding_rest(self, connection: ServerConnection, path: str, query: Dict[str, List[str]]) -> Any:
        """fundingInfo and fundingRate: one shared bucket (429, then 418), and the funding_rest_limit fault."""
        if self.faults.is_on("funding_rest_limit"):
            status = int(self.faults.param("funding_rest_limit", "status", 429))
            retry_after = int(self.faults.param("funding_rest_limit", "retry_after", 30))
        else:
            status, retry_after = self.funding_bucket.admit()
        if status != 200:
            self.funding_refused[str(status)] = self.funding_refused.get(str(status), 0) + 1
            msg = ("Way too many requests; IP banned until later." if status == 418 else
                   "Too many requests; current limit of IP is 500 requests per 5 minutes.")
            response = self._respond(connection, status, {"code": -1003, "msg": msg})
            response.headers["Retry-After"] = str(retry_after)
            return response
        name = path.rsplit("/", 1)[1]
        self.funding_requests[name] += 1
        if name == "fundingInfo":
            return self._respond(connection, 200, self.market.funding_info())
        try:
            symbol, start, end, limit = parse_funding_query(query)
        except FundingQueryError as exc:
            return self._respond(connection, 400, {"code": exc.code, "msg": exc.msg})
        if symbol is not None and symbol not in self.market.ledger.by_symbol and not self.market.rest_symbol(symbol):
            return self._respond(connection, 400, {"code": -1121, "msg": "Invalid symbol."})
        return self._respond(connection, 200, self.market.funding_rates(symbol, start, end, limit, _now_ms()))

    def funding_status(self, symbol: Optional[str]) -> Dict[str, Any]:
        ledger = self.market.ledger
        body: Dict[str, Any] = {
            "periodSeconds": self.config.funding_period_seconds,
            "hourMs": self.market.funding_clock.hour_ms,
            "ledgerRows": len(ledger.rows),
            "settledLive": ledger.settled_live,
            "lastFundingTime": ledger.rows[-1][0] if ledger.rows else None,
            "intervalSwitches": list(ledger.interval_switches),
            "requests": dict(self.funding_requests),
            "refused": dict(self.funding_refused),
            "bucket": self.funding_bucket.describe(),
        }
        if symbol is not None:
            body["symbol"] = symbol
            body["rows"] = ledger.symbol_rows(symbol)
        return body

    def _exchange_info(self, connection: ServerConnection) -> Any:
        self.exchange_info_requests += 1
        if self.faults.is_on("exchange_info_outage"):
            mode = self.faults.param("exchange_info_outage", "mode", "503")
            if mode == "500":
                return self._respond(connection, 500, {"code": -1000, "msg": "An unknown error occurred while "
                                                                             "processing the request."})
            if mode == "429":
                response = self._respond(connection, 429, {"code": -1003, "msg": "Too many requests; current limit "
                                                                                  "of IP is 2400 requests per minute."})
                response.headers["Retry-After"] = "5"
                return response
            if mode == "reset":
                connection.transport.abort()
                return self._respond(connection, 503, REST_OUTAGE_HTML, "text/html")
            if mode == "hang":
                return self._hang(connection)
            return self._respond(connection, 503, REST_OUTAGE_HTML, "text/html")
        body = self.market.encode_exchange_info(_now_ms())
        if self.faults.is_on("exchange_info_garbage"):
            status, body, content_type = exchange_info_garbage(
                self.faults.param("exchange_info_garbage", "kind", "html"), body)
            return self._respond(connection, status, body, content_type)
        return self._respond(connection, 200, body)

    async def _hang(self, connection: ServerConnection) -> Any:
        """Answer 504 after EXCHANGE_INFO_HANG_SECONDS (at once when the simulator stops)."""
        if self.stopping is None:
            self.stopping = asyncio.Event()
        try:
            await asyncio.wait_for(self.stopping.wait(), EXCHANGE_INFO_HANG_SECONDS)
        except asyncio.TimeoutError:
            pass
        return self._respond(connection, 504, REST_OUTAGE_HTML.replace("503 Service Temporarily Unavailable",
                                                                       "504 Gateway Time-out"), "text/html")

    def _control(self, connection: ServerConnection, method: str, path: str, query: Dict[str, List[str]]) -> Any:
        if not is_loopback(connection.remote_address):
            LOG.warning("control request %s from non-loopback %s refused", path, connection.remote_address)
            return self._respond(connection, 403, {"error": "control API is for loopback clients only"})
        if path == "/_sim/status" and method == "GET":
            return self._respond(connection, 200, self.status())
        if path == "/_sim/symbols" and method == "GET":
            if query.get("symbols"):
                wanted = [s for s in query["symbols"][-1].upper().split(",") if s in self.market.specs]
            elif query.get("all", ["0"])[-1].lower() in ("1", "true", "yes"):
                wanted = list(self.market.specs)
            else:  # what exchangeInfo lists; the COIN-M rows only with ?all=1 or by name
                wanted = [symbol for symbol, spec in self.market.specs.items() if spec.listed]
            return self._respond(connection, 200, self.market.snapshot(wanted))
        if path == "/_sim/funding" and method == "GET":
            symbol = query.get("symbol", [""])[-1].strip().upper() or None
            return self._respond(connection, 200, self.funding_status(symbol))
        if path == "/_sim/universe" and method == "GET":
            return self._respond(connection, 200, self.market.universe())
        if path == "/_sim/connections" and method == "GET":
            with_names = query.get("names", ["0"])[-1].lower() in ("1", "true", "yes")
            now = time.monotonic()
            return self._respond(connection, 200, {
                "open": [info.describe(now, with_names) for info in self.connections.values()],
                "closed": [info.describe(now, with_names) for info in self.closed_connections],
                "limits": self.limits.as_dict(),
            })
        if path == "/_sim/counters/reset" and method == "POST":
            self.reset_counters()
            return self._respond(connection, 200, {"ok": True, "limits": self.limits.as_dict()})
        if path == "/_sim/clear" and method == "POST":
            self.clear_faults("control")
            return self._respond(connection, 200, {"ok": True, "faults": self.faults.describe()})
        if path == "/_sim/fault" and method == "POST":
            try:
                name, params = self._fault_request(getattr(connection, "sim_body", b""), query)
                action = self.apply_fault(name, params, "control")
            except FaultError as exc:
                return self._respond(connection, 400, {"error": str(exc)})
            return self._respond(connection, 200, {"ok": True, "action": action, "faults": self.faults.describe()})
        if path in ("/_sim/status", "/_sim/symbols", "/_sim/clear", "/_sim/fault", "/_sim/universe", "/_sim/funding",
                    "/_sim/connections", "/_sim/counters/reset"):
            return self._respond(connection, 405, {"error": f"method {method} not allowed on {path}"})
        return self._respond(connection, 404, {"error": f"unknown control path {path}"})

    @staticmethod
    def _fault_request(body: bytes, query: Dict[str, List[str]]) -> Tuple[str, Dict[str, Any]]:
        if body.strip():
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                raise FaultError("body is not valid JSON") from None
            if not isinstance(payload, dict):
                raise FaultError('body must be a JSON object like {"fault": "stall"}')
        else:
            payload = {key: values[-1] for key, values in query.items()}
        payload = dict(payload)
        name = payload.pop("fault", None)
        if not isinstance(name, str):
            raise FaultError('missing "fault" (one of ' + ", ".join(FAULT_NAMES) + ")")
        return name, payload

    # --- faults -------------------------------------------------------------------------------------------------

    def apply_fault(self, name: str, params: Dict[str, Any], source: str) -> Dict[str, Any]:
        action = self.faults.apply(name, params)
        if name in ("list", "delist") and action["on"]:
            self._change_listing(action)
        if name == "funding_rate" and action["on"]:
            try:
                self.market.set_funding_rate(action["symbol"], action["rate"], _now_ms())
            except MarketError as exc:
                raise FaultError(str(exc)) from None
        LOG.info("fault %s [%s]", fault_summary(action), source)
        if name == "subscribe_error":
            self.subscribe_errors_left = int(action.get("count", 0)) if action["on"] else 0
        elif name == "array_tradfi":
            self.market.set_array_tradfi(action["underlyingType"].split(",") if action["on"] else None)
        elif name == "drop" and action["on"]:
            self.close_all(cause="drop", abrupt=action["mode"] == "abrupt")
        elif name == "rotate" and action["on"] and "after" not in action:
            self.close_all(cause="rotate", abrupt=False)
        elif name == "freeze":
            self.market.frozen = self.faults.is_on("freeze")
        return action

    def _change_listing(self, action: Dict[str, Any]) -> None:
        now_ms = _now_ms()
        try:
            if action["fault"] == "delist":
                self.market.delist_symbol(action["symbol"], now_ms, action["rows"])
                return
            symbol = action["symbol"] or self._fresh_symbol()
            action["symbol"] = symbol
            self.market.list_symbol(symbol, contract_type=action["contractType"],
                                    underlying_type=action["underlyingType"], now_ms=now_ms,
                                    price=action.get("price"), interval_hours=action.get("fundingIntervalHours"))
        except MarketError as exc:
            raise FaultError(str(exc)) from None

    def _fresh_symbol(self) -> str:
        number = len(self.market.changes) + 1
        while f"NEWLIST{number}USDT" in self.market.specs:
            number += 1
        return f"NEWLIST{number}USDT"

    def reset_counters(self) -> None:
        self.limits = LimitCounters()
        self.rest_weight_total = 0
        self.rest_by_path.clear()
        self.rest_weight_window.clear()
        self.exchange_info_requests = 0
        for info in self.connections.values():
            info.counters.message_window.reset()
            info.counters.control_window.reset()
            info.counters.streams_peak = len(info.subscriptions)
        self.closed_connections.clear()

    def clear_faults(self, source: str) -> None:
        self.faults.clear()
        self.market.frozen = False
        self.subscribe_errors_left = 0
        if self.market.array_tradfi is not None:
            self.market.set_array_tradfi(None)
        LOG.info("all faults cleared [%s]", source)

    def close_all(self, cause: str, abrupt: bool) -> None:
        for connection in list(self.connections):
            self.close_connection(connection, cause, abrupt=abrupt)

    def close_connection(self, connection: ServerConnection, cause: str, abrupt: bool = False,
                         code: int = 1001, reason: str = "") -> None:
        info = self.connections.get(connection)
        if info is not None and info.close_cause is None:
            info.close_cause = cause
        self._unsubscribe(connection)
        if abrupt:
            connection.transport.abort()
            return
        task = asyncio.ensure_future(connection.close(code, reason or cause))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- connections --------------------------------------------------------------------------------------------

    def _unsubscribe(self, connection: ServerConnection) -> None:
        for group in self.subscribers.values():
            group.discard(connection)
        for group in self.symbol_subscribers.values():
            group.discard(connection)

    def _refresh_delivery(self, connection: ServerConnection, info: ConnectionInfo) -> None:
        """Put the connection in (or take it out of) the push groups its streams call for."""
        if info.route.legacy or info.close_cause is not None:
            return  # acknowledged, never delivered: the legacy paths are silent
        speeds = info.subscriptions.array_speeds
        for speed in SPEEDS:
            group = self.subscribers[(info.route.combined, speed)]
            if speed in speeds:
                group.add(connection)
            else:
                group.discard(connection)
            if info.subscriptions.symbols[speed]:
                self.symbol_subscribers[speed].add(connection)
            else:
                self.symbol_subscribers[speed].discard(connection)
        streams = len(info.subscriptions)
        info.counters.streams_peak = max(info.counters.streams_peak, streams)
        self.limits.peak_streams_per_connection = max(self.limits.peak_streams_per_connection, streams)

    def policy_close(self, connection: ServerConnection, info: ConnectionInfo, why: str, reason: str) -> None:
        """Close 1008 like Binance does for a broken rule, and count it."""
        self.limits.note_close(why)
        LOG.info("connection #%d broke a rule (%s): closing with %d", info.number, why, POLICY_VIOLATION)
        self.close_connection(connection, "policy violation", code=POLICY_VIOLATION, reason=reason)

    async def handler(self, connection: ServerConnection) -> None:
        route = getattr(connection, "sim_route", None)
        if route is None:
            request = connection.request
            parts = urlsplit(request.path if request is not None else "/")
            route = stream_route(unquote(parts.path), parse_qs(parts.query)) or StreamRoute("?", False, [], True)
        self.connections_opened += 1
        peer = "%s:%s" % tuple(connection.remote_address[:2]) if connection.remote_address else "?"
        info = ConnectionInfo(self.connections_opened, route.label, peer, time.monotonic(), route)
        self.connections[connection] = info
        info.subscriptions.add(route.names)
        self._refresh_delivery(connection, info)
        LOG.info("connection #%d opened from %s on %s (%s)", info.number, peer, route.label,
                 "legacy, silent" if route.legacy else "%d streams" % len(info.subscriptions))
        try:
            async for message in connection:
                if info.close_cause is not None:
                    continue
                reply = self._incoming(connection, info, message)
                if reply is not None:
                    await connection.send(reply)
        except ConnectionClosed:
            pass
        finally:
            self._unsubscribe(connection)
            self.connections.pop(connection, None)
            initiator, code, reason = describe_close(connection)
            cause = info.close_cause or ("keepalive" if "keepalive" in reason else initiator)
            self.closed_by_cause[cause] = self.closed_by_cause.get(cause, 0) + 1
            info.close_cause, info.close_code, info.close_reason = cause, code, reason
            info.closed_at = time.monotonic()
            self.closed_connections.append(info)
            LOG.info("connection #%d closed on %s after %.1fs: %s (close %s by %s%s)", info.number, info.label,
                     time.monotonic() - info.opened_at, cause, code, initiator, ": " + reason if reason else "")

    def _incoming(self, connection: ServerConnection, info: ConnectionInfo, message: Any) -> Optional[str]:
        """Count one client message against Binance's rules, then answer it (or close the connection)."""
        now = time.monotonic()
        counters = info.counters
        counters.messages += 1
        self.limits.messages += 1
        in_window = counters.message_window.add(now)
        self.limits.all_messages.add(now)
        self.limits.peak_messages_per_connection = max(self.limits.peak_messages_per_connection, in_window)
        if isinstance(message, (bytes, bytearray)):
            counters.binary_messages += 1
            self.policy_close(connection, info, "binary frame", "Invalid frame: binary messages are not accepted")
            return None
        if in_window > MAX_MESSAGES_PER_SECOND:
            self.policy_close(connection, info, "too many messages",
                              "Too many messages: more than %d in one second" % MAX_MESSAGES_PER_SECOND)
            return None
        return json.dumps(self._client_message(connection, info, message, now), separators=(",", ":"))

    def _client_message(self, connection: ServerConnection, info: ConnectionInfo, message: str,
                        now: float) -> Dict[str, Any]:
        """Binance's live-subscription protocol: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS."""
        counters = info.counters
        try:
            request = json.loads(message)
        except (ValueError, TypeError, RecursionError) as exc:
            counters.other_messages += 1
            where = "at line %d column %d" % (exc.lineno, exc.colno) if isinstance(exc, ValueError) and hasattr(
                exc, "lineno") else ""
            return error_reply(3, ("Invalid JSON: expected value " + where).strip(), None)
        if not isinstance(request, dict):
            counters.other_messages += 1
            return error_reply(2, "Invalid request: expected a JSON object", None)
        request_id = request.get("id")
        method = request.get("method")
        if not valid_request_id(request_id):
            counters.other_messages += 1
            return error_reply(2, "Invalid request: request ID must be an unsigned integer", None)
        if not isinstance(method, str):
            counters.other_messages += 1
            return error_reply(2, "Invalid request: missing field `method`", request_id)
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            window = counters.control_window.add(now)
            self.limits.all_subscribes.add(now)
            self.limits.peak_subscribe_per_connection = max(self.limits.peak_subscribe_per_connection, window)
            if method == "SUBSCRIBE":
                counters.subscribe_messages += 1
                self.limits.subscribe_messages += 1
            else:
                counters.unsubscribe_messages += 1
                self.limits.unsubscribe_messages += 1
        else:
            counters.other_messages += 1
        names, problem = check_params(request.get("params"))
        if problem is not None or names is None:
            return self._error(info, 2, problem or "Invalid request", request_id)
        if method == "SUBSCRIBE":
            if self.faults.is_on("subscribe_error"):
                code = int(self.faults.param("subscribe_error", "code", 2))
                msg = str(self.faults.param("subscribe_error", "msg", "Invalid request"))
                if self.subscribe_errors_left > 0:
                    self.subscribe_errors_left -= 1
                    if self.subscribe_errors_left == 0:
                        self.faults.apply("subscribe_error", {"on": False})
                        LOG.info("fault subscribe_error off (count reached)")
                return self._error(info, code, msg, request_id)
            if info.subscriptions.would_exceed(names):
                self.limits.streams_refused += 1
                return self._error(info, 2, "Invalid request: a connection may hold at most %d streams; it has %d "
                                   "and this request adds %d" % (
                                       MAX_STREAMS_PER_CONNECTION, len(info.subscriptions),
                                       len(set(names) - set(info.subscriptions.names))), request_id)
            info.subscriptions.add(names)
            self._refresh_delivery(connection, info)
            return {"result": None, "id": request_id}
        if method == "UNSUBSCRIBE":
            info.subscriptions.remove(names)
            self._refresh_delivery(connection, info)
            return {"result": None, "id": request_id}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(info.subscriptions.names), "id": request_id}
        return self._error(info, 2, "Invalid request: unknown variant `%s`, expected one of `SUBSCRIBE`, "
                           "`UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`" % method[:50],
                           request_id)

    def _error(self, info: ConnectionInfo, code: int, msg: str, request_id: Any) -> Dict[str, Any]:
        info.counters.subscribe_errors += 1
        self.limits.note_error(code)
        return error_reply(code, msg, request_id)

    # --- pushes -------------------------------------------------------------------------------------------------

    def _send(self, connections: Set[ServerConnection], message: Any) -> int:
        targets = []
        for connection in list(connections):
            transport = connection.transport
            if transport is not None and transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                LOG.warning("connection #%s is not reading; cutting it off",
                            getattr(self.connections.get(connection), "number", "?"))
                self.close_connection(connection, "slow consumer", abrupt=True)
                continue
            targets.append(connection)
        if targets:
            broadcast(targets, message)
            self.frames_sent += len(targets)
        return len(targets)

    def push(self, speed: str, shard: int) -> None:
        """Send one shard to every array subscriber of one speed (each frame encoded once for all of them), then
        every per-symbol stream of that speed."""
        if self.faults.is_on("stall"):
            return
        counter = self.pushes[speed]
        self.pushes[speed] += 1
        self._push_symbols(speed)
        combined_targets = self.subscribers[(True, speed)]
        raw_targets = self.subscribers[(False, speed)]
        if not combined_targets and not raw_targets:
            return
        array = self.market.encode_shard(shard)
        now_ms = _now_ms()
        if self.faults.is_on("poison"):
            poison = json.dumps(poisoned_items(self.market.array_perpetuals(shard), now_ms, counter),
                                separators=(",", ":"))
            array = array[:-1] + "," + poison[1:] if array != "[]" else poison
        stream_name = ARRAY_STREAM_NAMES[speed]
        for combined, targets in ((True, combined_targets), (False, raw_targets)):
            if not targets:
                continue
            self._send(targets, '{"stream":"%s","data":%s}' % (stream_name, array) if combined else array)
            if self.faults.is_on("malformed"):
                for frame in malformed_frames(counter, combined, stream_name):
                    self._send(targets, frame)
            every = int(self.faults.param("poison", "oversize_every", 0) or 0)
            if self.faults.is_on("poison") and every and counter % every == every - 1:
                self._send(targets, oversized_frame(combined, stream_name, now_ms))

    def _push_symbols(self, speed: str) -> None:
        """`<symbol>@markPrice[@1s]`: one frame per subscribed symbol, carrying ONE object (its latest row)."""
        suffix = "@markPrice@1s" if speed == "fast" else "@markPrice"
        market = self.market
        for connection in list(self.symbol_subscribers[speed]):
            info = self.connections.get(connection)
            if info is None:
                continue
            combined = info.route.combined
            single = {connection}
            for symbol in info.subscriptions.symbols[speed]:
                spec = market.specs.get(symbol)
                if spec is None or not market.streamable(spec):
                    continue  # Binance acknowledges a stream of an unknown symbol and never sends on it
                item = market.encode_item(symbol)
                frame = '{"stream":"%s%s","data":%s}' % (symbol.lower(), suffix, item) if combined else item
                if not self._send(single, frame):
                    break
                self.symbol_frames_sent += 1

    async def _periodic(self, interval: float, action: Any) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                action()
            except Exception:
                LOG.exception("periodic task failed")
            due += interval
            if due < loop.time():  # fell behind (suspended, overloaded): skip, never burst
                due = loop.time() + interval

    def make_market_ticker(self) -> Any:
        shard_cursor = [0]

        def tick() -> None:
            shard = shard_cursor[0]
            shard_cursor[0] = (shard + 1) % self.market.shard_count
            self.market.tick(shard, _now_ms())
            self.push("fast", shard)

        return tick

    def make_slow_pusher(self) -> Any:
        shard_cursor = [0]

        def push_slow() -> None:
            shard = shard_cursor[0]
            shard_cursor[0] = (shard + 1) % self.market.shard_count
            self.push("slow", shard)

        return push_slow

    def enforce_lifetimes(self) -> None:
        now = time.monotonic()
        rotate_after = self.faults.param("rotate", "after") if self.faults.is_on("rotate") else None
        for connection, info in list(self.connections.items()):
            if info.close_cause is not None:
                continue
            age = now - info.opened_at
            if age >= self.config.connection_lifetime:
                self.close_connection(connection, "lifetime", reason="connection lifetime exceeded")
            elif rotate_after is not None and age >= rotate_after:
                self.close_connection(connection, "rotate", reason="connection lifetime exceeded (rotate)")

    # --- reporting ----------------------------------------------------------------------------------------------

    def status(self) -> Dict[str, Any]:
        universe = self.market.universe()
        by_path: Dict[str, int] = {}
        for info in self.connections.values():
            by_path[info.label] = by_path.get(info.label, 0) + 1
        return {
            "faults": self.faults.describe(),
            "connections": {"total": len(self.connections), "byPath": by_path},
            "connectionsOpened": self.connections_opened,
            "connectionsClosed": dict(self.closed_by_cause),
            "handshakesRefused": self.handshakes_refused,
            "subscribers": {
                ("stream" if combined else "ws") + "-" + speed: len(group)
                for (combined, speed), group in self.subscribers.items()
            },
            "pushes": dict(self.pushes),
            "pushesSent": sum(self.pushes.values()),
            "framesSent": self.frames_sent,
            "symbolFramesSent": self.symbol_frames_sent,
            "marketTicks": self.market.ticks,
            "frozen": self.market.frozen,
            "restRequests": self.rest_requests,
            "fundingRestRequests": dict(self.funding_requests),
            "fundingBucket": self.funding_bucket.describe(),
            "settledLive": self.market.ledger.settled_live,
            "exchangeInfoRequests": self.exchange_info_requests,
            "restRequestsByPath": dict(self.rest_by_path),
            "restWeight": self.rest_weight_total,
            "restWeightLastMinute": sum(w for _, w in self.rest_weight_window),
            "symbolCount": self.market.symbol_count,
            "perpetualCount": self.market.perpetual_count,
            "arrayPerpetualCount": universe["counts"]["arrayPerpetuals"],
            "tradfiCount": universe["counts"]["tradfi"],
            "universeCounts": universe["counts"],
            "universeVersion": self.market.version,
            "limits": self.limits.as_dict(),
            "streamsPerConnection": {str(info.number): len(info.subscriptions) for info in self.connections.values()},
            "shardSizes": [len(shard) for shard in self.market.array_shards],
            "seed": self.market.seed,
            "port": self.port,
            "uptimeSeconds": round(time.monotonic() - self.started_at, 3),
            "config": {
                "pushInterval": self.config.push_interval,
                "fastPushInterval": self.config.fast_push_interval,
                "pingInterval": self.config.ping_interval,
                "pingTimeout": self.config.ping_timeout,
                "connectionLifetime": self.config.connection_lifetime,
            },
        }


def describe_close(connection: ServerConnection) -> Tuple[str, int, str]:
    """(who closed, code, reason) from the close frames exchanged; 1006 when none was."""
    protocol = connection.protocol
    sent = getattr(protocol, "close_sent", None)
    received = getattr(protocol, "close_rcvd", None)
    if received is not None and (sent is None or getattr(protocol, "close_rcvd_then_sent", False)):
        return "client", received.code, received.reason
    if sent is not None:
        return "server", sent.code, sent.reason
    return "connection lost", 1006, ""


# --- main ---------------------------------------------------------------------------------------------------------


class HandshakeFailureFilter(logging.Filter):
    """Turns websockets' traceback for a malformed request (port scans, chunked bodies, junk) into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "opening handshake failed" and record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = "rejected a malformed request: %s"
            record.args = (error.__cause__ or error,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _write_port_file(path: str, port: int) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="ascii") as handle:
        handle.write(f"{port}\n")
    os.replace(temporary, path)


async def run(config: argparse.Namespace) -> int:
    market = Market(config.seed, config.symbols, _now_ms(), config.tradfi,
                    funding_period_seconds=config.funding_period_seconds,
                    funding_history_hours=config.funding_history_hours)
    simulator = Simulator(config, market, FaultState())
    for name, params in config.fault:
        simulator.apply_fault(name, params, "command line")

    server = await serve(
        simulator.handler,
        config.host,
        config.port,
        process_request=simulator.process_request,
        create_connection=SimServerConnection,
        compression=None,  # Binance does not compress; compression would also defeat encode-once broadcasting
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        close_timeout=2,
        max_size=2**16,
        server_header="binance-simulator",
    )
    simulator.port = server.sockets[0].getsockname()[1]
    if config.port_file:
        _write_port_file(config.port_file, simulator.port)
    LOG.info(
        "listening on http://%s:%d (ws://%s:%d/market/stream?streams=!markPrice@arr): %d contracts, %d TRADING "
        "perpetuals (%d TradFi), array shards %s, pushes every %gs (@1s: %gs), pings every %ss, seed %d",
        config.host, simulator.port, config.host, simulator.port, market.symbol_count, market.perpetual_count,
        market.universe()["counts"]["tradfi"], [len(shard) for shard in market.array_shards], config.push_interval,
        config.fast_push_interval,
        config.ping_interval, config.seed,
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    tasks = [
        asyncio.ensure_future(simulator._periodic(config.fast_push_interval, simulator.make_market_ticker())),
        asyncio.ensure_future(simulator._periodic(config.push_interval, simulator.make_slow_pusher())),
        asyncio.ensure_future(simulator._periodic(HOUSEKEEPING_SECONDS, simulator.enforce_lifetimes)),
    ]
    await stop.wait()
    LOG.info("stopping: closing %d connections", len(simulator.connections))
    if simulator.stopping is not None:
        simulator.stopping.set()
    for task in tasks:
        task.cancel()
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), timeout=5)
    except asyncio.TimeoutError:
        LOG.warning("some connections did not close within 5 s")
    LOG.info("stopped")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets logs every plain HTTP answer at INFO; keep the log to one line per WebSocket event.
    logging.getLogger("websockets").setLevel(logging.DEBUG if config.log_level == "DEBUG" else logging.WARNING)
    logging.getLogger("websockets.server").addFilter(HandshakeFailureFilter())
    try:
        return asyncio.run(run(config))
    except OSError as exc:
        LOG.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
