"""GET /metrics: Prometheus text exposition format 0.0.4, written by hand.

Every value here is already at hand (the current SnapshotView, the request
counter), so a dozen lines of formatting are simpler than a prometheus_client
registry with custom collectors; the tests parse the output with
prometheus_client's own parser to prove the format.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import funding_health
from funding_api_view import SnapshotView, StateViews
from funding_history import HistoryError, HistoryReader

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RequestCounter:
    """API requests by route template and status code; the label sets are bounded (fixed routes, HTTP codes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, str], int] = {}

    def count(self, route: str, status: str) -> None:
        key = (route, status)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def items(self) -> List[Tuple[Tuple[str, str], int]]:
        with self._lock:
            return sorted(self._counts.items())


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

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode("utf-8")


def history_lines(
    history: Optional[HistoryReader], budget: Optional[Mapping[str, Any]], view: Optional[SnapshotView], now: float
) -> List[str]:
    """The settlement history and the recorder's REST use. These come from files every API process reads alike
    (the database, the budget file): they are the same in every worker and must not be summed across workers."""
    out = _Exposition()
    if history is None:
        return out.lines
    try:
        facts = history.facts()
        ok = True
    except HistoryError:
        facts, ok = None, False
    out.single("funding_history_ok", "gauge", "1 when the settlement history database can be read.", 1 if ok else 0)
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
    history: Optional[HistoryReader] = None,
    history_budget: Optional[Mapping[str, Any]] = None,
) -> bytes:
    out = _Exposition()
    oldest, newest = view.data_ages(now) if view else (None, None)
    state_age = now - view.state_updated_at if view and view.state_updated_at is not None else None
    out.single("funding_api_up", "gauge", "1 while the API answers.", 1)
    out.single("funding_api_healthy", "gauge", "1 when /funding/health answers 200, else 0.", 1 if healthy else 0)
    out.single("funding_api_uptime_seconds", "gauge", "Seconds since this API process started.", now - started_at)
    out.single("funding_symbols", "gauge", "Symbols in the state being served.", view.count if view else 0)
    out.single("funding_oldest_data_age_seconds", "gauge", "Age of the least recently updated symbol.", oldest)
    out.single("funding_newest_data_age_seconds", "gauge", "Age of the most recently updated symbol.", newest)
    out.single("funding_state_age_seconds", "gauge", "Seconds since the daemon wrote the served state.", state_age)
    out.single(
        "funding_state_file_ok",
        "gauge",
        "1 when the state file on disk is the one being served, 0 when it is missing, unreadable or corrupt.",
        0 if state_error else 1,
    )
    out.single("funding_state_loads_total", "counter", "State files parsed successfully.", view.loads if view else 0)
    out.single(
        "funding_state_load_errors_total",
        "counter",
        "Times the state file was found missing, unreadable or corrupt (each distinct failure once).",
        views.load_errors,
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
        "funding_api_requests_total",
        "counter",
        "HTTP requests answered, by route template and status code.",
        [('route="%s",status="%s"' % (_escape(route), _escape(code)), n) for (route, code), n in counter.items()],
    )
    return out.text()
