"""The HTTP API as a WSGI application: Bottle routes over the current SnapshotView.

Endpoints (JSON unless noted; every live JSON response has Cache-Control: no-store):
  GET /                      service, version, endpoints
  GET /funding/health        200 healthy / 503 unhealthy, with a `reasons` list (and the history's lag)
  GET /funding/batch         ?symbols=A,B,C (at most 1000)
  GET /funding/{symbol}      200 fresh / 404 unknown or delisted / 503 stale (body still carries the data)
  GET /funding               every symbol; ?quote=USDT&contractType=..&underlyingType=..&fundingIntervalHours=1,4
                             &sort=<key>|-<key>&limit=N, key one of symbol, fundingRate, fundingRateAnnualized, capUsage
  GET /funding/{symbol}/history, GET /funding/history?at=   settled rates (funding_api_history; JSON or CSV)
  GET /metrics               Prometheus text format 0.0.4

`health` and `batch` are endpoints, not symbols: /funding/health and
/funding/batch are matched before /funding/{symbol} (Bottle tries static
routes first), and /funding/HEALTH or /funding/Batch answer 404 "reserved",
so a symbol named HEALTH or BATCH can never be requested. No real contract
has such a name (they all end in their quote asset).

/funding/health: the seed's fields (uptimeSeconds is how long the daemon's
current WebSocket connection has been up, 0 while disconnected), plus
`reasons`, each starting with a stable code: "state_file:" (missing,
unreadable or corrupt; the last good state is still served and
`servingLastGoodState` is true), "disconnected:", "no_symbols:", "stale:"
(newest data older than FUNDING_STALE_SECONDS), "coverage:" (fewer than 99 %
of the universe's perpetuals with fresh data for longer than
FUNDING_COVERAGE_GRACE_SECONDS); plus stateFileError, staleThresholdSeconds,
stateUpdatedAt, stateLoadedAt, apiUptimeSeconds, and the coverage of the
contract universe: expectedSymbolCount (null while the universe is unknown),
missingSymbolCount, missingSymbols (at most 20 names), tradifiSymbolCount,
universeKnown, universeFetchedAt, and `warnings` ("universe_unknown:" while the
daemon has no universe: it then serves what the streams bring; not a 503).

/funding/{symbol} of a symbol that left the universe (or expired without one)
in the last 7 days answers 404 {"error": "delisted", "delistedAt": epoch s}.

Stale entries in /funding/batch and /funding: the answer stays 200 (a partial
answer is still an answer), each entry carries ageSeconds, and their names are
listed in `staleSymbols`, so a caller can drop them; only /funding/{symbol}
answers 503 for one stale symbol, as the seed did.

/funding: `quote` keeps symbols whose name ends with it (USDT, USDC, ...);
`contractType` and `underlyingType` keep the records of that type (an unknown
value is 400 with the known ones listed);
sort is by symbol unless asked (symbols without a rate sort last); `limit`
keeps the first N; `count` is what was returned, `matched` what passed the
filter, `total` every symbol; `fundingIntervalHours` appears where the state
has it. Until a first good state file was read, /funding, /funding/batch and
/funding/{symbol} answer 503 "no_state" (not 404: nothing is known yet).

Limits: a batch takes at most 1000 symbols (400 above), a query longer than
48 KiB is 414, a declared body over 16 KiB is 413. A request the HTTP server
(Granian) cannot parse, or a request line or head beyond its limits, is
answered by Granian itself (400, 414, 431) with an empty body, not JSON.

Every error, including unknown routes (404), other methods (405 with
`Allow: GET, HEAD`) and any unexpected exception (500, logged with its
traceback, never sent), is a JSON object {"error": code, "detail": message,
"status": n}; `detail` is the field FastAPI (the seed) used.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import bottle
import funding_api_history
import funding_health
from funding_api_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from funding_api_metrics import RequestCounter, render_metrics
from funding_api_view import SORT_KEYS, SnapshotView, StateViews, encode_records
from funding_health import HealthRules
from funding_history import HistoryError, HistoryReader
from funding_json import dumps
from funding_log import event
from funding_monitor_state import MonitorFiles
from funding_rest_budget import read_budget_file
from funding_state import StateSnapshot
from funding_version import VERSION

log = logging.getLogger("funding_api")

SERVICE_NAME = "Binance Funding Rate API"
API_VERSION = VERSION
JSON_CONTENT_TYPE = "application/json"
JSON_HEADERS = [("Content-Type", JSON_CONTENT_TYPE), ("Cache-Control", "no-store")]
ALLOWED_METHODS = "GET, HEAD"
# Names the service, not the server software (which would otherwise announce itself).
SERVER_HEADER = ("Server", "binance-funding")
# Only GET and HEAD are served: a body is never needed.
MAX_BODY_BYTES = 16 * 1024

# ASCII only, checked before upper-casing: "ß".upper() is "SS".
SYMBOL_RE = re.compile(r"[A-Za-z0-9_]{1,40}")
QUOTE_RE = re.compile(r"[A-Za-z0-9]{1,12}")
LIMIT_RE = re.compile(r"[0-9]{1,7}")
TYPE_RE = re.compile(r"[A-Za-z_]{1,40}")
INTERVAL_RE = re.compile(r"[1-9]|1[0-9]|2[0-4]")
RESERVED_NAMES = frozenset({"HEALTH", "BATCH", "HISTORY"})
MAX_BATCH_SYMBOLS = 1000
# 1000 symbols of 40 characters, comma-separated (41 KB), fit; Granian refuses a request target of 64 KiB itself.
MAX_QUERY_BYTES = 48 * 1024
MAX_ECHO_CHARS = 60

ROUTE_LABELS = {
    "/": "/",
    "/funding": "/funding",
    "/funding/health": "/funding/health",
    "/funding/batch": "/funding/batch",
    "/funding/<symbol>": "/funding/{symbol}",
    "/funding/history": "/funding/history",
    "/funding/<symbol>/history": "/funding/{symbol}/history",
    "/metrics": "/metrics",
}
UNMATCHED_ROUTE = "other"

ENDPOINTS = {
    "/": "this document",
    "/funding/health": "service health: 200 healthy, 503 unhealthy with reasons",
    "/funding/{symbol}": "one symbol: 200, 404 unknown or delisted, 503 stale",
    "/funding/batch?symbols=A,B,C": "several symbols (at most %d)" % MAX_BATCH_SYMBOLS,
    "/funding?quote=USDT&contractType=TRADIFI_PERPETUAL&underlyingType=EQUITY&fundingIntervalHours=1,4"
    "&sort=fundingRate|-fundingRate|fundingRateAnnualized|-fundingRateAnnualized|capUsage|-capUsage|symbol"
    "&limit=N": "every symbol, filtered and sorted",
    "/funding/{symbol}/history?since=&until=&limit=&format=json|csv": "settled rates, newest first (at most 1000)",
    "/funding/history?at=<ms>&format=json|csv": "every symbol's settlement at one funding time",
    "/metrics": "Prometheus metrics",
}


def error_body(status: int, error: str, detail: str, **extra: Any) -> bytes:
    body: Dict[str, Any] = {"error": error, "detail": detail, "status": status}
    body.update(extra)
    return dumps(body)


def echo(text: str) -> str:
    """Client input quoted back in a message, bounded."""
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "..."


def utc_text(epoch_seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_seconds))


def normalise_symbol(text: str) -> Optional[str]:
    return text.upper() if SYMBOL_RE.fullmatch(text) else None


@dataclass
class ApiConfig:
    stale_seconds: float = 180.0
    disconnect_grace_seconds: float = 15.0
    coverage_grace_seconds: float = 120.0
    max_data_age_seconds: float = 60.0
    clock: Callable[[], float] = time.time
    started_at: float = field(default_factory=time.time)
    monitor: Optional[MonitorFiles] = None
    history: Optional[HistoryReader] = None
    history_budget_file: Optional[str] = None

    @property
    def health_rules(self) -> HealthRules:
        return HealthRules(self.stale_seconds, self.disconnect_grace_seconds, self.max_data_age_seconds,
                           self.coverage_grace_seconds)


@dataclass
class Health:
    healthy: bool
    body: Dict[str, Any]


def evaluate_health(view: Optional[SnapshotView], snapshot: StateSnapshot, now: float, config: ApiConfig) -> Health:
    verdict = funding_health.judge(view.feed if view else None, snapshot.error, now, config.health_rules)
    status = view.connection_status if view else {}
    expected = verdict.expected_count
    last_connected = status.get("last_connected_time")
    connected_for = 0.0
    if view is not None and view.connected and view.status_number("last_connected_time") is not None:
        connected_for = max(0.0, now - float(last_connected))
    oldest, newest = verdict.oldest_age, verdict.newest_age
    body = {
        # The seed's two values: a degraded feed is still served (200) and says why in `warnings`.
        "status": "healthy" if verdict.healthy else "unhealthy",
        "websocketConnected": bool(view and view.connected),
        "reconnecting": verdict.reconnecting,
        "symbolCount": view.count if view else 0,
        "uptimeSeconds": round(connected_for, 3),
        "lastConnectedTime": last_connected,
        "messagesReceived": status.get("messages_received", 0),
        "reconnectAttempts": status.get("reconnect_attempts", 0),
        "oldestDataAgeSeconds": None if oldest is None else round(oldest, 3),
        "newestDataAgeSeconds": None if newest is None else round(newest, 3),
        "reasons": list(verdict.reasons),
        "warnings": list(verdict.warnings),
        "expectedSymbolCount": expected,
        "missingSymbolCount": len(verdict.missing) if expected is not None else None,
        "missingSymbols": list(verdict.missing[:funding_health.MISSING_NAMES_SHOWN]),
        "tradifiSymbolCount": view.tradifi_count() if view is not None and expected is not None else None,
        "universeKnown": expected is not None,
        "universeFetchedAt": status.get("universe_fetched_at"),
        "staleThresholdSeconds": config.stale_seconds,
        "stateFileError": snapshot.error,
        "servingLastGoodState": bool(snapshot.error is not None and view is not None),
        "stateUpdatedAt": view.state_updated_at if view else None,
        "stateLoadedAt": view.loaded_at if view else None,
        "apiUptimeSeconds": round(max(0.0, now - config.started_at), 3),
        "history": history_health(view, config, now),
    }
    return Health(verdict.healthy, body)


def history_health(view: Optional[SnapshotView], config: ApiConfig, now: float) -> Optional[Dict[str, Any]]:
    """The settlement history's state for /funding/health (informational: it never makes the feed unhealthy)."""
    if config.history is None:
        return None
    try:
        facts = config.history.facts()
    except HistoryError as exc:
        return {"error": str(exc), "lastSettlementTime": None, "lastConfirmedTime": None, "lagSeconds": None,
                "lagThresholdSeconds": None, "lagging": False}
    lag = funding_health.judge_history_lag(view.expected_settlement(now) if view else None, facts.last_settlement_ms)
    return {
        "error": None,
        "lastSettlementTime": facts.last_settlement_ms,
        "lastConfirmedTime": facts.last_confirmed_ms,
        "expectedSettlementTime": lag.expected_ms,
        "lagSeconds": lag.lag_seconds,
        "lagThresholdSeconds": lag.threshold_seconds,
        "lagging": lag.lagging,
    }


def _object_with_data(data: List[bytes], rest: Dict[str, Any]) -> bytes:
    """{"data": <pre-encoded list>, ...rest}, joined once, without re-encoding the records."""
    data.insert(0, b'{"data":')
    data.append(b",")
    data.append(dumps(rest)[1:])
    return b"".join(data)


class JsonBottle(bottle.Bottle):
    """Bottle whose own error pages (404 from the router, HTTPError) are JSON."""

    def default_error_handler(self, res: bottle.HTTPError) -> bytes:
        bottle.response.content_type = JSON_CONTENT_TYPE
        bottle.response.set_header("Cache-Control", "no-store")
        if res.status_code == 404:
            path = bottle.request.environ.get("PATH_INFO", "")
            return error_body(404, "not_found", "no such endpoint: %s" % echo(path))
        return error_body(res.status_code, "http_error", res.status_line)


def _reply(status: int, body: bytes, content_type: str = JSON_CONTENT_TYPE, cache_control: str = "no-store") -> bytes:
    response = bottle.response
    response.status = status
    response.content_type = content_type
    response.set_header("Cache-Control", cache_control)
    return body


def symbol_in_path(text: str) -> Union[str, bytes]:
    """The symbol a path names, or the error reply (400 invalid, 404 for an endpoint's own name)."""
    name = normalise_symbol(text)
    if name is None:
        return _reply(400, error_body(400, "invalid_symbol", "symbol must match [A-Z0-9_]{1,40}: %r" % echo(text)))
    if name in RESERVED_NAMES:
        return _reply(404, error_body(
            404, "reserved", "%s is an endpoint name, not a symbol; see /funding/%s" % (name, name.lower())))
    return name


def _history_reply(reply: funding_api_history.Reply) -> bytes:
    return _reply(reply.status, reply.body, reply.content_type, reply.cache_control)


def build_app(views: StateViews, config: ApiConfig, counter: RequestCounter) -> Callable[..., Any]:
    """The WSGI application: method check and request counting around the Bottle routes."""
    app = JsonBottle()
    app.config["catchall"] = False  # exceptions reach ApiMiddleware, which answers JSON and logs them
    app.config["autojson"] = False
    index_body = dumps({"service": SERVICE_NAME, "version": API_VERSION, "endpoints": ENDPOINTS})

    def unavailable(snapshot: StateSnapshot) -> bytes:
        return _reply(
            503,
            error_body(503, "no_state", "no state has been loaded yet", stateFileError=snapshot.error),
        )

    @app.get("/")
    def index() -> bytes:
        return _reply(200, index_body)

    @app.get("/funding/health")
    def health() -> bytes:
        view, snapshot = views.current()
        result = evaluate_health(view, snapshot, config.clock(), config)
        return _reply(200 if result.healthy else 503, dumps(result.body))

    @app.get("/funding/history")
    def history_at() -> bytes:
        query = bottle.request.query
        return _history_reply(funding_api_history.history_at(
            config.history, {k: query.get(k) for k in ("at", "format")}, bottle.request.get_header("Accept", ""),
            error_body))

    @app.get("/funding/<symbol>/history")
    def symbol_history(symbol: str) -> bytes:
        name = symbol_in_path(symbol)
        if isinstance(name, bytes):
            return name
        view, _snapshot = views.current()
        served = view is not None and name in view.records
        delisted = view is not None and name in view.delisted
        query = bottle.request.query
        return _history_reply(funding_api_history.symbol_history(
            config.history, name, {k: query.get(k) for k in ("since", "until", "limit", "format")},
            served_live=served, delisted=delisted, accept=bottle.request.get_header("Accept", ""),
            error_body=error_body))

    @app.get("/funding/batch")
    def batch() -> bytes:
        query = bottle.request.environ.get("QUERY_STRING", "")
        if len(query) > MAX_QUERY_BYTES:
            return _reply(414, error_body(414, "uri_too_long", "the query is longer than %d bytes" % MAX_QUERY_BYTES))
        names = [n.strip() for v in bottle.request.query.getall("symbols") for n in v.split(",")]
        names = [n for n in names if n]
        if not names:
            return _reply(400, error_body(400, "bad_request", "symbols=A,B,C is required"))
        if len(names) > MAX_BATCH_SYMBOLS:
            return _reply(
                400,
                error_body(
                    400, "too_many_symbols", "at most %d symbols per batch, got %d" % (MAX_BATCH_SYMBOLS, len(names))
                ),
            )
        invalid = [echo(n) for n in names if not SYMBOL_RE.fullmatch(n)]
        if invalid:
            return _reply(
                400,
                error_body(400, "invalid_symbol", "symbols must match [A-Z0-9_]{1,40}", invalidSymbols=invalid[:10]),
            )
        wanted = list(dict.fromkeys(n.upper() for n in names))
        view, snapshot = views.current()
        if view is None:
            return unavailable(snapshot)
        now = config.clock()
        found = [view.records[s] for s in wanted if s in view.records]
        missing = [s for s in wanted if s not in view.records]
        cutoff = now - config.stale_seconds
        stale = [r.symbol for r in found if r.updated_at < cutoff]
        rest = {
            "found": len(found),
            "missing": len(missing),
            "total": len(wanted),
            "missingSymbols": missing,
            "staleSymbols": stale,
            "staleThresholdSeconds": config.stale_seconds,
            "stateFileError": snapshot.error,
        }
        return _reply(200, _object_with_data(encode_records(found, now), rest))

    @app.get("/funding/<symbol>")
    def one_symbol(symbol: str) -> bytes:
        name = symbol_in_path(symbol)
        if isinstance(name, bytes):
            return name
        view, snapshot = views.current()
        if view is None:
            return unavailable(snapshot)
        record = view.records.get(name)
        if record is None:
            delisted_at = view.delisted.get(name)
            if delisted_at is not None:
                return _reply(404, error_body(
                    404, "delisted", "%s was delisted at %s: Binance no longer trades it as a perpetual"
                    % (name, utc_text(delisted_at)), symbol=name, delistedAt=delisted_at))
            return _reply(404, error_body(404, "not_found", "symbol %s not found" % name, symbol=name))
        now = config.clock()
        age = record.age(now)
        if age > config.stale_seconds:
            tail = dumps(
                {
                    "error": "stale",
                    "detail": "data for %s is %.1f s old (threshold %g s)" % (name, age, config.stale_seconds),
                    "status": 503,
                    "staleThresholdSeconds": config.stale_seconds,
                }
            )
            body = record.head + record.tail(now) + b"," + tail[1:]
            return _reply(503, body)
        return _reply(200, record.encode(now))

    @app.get("/funding")
    def all_symbols() -> bytes:
        query = bottle.request.query
        sort = query.get("sort") or "symbol"
        if sort not in SORT_KEYS:
            return _reply(400, error_body(400, "bad_sort", "sort must be one of %s" % ", ".join(sorted(SORT_KEYS))))
        quote_text = query.get("quote") or ""
        if quote_text and not QUOTE_RE.fullmatch(quote_text):
            return _reply(400, error_body(400, "bad_quote", "quote must match [A-Z0-9]{1,12}, e.g. USDT"))
        type_filters = {}
        for param, attribute in (("contractType", "contract_type"), ("underlyingType", "underlying_type")):
            text = query.get(param) or ""
            if text:
                if not TYPE_RE.fullmatch(text):
                    return _reply(400, error_body(400, "bad_%s" % param, "%s must match [A-Z_]{1,40}" % param))
                type_filters[attribute] = (param, text.upper())
        interval_text = query.get("fundingIntervalHours") or ""
        intervals: Optional[set] = None
        if interval_text:
            parts = interval_text.split(",")
            if len(parts) > 24 or not all(INTERVAL_RE.fullmatch(p) for p in parts):
                return _reply(400, error_body(400, "bad_interval",
                                              "fundingIntervalHours must be whole hours from 1 to 24, e.g. 1 or 1,4"))
            intervals = {int(p) for p in parts}
        limit_text = query.get("limit") or ""
        limit: Optional[int] = None
        if limit_text:
            if not LIMIT_RE.fullmatch(limit_text) or int(limit_text) < 1:
                return _reply(400, error_body(400, "bad_limit", "limit must be a whole number from 1 to 9999999"))
            limit = int(limit_text)
        view, snapshot = views.current()
        if view is None:
            return unavailable(snapshot)
        for attribute, (param, value) in type_filters.items():
            known = view.contract_types if attribute == "contract_type" else view.underlying_types
            if value not in known:
                return _reply(400, error_body(400, "bad_%s" % param, "unknown %s %r; known: %s"
                                              % (param, echo(value), ", ".join(sorted(known)))))
        records = view.sorted_records(sort)
        for attribute, (_param, value) in type_filters.items():
            records = [r for r in records if getattr(r, attribute) == value]
        quote = quote_text.upper()
        if quote:
            records = [r for r in records if r.symbol.endswith(quote)]
        if intervals is not None:
            records = [r for r in records if r.interval_hours in intervals]
        matched = len(records)
        if limit is not None:
            records = records[:limit]
        now = config.clock()
        cutoff = now - config.stale_seconds
        rest = {
            "count": len(records),
            "matched": matched,
            "total": view.count,
            "staleSymbols": [r.symbol for r in records if r.updated_at < cutoff],
            "staleThresholdSeconds": config.stale_seconds,
            "stateUpdatedAt": view.state_updated_at,
            "stateFileError": snapshot.error,
        }
        return _reply(200, _object_with_data(encode_records(records, now), rest))

    @app.get("/metrics")
    def metrics() -> bytes:
        view, snapshot = views.current()
        now = config.clock()
        healthy = evaluate_health(view, snapshot, now, config).healthy
        body = render_metrics(
            views=views,
            view=view,
            state_error=snapshot.error,
            healthy=healthy,
            counter=counter,
            now=now,
            started_at=config.started_at,
            stale_seconds=config.stale_seconds,
            monitor=config.monitor,
            history=config.history,
            history_budget=read_budget_file(config.history_budget_file) if config.history_budget_file else None,
        )
        return _reply(200, body, METRICS_CONTENT_TYPE)

    return ApiMiddleware(app, counter)


class ApiMiddleware:
    """Outermost layer: GET/HEAD only, request counting, and a JSON 500 for anything that escapes."""

    def __init__(self, app: bottle.Bottle, counter: RequestCounter) -> None:
        self.app = app
        self.counter = counter

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if method not in ("GET", "HEAD"):
            body = error_body(405, "method_not_allowed", "only GET and HEAD are supported")
            self.counter.count(UNMATCHED_ROUTE, "405")
            headers = JSON_HEADERS + [("Allow", ALLOWED_METHODS), ("Content-Length", str(len(body))), SERVER_HEADER]
            start_response("405 Method Not Allowed", headers)
            return [body]
        # Bottle decodes the path with errors="ignore", so /funding/BTC%FFUSDT would read as BTCUSDT: refuse it here.
        try:
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        except UnicodeError:
            body = error_body(400, "invalid_path", "the path is not valid UTF-8")
            self.counter.count(UNMATCHED_ROUTE, "400")
            start_response("400 Bad Request", JSON_HEADERS + [("Content-Length", str(len(body))), SERVER_HEADER])
            return [] if method == "HEAD" else [body]
        declared = environ.get("CONTENT_LENGTH") or "0"
        if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
            detail = "a request body is never needed (at most %d bytes)" % MAX_BODY_BYTES
            body = error_body(413, "body_too_large", detail)
            self.counter.count(UNMATCHED_ROUTE, "413")
            headers = JSON_HEADERS + [("Content-Length", str(len(body))), ("Connection", "close")]
            start_response("413 Content Too Large", headers + [SERVER_HEADER])
            return [] if method == "HEAD" else [body]
        statuses: List[str] = []
        started = time.perf_counter()

        def recording_start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            headers.append(SERVER_HEADER)
            return start_response(status, headers, exc_info)

        try:
            result = self.app(environ, recording_start_response)
        except Exception:
            path = echo(environ.get("PATH_INFO", ""))
            log.exception("unexpected error answering %s %s", method, path,
                          extra=event("internal_error", method=method, path=path))
            body = error_body(500, "internal_error", "internal server error (logged)")
            statuses.append("500")
            headers = JSON_HEADERS + [("Content-Length", str(len(body))), SERVER_HEADER]
            start_response("500 Internal Server Error", headers, sys.exc_info())
            result = [] if method == "HEAD" else [body]
        route = environ.get("bottle.route")
        label = ROUTE_LABELS.get(route.rule, UNMATCHED_ROUTE) if route is not None else UNMATCHED_ROUTE
        self.counter.count(label, statuses[-1][:3] if statuses else "000")
        self.counter.observe(label, time.perf_counter() - started)
        return result
