"""GET /metrics: Prometheus text exposition format 0.0.4, written by hand.

Every value here is already at hand (the current SnapshotView, the request
counters), so a dozen lines of formatting are simpler than a prometheus_client
registry with custom collectors; the tests parse the output with
prometheus_client's own parser to prove the format.

The API runs several worker processes and a scrape reaches one of them, so the
counters live in one shared file (`SharedCounters`): each worker owns a region
of it and only ever writes there, and a scrape sums every region. A respawned
worker takes its predecessor's region and continues its counts.
"""

from __future__ import annotations

import fcntl
import mmap
import threading
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import funding_api_latency
import funding_disconnects
from funding_monitor_state import HEALTHY, MonitorFileError, MonitorFiles, MonitorStatus, RestartHistory

if TYPE_CHECKING:  # the API's supervisor imports this module for the counters alone
    from funding_api_view import SnapshotView, StateViews
    from funding_history import HistoryReader
from funding_state import IGNORED_STATUS_PREFIX
from funding_universe import IGNORE_REASONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# Route labels (funding_api_app.ROUTE_LABELS plus "other") and HTTP status codes 100-599 (anything else is "000").
ROUTES = (
    "/",
    "/funding",
    "/funding/health",
    "/funding/batch",
    "/funding/{symbol}",
    "/metrics",
    "/funding/stream",
    "/ui",
    "/funding/history",
    "/funding/{symbol}/history",
    "other",
)
STREAM_EVENT_KINDS = ("snapshot", "update", "health")
STREAM_DROP_REASONS = ("slow", "error")
_ROUTE_INDEX = {route: index for index, route in enumerate(ROUTES)}
_STATUS_SLOTS = 501  # slot 0: "000"; slot n: status 99 + n
LOADS_SLOT = len(ROUTES) * _STATUS_SLOTS
LOAD_ERRORS_SLOT = LOADS_SLOT + 1
STARTS_SLOT = LOAD_ERRORS_SLOT + 1  # times a worker process took this region (it is serving once it is non-zero)
STREAMS_OPEN_SLOT = STARTS_SLOT + 1  # a gauge: this worker's open /funding/stream responses
STREAMS_REFUSED_SLOT = STREAMS_OPEN_SLOT + 1
STREAM_EVENTS_SLOT = STREAMS_REFUSED_SLOT + 1  # one slot per STREAM_EVENT_KINDS
STREAMS_DROPPED_SLOT = STREAM_EVENTS_SLOT + len(STREAM_EVENT_KINDS)  # one slot per STREAM_DROP_REASONS
LATENCY_WIDTH = funding_api_latency.SLOTS + 1  # per route: funding_api_latency's buckets, then the sum in microseconds
LATENCY_BASE = STREAMS_DROPPED_SLOT + len(STREAM_DROP_REASONS)
REGION_SLOTS = LATENCY_BASE + len(ROUTES) * LATENCY_WIDTH
REGION_BYTES = REGION_SLOTS * 8


def counters_file_size(regions: int) -> int:
    return regions * REGION_BYTES


def _status_slot(status: str) -> int:
    code = int(status) if status.isdigit() else 0
    return code - 99 if 100 <= code <= 599 else 0


class SharedCounters:
    """Request counts by route and status, and state-file loads, summed over every process sharing `path`.

    Without a path the counters are private to this process (one region, anonymous memory): the tests of the
    application and a single-process run. Increments hold a per-process lock (a worker runs requests in threads);
    other processes only read, and an aligned 8-byte read never sees a torn value.
    """

    def __init__(self, path: Optional[str] = None, region: int = 0) -> None:
        self._file = None
        if path is None:
            self._map = mmap.mmap(-1, REGION_BYTES)
            region = 0
        else:
            self._file = open(path, "r+b")  # noqa: SIM115 (kept open: its lock admits streams across workers)
            self._map = mmap.mmap(self._file.fileno(), 0)
            if (region + 1) * REGION_BYTES > len(self._map):
                raise ValueError("counter region %d is beyond the file %s" % (region, path))
        self._all = memoryview(self._map).cast("Q")
        self.regions = len(self._map) // REGION_BYTES
        self._own = self._all[region * REGION_SLOTS : (region + 1) * REGION_SLOTS]
        self._lock = threading.Lock()

    def _add(self, slot: int) -> None:
        with self._lock:
            self._own[slot] += 1

    def count(self, route: str, status: str) -> None:
        index = _ROUTE_INDEX.get(route, _ROUTE_INDEX["other"])
        self._add(index * _STATUS_SLOTS + _status_slot(status))

    def count_load(self) -> None:
        self._add(LOADS_SLOT)

    def count_load_error(self) -> None:
        self._add(LOAD_ERRORS_SLOT)

    def count_start(self) -> None:
        with self._lock:
            self._own[STARTS_SLOT] += 1
            # A respawned worker takes its predecessor's region: the streams that one held died with it.
            self._own[STREAMS_OPEN_SLOT] = 0

    def open_stream(self, limit: int) -> bool:
        """Count one more open stream unless `limit` are open over every region (checked and counted atomically)."""
        with self._lock:
            if self._file is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            try:
                if self._total(STREAMS_OPEN_SLOT) >= limit:
                    self._own[STREAMS_REFUSED_SLOT] += 1
                    return False
                self._own[STREAMS_OPEN_SLOT] += 1
                return True
            finally:
                if self._file is not None:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def close_stream(self, dropped: str = "") -> None:
        """One stream ended; `dropped` names why the server ended it (one of STREAM_DROP_REASONS), if it did."""
        with self._lock:
            if self._own[STREAMS_OPEN_SLOT] > 0:
                self._own[STREAMS_OPEN_SLOT] -= 1
            if dropped:
                self._own[STREAMS_DROPPED_SLOT + STREAM_DROP_REASONS.index(dropped)] += 1

    def count_stream_event(self, kind: str) -> None:
        self._add(STREAM_EVENTS_SLOT + STREAM_EVENT_KINDS.index(kind))

    def streams_open(self) -> int:
        return self._total(STREAMS_OPEN_SLOT)

    def streams_refused(self) -> int:
        return self._total(STREAMS_REFUSED_SLOT)

    def stream_events(self) -> List[Tuple[str, int]]:
        return [(kind, self._total(STREAM_EVENTS_SLOT + i)) for i, kind in enumerate(STREAM_EVENT_KINDS)]

    def streams_dropped(self) -> List[Tuple[str, int]]:
        return [(reason, self._total(STREAMS_DROPPED_SLOT + i)) for i, reason in enumerate(STREAM_DROP_REASONS)]

    def started_regions(self) -> int:
        """How many regions a worker process has taken (each worker takes one once its application is built)."""
        values = self._all
        return sum(1 for region in range(self.regions) if values[region * REGION_SLOTS + STARTS_SLOT])

    def _total(self, slot: int) -> int:
        values = self._all
        return sum(values[region * REGION_SLOTS + slot] for region in range(self.regions))

    def loads(self) -> int:
        return self._total(LOADS_SLOT)

    def load_errors(self) -> int:
        return self._total(LOAD_ERRORS_SLOT)

    def items(self) -> List[Tuple[Tuple[str, str], int]]:
        """((route, status), count) for every non-zero pair, summed over all regions."""
        totals = [0] * LOADS_SLOT
        values = self._all
        for region in range(self.regions):
            base = region * REGION_SLOTS
            for slot, value in enumerate(values[base : base + LOADS_SLOT]):
                if value:
                    totals[slot] += value
        result = []
        for slot, total in enumerate(totals):
            if total:
                route, status_slot = divmod(slot, _STATUS_SLOTS)
                status = "%03d" % (status_slot + 99) if status_slot else "000"
                result.append(((ROUTES[route], status), total))
        return result


    def observe(self, route: str, seconds: float) -> None:
        """One request's latency on `route` (funding_api_latency's buckets and sum, in this process's region)."""
        base = LATENCY_BASE + _ROUTE_INDEX.get(route, _ROUTE_INDEX["other"]) * LATENCY_WIDTH
        with self._lock:
            self._own[base + funding_api_latency.bucket_index(seconds)] += 1
            self._own[base + funding_api_latency.SLOTS] += funding_api_latency.as_microseconds(seconds)

    def latency(self) -> Dict[str, Tuple[Sequence[int], int]]:
        """route -> (count per bucket slot, sum in microseconds), summed over all regions."""
        result = {}
        for index, route in enumerate(ROUTES):
            base = LATENCY_BASE + index * LATENCY_WIDTH
            slots = [self._total(base + offset) for offset in range(LATENCY_WIDTH)]
            result[route] = (slots[:-1], slots[-1])
        return result


# The name the application uses for its request counter.
RequestCounter = SharedCounters


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(label_value: str) -> str:
    return label_value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Exposition:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Tuple[str, Optional[float]]]) -> None:
        """samples: (label text without braces, value); a None value leaves the sample out."""
        self.lines.append("# HELP %s %s" % (name, help_text))
        self.lines.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            if value is not None:
                self.lines.append("%s%s %s" % (name, "{%s}" % labels if labels else "", _number(value)))

    def single(self, name: str, kind: str, help_text: str, value: Optional[float]) -> None:
        self.family(name, kind, help_text, [("", value)])

    def raw(self, lines: Iterable[str]) -> None:
        self.lines.extend(lines)

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode("utf-8")


def history_lines(
    history: Optional["HistoryReader"], budget: Optional[Mapping[str, Any]], view: Optional["SnapshotView"],
    now: float,
) -> List[str]:
    """The settlement history and the recorder's REST use. They come from files every API worker reads alike (the
    database, the budget file), so each worker answers the same values: nothing here is summed across workers."""
    out = _Exposition()
    if history is None:
        return out.lines
    import funding_health  # noqa: PLC0415  (workers only: the supervisor imports this module for its counters)
    from funding_history import HistoryError  # noqa: PLC0415

    try:
        facts = history.facts()
    except HistoryError:
        facts = None
    out.single("funding_history_ok", "gauge", "1 when the settlement history database can be read.",
               0 if facts is None else 1)
    if facts is not None:
        lag = funding_health.judge_history_lag(view.expected_settlement(now) if view else None,
                                               facts.last_settlement_ms)
        out.single("funding_history_last_settlement_timestamp_seconds", "gauge",
                   "Funding time of the newest settlement stored.",
                   None if facts.last_settlement_ms is None else facts.last_settlement_ms / 1000.0)
        out.single("funding_history_last_confirmed_timestamp_seconds", "gauge",
                   "Funding time of the newest settlement confirmed by REST.",
                   None if facts.last_confirmed_ms is None else facts.last_confirmed_ms / 1000.0)
        out.single("funding_history_lag_seconds", "gauge",
                   "How far the newest stored settlement is behind the latest one the live state proves.",
                   lag.lag_seconds)
    if budget is not None:
        out.single("funding_history_rest_requests_total", "counter",
                   "fundingRate requests the recorder made (weight 1 each, in the 500/5 min bucket).",
                   budget.get("requests_total"))
        out.family("funding_history_rest_refused_total", "counter",
                   "fundingRate requests Binance refused: 429 (over the limit) and 418 (banned).",
                   [('status="429"', budget.get("throttled_total")), ('status="418"', budget.get("banned_total"))])
        out.single("funding_history_rest_tokens", "gauge", "Requests the recorder may make right now (its bucket).",
                   budget.get("tokens"))
        out.single("funding_history_rest_not_before_timestamp_seconds", "gauge",
                   "No fundingRate request before this time (Retry-After of the last 429/418).",
                   budget.get("not_before"))
    return out.lines


def render_metrics(
    *,
    views: StateViews,
    view: Optional[SnapshotView],
    state_error: Optional[str],
    healthy: bool,
    counter: RequestCounter,
    now: float,
    started_at: float,
    stale_seconds: float = 180.0,
    monitor: Optional[MonitorFiles] = None,
    history: Optional["HistoryReader"] = None,
    history_budget: Optional[Mapping[str, Any]] = None,
) -> bytes:
    out = _Exposition()
    oldest, newest = view.data_ages(now) if view else (None, None)
    state_age = now - view.state_updated_at if view and view.state_updated_at is not None else None
    out.single("funding_api_up", "gauge", "1 while the API answers.", 1)
    out.single("funding_api_healthy", "gauge", "1 when /funding/health answers 200, else 0.", 1 if healthy else 0)
    out.single("funding_api_uptime_seconds", "gauge", "Seconds since this API process started.", now - started_at)
    out.single("funding_symbols", "gauge", "Symbols in the state being served.", view.count if view else 0)
    expected = view.expected_count if view else None
    missing = len(view.missing_symbols(now, stale_seconds)) if view is not None and expected is not None else None
    out.single("funding_symbols_expected", "gauge",
               "Perpetuals Binance trades (the daemon's contract universe); absent while it is unknown.", expected)
    out.single("funding_symbols_served", "gauge", "Perpetuals of the universe served with fresh data.",
               expected - missing if expected is not None and missing is not None else None)
    out.single("funding_symbols_missing", "gauge", "Perpetuals of the universe without fresh data.", missing)
    out.single("funding_universe_known", "gauge", "1 when the daemon knows the contract universe.",
               (1 if expected is not None else 0) if view else None)
    out.single("funding_oldest_data_age_seconds", "gauge", "Age of the least recently updated symbol.", oldest)
    out.single("funding_newest_data_age_seconds", "gauge", "Age of the most recently updated symbol.", newest)
    out.single("funding_state_age_seconds", "gauge", "Seconds since the daemon wrote the served state.", state_age)
    out.single(
        "funding_state_file_ok",
        "gauge",
        "1 when the state file on disk is the one being served, 0 when it is missing, unreadable or corrupt.",
        0 if state_error else 1,
    )
    out.single(
        "funding_state_loads_total",
        "counter",
        "State files parsed successfully, summed over the API's worker processes (each parses every file).",
        counter.loads(),
    )
    out.single(
        "funding_state_load_errors_total",
        "counter",
        "Times the state file was found missing, unreadable or corrupt (each distinct failure once per worker).",
        counter.load_errors(),
    )
    status = view.status_number if view else (lambda key: None)
    out.single(
        "funding_daemon_connected",
        "gauge",
        "1 when the daemon reports its WebSocket connected.",
        (1 if view.connected else 0) if view else None,
    )
    out.single(
        "funding_daemon_messages_received_total",
        "counter",
        "WebSocket frames the daemon received (since it started).",
        status("messages_received"),
    )
    out.single(
        "funding_daemon_frames_rejected_total",
        "counter",
        "Frames the daemon rejected as malformed.",
        status("frames_rejected"),
    )
    out.single(
        "funding_daemon_items_rejected_total",
        "counter",
        "Symbol items the daemon rejected as invalid.",
        status("items_rejected"),
    )
    out.family(
        "funding_daemon_items_ignored_total",
        "counter",
        "Stream rows the daemon ignored because their symbol is not a TRADING perpetual of the universe, by reason.",
        [('reason="%s"' % reason, status(IGNORED_STATUS_PREFIX + reason)) for reason in IGNORE_REASONS],
    )
    out.single(
        "funding_daemon_symbol_streams",
        "gauge",
        "Per-symbol streams subscribed (and acknowledged) to fill the all-market array's gaps.",
        status("symbol_streams"),
    )
    out.single(
        "funding_daemon_stream_connections",
        "gauge",
        "Open serving WebSocket connections (the all-market one plus one per 1024 overflow streams).",
        status("stream_connections"),
    )
    out.single(
        "funding_daemon_subscribe_errors_total",
        "counter",
        "SUBSCRIBE/UNSUBSCRIBE requests refused or unanswered.",
        status("subscribe_errors"),
    )
    out.single(
        "funding_daemon_universe_errors_total",
        "counter",
        "exchangeInfo requests that failed or answered garbage.",
        status("universe_errors"),
    )
    out.single(
        "funding_daemon_connections_opened_total",
        "counter",
        "WebSocket connections the daemon opened (reconnects are this minus one).",
        status("connections_opened"),
    )
    out.single(
        "funding_daemon_reconnect_attempts",
        "gauge",
        "Failed reconnect attempts since the last successful connection.",
        status("reconnect_attempts"),
    )
    out.single(
        "funding_api_streams_open",
        "gauge",
        "Open /funding/stream connections, over every worker.",
        counter.streams_open(),
    )
    out.single(
        "funding_api_streams_refused_total",
        "counter",
        "/funding/stream requests refused with 503 because FUNDING_API_MAX_STREAMS were open.",
        counter.streams_refused(),
    )
    out.family(
        "funding_api_stream_events_total",
        "counter",
        "Server-sent events written to /funding/stream clients, by event type.",
        [('event="%s"' % kind, n) for kind, n in counter.stream_events()],
    )
    out.family(
        "funding_api_stream_clients_dropped_total",
        "counter",
        "/funding/stream clients the server dropped: slow (behind for FUNDING_API_STREAM_SEND_TIMEOUT_SECONDS) "
        "or error (an unexpected failure, logged).",
        [('reason="%s"' % reason, n) for reason, n in counter.streams_dropped()],
    )
    out.single(
        "funding_daemon_interval_changes_total",
        "counter",
        "Funding interval changes the daemon saw (fundingInfo or the spacing of nextFundingTime), since it started.",
        status("interval_changes"),
    )
    out.single(
        "funding_daemon_funding_info_errors_total",
        "counter",
        "fundingInfo answers that failed or were garbage or partial (the last good terms were kept).",
        status("funding_info_errors"),
    )
    out.lines.extend(history_lines(history, history_budget, view, now))
    out.family(
        "funding_daemon_disconnects_total",
        "counter",
        "WebSocket connections that ended, by kind of reason (funding_disconnects; the journal has the full reason).",
        [('reason="%s"' % kind, (status(funding_disconnects.status_key(kind)) or 0) if view else None)
         for kind in funding_disconnects.KINDS],
    )
    out.family(
        "funding_api_requests_total",
        "counter",
        "HTTP requests answered, by route template and status code.",
        [('route="%s",status="%s"' % (_escape(route), _escape(code)), n) for (route, code), n in counter.items()],
    )
    out.raw(funding_api_latency.exposition_lines(counter.latency()))
    if monitor is not None:
        render_monitor(out, monitor, now)
    return out.text()


def render_monitor(out: _Exposition, files: MonitorFiles, now: float) -> None:
    """The health monitor's restarts and last verdict, from the files it keeps in the state directory."""
    history = RestartHistory(files.restart_file, files.window_seconds)
    problem = history.load()
    try:
        status: Optional[MonitorStatus] = MonitorStatus.load(files.status_file)
    except MonitorFileError:
        status = None
    units = list(files.units) + sorted(set(history.restarts) | set(history.totals) - set(files.units))
    recent = {unit: len(history.recent(unit, now)) for unit in units}
    out.family(
        "funding_monitor_restarts_total",
        "counter",
        "Restarts the health monitor made, by unit (from its restart history).",
        [('unit="%s"' % _escape(unit), history.totals.get(unit, 0)) for unit in units],
    )
    out.family(
        "funding_monitor_restarts_in_window",
        "gauge",
        "Restarts by unit within the monitor's restart window (FUNDING_RESTART_WINDOW_MINUTES).",
        [('unit="%s"' % _escape(unit), recent[unit]) for unit in units],
    )
    out.family(
        "funding_monitor_restart_budget_remaining",
        "gauge",
        "Restarts the monitor may still make per unit in the window; 0: it only reports (manual action needed).",
        [('unit="%s"' % _escape(unit), max(0, files.max_restarts - recent[unit])) for unit in units],
    )
    out.single(
        "funding_monitor_files_ok",
        "gauge",
        "1 when the monitor's restart history and status files are readable (or not yet written), else 0.",
        0 if problem or status is None else 1,
    )
    out.single(
        "funding_monitor_last_check_timestamp_seconds",
        "gauge",
        "When the health monitor last finished a check (Unix time).",
        status.checked_at if status else None,
    )
    out.single(
        "funding_monitor_healthy",
        "gauge",
        "1 when the monitor's last check was HEALTHY, 0 when UNHEALTHY.",
        (1 if status.status == HEALTHY else 0) if status and status.status else None,
    )
