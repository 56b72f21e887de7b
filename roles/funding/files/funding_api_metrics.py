"""GET /metrics: Prometheus text exposition format 0.0.4, written by hand.

Every value here is already at hand (the current SnapshotView, the request
counter), so a dozen lines of formatting are simpler than a prometheus_client
registry with custom collectors; the tests parse the output with
prometheus_client's own parser to prove the format.
"""

from __future__ import annotations

import threading
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import funding_api_latency
import funding_disconnects
from funding_api_view import SnapshotView, StateViews
from funding_monitor_state import HEALTHY, MonitorFileError, MonitorFiles, MonitorStatus, RestartHistory

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RequestCounter:
    """API requests by route template and status code; the label sets are bounded (fixed routes, HTTP codes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, str], int] = {}
        self._latency: Dict[str, Tuple[List[int], List[int]]] = {}  # route -> (count per slot, [sum in us])

    def count(self, route: str, status: str) -> None:
        key = (route, status)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def items(self) -> List[Tuple[Tuple[str, str], int]]:
        with self._lock:
            return sorted(self._counts.items())

    def observe(self, route: str, seconds: float) -> None:
        """One request's latency on `route`."""
        slot = funding_api_latency.bucket_index(seconds)
        micros = funding_api_latency.as_microseconds(seconds)
        with self._lock:
            counts, total = self._latency.setdefault(route, ([0] * funding_api_latency.SLOTS, [0]))
            counts[slot] += 1
            total[0] += micros

    def latency(self) -> Dict[str, Tuple[Sequence[int], int]]:
        with self._lock:
            return {route: (list(counts), total[0]) for route, (counts, total) in self._latency.items()}


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


def render_metrics(
    *,
    views: StateViews,
    view: Optional[SnapshotView],
    state_error: Optional[str],
    healthy: bool,
    counter: RequestCounter,
    now: float,
    started_at: float,
    monitor: Optional[MonitorFiles] = None,
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
