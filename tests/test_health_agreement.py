"""The API's /funding/health and the health monitor judge the same state at the same moment the same way.

Both use funding_health. The just-restarted daemon is the case that used to disagree: the API answered 200
(the last state loaded, the reconnect within its grace) while the monitor reported "No messages received yet"
and STATUS: UNHEALTHY.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict

import funding_health
import funding_health_monitor
import pytest
from funding_api_app import ApiConfig, build_app
from funding_api_metrics import RequestCounter
from funding_api_view import StateViews
from funding_settings import resolve
from funding_state import StateReader, build_payload, new_connection_status, write_state_atomic
from test_api_support import call, record

NOW = 1764724344.0
BTC_ETH = ("BTCUSDT", "ETHUSDT")


def payload(ages=(2.0, 1.0), **status: Any) -> Dict[str, Any]:
    """A daemon-shaped state: one record per age, connected for an hour and receiving, unless status says else."""
    symbols = {name: record(NOW, age=age) for name, age in zip(BTC_ETH + ("SOLUSDT",), ages)}
    newest = NOW - min(ages) if ages else None
    fields = dict(connected=True, last_connected_time=NOW - 3600, messages_received=36936, last_message_time=newest,
                  last_data_time=newest, daemon_started_at=NOW - 7200, connections_opened=1)
    fields.update(status)
    return build_payload(symbols, new_connection_status(**fields), NOW, 4242)


def just_restarted(previous_ages=(6.0, 5.0)) -> Dict[str, Any]:
    """What the daemon writes right after a restart: the previous file's records, no connection and no message yet."""
    return payload(previous_ages, connected=False, last_connected_time=None, messages_received=0,
                   last_message_time=None, last_data_time=None, daemon_started_at=NOW - 3,
                   disconnected_since=NOW - 3, connections_opened=0)


STATES: Dict[str, Callable[[], Dict[str, Any]]] = {
    "connected_and_fresh": payload,
    "just_restarted": just_restarted,
    "just_restarted_after_a_long_stop": lambda: just_restarted((900.0, 600.0)),
    "reconnecting_within_the_grace": lambda: payload(connected=False, disconnected_since=NOW - 4,
                                                     last_disconnect_time=NOW - 4),
    "disconnected_beyond_the_grace": lambda: payload(connected=False, disconnected_since=NOW - 40,
                                                     last_disconnect_time=NOW - 1),
    "disconnected_without_a_time": lambda: payload(connected=False),
    "no_symbols": lambda: payload(()),
    "connected_without_data_for_90s": lambda: payload((95.0, 90.0)),
    "newest_data_stale": lambda: payload((500.0, 200.0)),
    "one_stale_symbol": lambda: payload((2.0, 1.0, 400.0)),
}


def api_verdict(state_file) -> Dict[str, Any]:
    config = ApiConfig(clock=lambda: NOW, started_at=NOW - 60)
    app = build_app(StateViews(StateReader(str(state_file))), config, RequestCounter())
    status, _, body = call(app, "/funding/health")
    return {**json.loads(body), "http_status": status}


def monitor_verdict(state_file, tmp_path) -> funding_health_monitor.Report:
    config = resolve(funding_health_monitor.SETTINGS, {
        "FUNDING_STATE_FILE": str(state_file),
        "FUNDING_MONITOR_STATE_FILE": str(tmp_path / "restarts.json"),
        "FUNDING_MONITOR_STATUS_FILE": str(tmp_path / "monitor-status.json"),
        "FUNDING_MIN_SYMBOLS": "1",
        "FUNDING_REST_URL": "off",
    })
    monitor = funding_health_monitor.HealthMonitor(config, no_restart=True, now=NOW)
    try:
        monitor.check_state()
    finally:
        monitor.close()
    return monitor.report


@pytest.mark.parametrize("name", sorted(STATES))
def test_api_and_monitor_give_the_same_verdict_on_the_same_state(name, tmp_path):
    state_file = tmp_path / "state.json"
    write_state_atomic(str(state_file), STATES[name]())
    api = api_verdict(state_file)
    report = monitor_verdict(state_file, tmp_path)
    api_says = "unhealthy" if api["http_status"] == 503 else "degraded" if api["warnings"] else "healthy"
    assert report.checks["feed_health"] == api_says, (api, report.render_text())
    assert (report.errors == []) == (api["http_status"] == 200), (api, report.render_text())
    reasons = [r.split(":")[0] for r in api["reasons"]]
    assert [r.split(":")[0] for r in report.checks["feed_health_reasons"]] == reasons


def test_just_restarted_daemon_is_healthy_for_both_while_its_loaded_records_are_fresh(tmp_path):
    state_file = tmp_path / "state.json"
    write_state_atomic(str(state_file), just_restarted())
    api = api_verdict(state_file)
    report = monitor_verdict(state_file, tmp_path)
    assert api["http_status"] == 200 and api["reconnecting"] is True
    assert "No messages received yet" not in report.errors and report.errors == []
    assert "WebSocket is reconnecting (disconnected 3 seconds ago)" in report.warnings


def test_a_corrupt_state_file_is_unhealthy_for_both_though_the_api_still_serves_the_last_good_one(tmp_path):
    state_file = tmp_path / "state.json"
    write_state_atomic(str(state_file), payload())
    config = ApiConfig(clock=lambda: NOW, started_at=NOW - 60)
    views = StateViews(StateReader(str(state_file)))
    app = build_app(views, config, RequestCounter())
    assert call(app, "/funding/health")[0] == 200
    state_file.write_text("{not json")
    views.refresh()  # what each API worker's refresher thread does every FUNDING_API_STATE_POLL_MS
    status, _, body = call(app, "/funding/health")
    assert status == 503 and json.loads(body)["servingLastGoodState"] is True
    assert monitor_verdict(state_file, tmp_path).errors != []


def test_health_is_a_pure_function_of_state_now_and_rules():
    feed = funding_health.FeedSnapshot.from_payload(just_restarted())
    rules = funding_health.HealthRules()
    later = funding_health.judge(feed, None, NOW + 20, rules)
    assert funding_health.judge(feed, None, NOW, rules).status == funding_health.DEGRADED
    assert later.status == funding_health.UNHEALTHY and later.reasons[0].startswith("disconnected:")
    assert funding_health.judge(feed, None, NOW, rules) == funding_health.judge(feed, None, NOW, rules)
    assert time.time() > NOW  # the verdicts above did not read the clock: NOW is in the past
