"""The monitor's files between its runs (funding_monitor_state) and what the API's /metrics makes of them."""

from __future__ import annotations

import json

import pytest
from funding_api_metrics import _Exposition, render_monitor
from funding_monitor_state import HEALTHY, MonitorFileError, MonitorFiles, MonitorStatus, RestartHistory
from prometheus_client.parser import text_string_to_metric_families

WS, API = "binance-funding-ws.service", "binance-funding-api.service"


def test_restarts_are_counted_forever_and_budgeted_within_the_window(tmp_path):
    path = str(tmp_path / "restarts.json")
    history = RestartHistory(path, window_seconds=600)
    for at in (1000.0, 1100.0, 2000.0):
        history.record(WS, at)
    again = RestartHistory(path, window_seconds=600)
    assert again.load() is None
    assert again.totals == {WS: 3}
    assert again.recent(WS, 2000.0) == [2000.0]  # the first two fell out of the window when the third was recorded


def test_a_history_from_before_the_totals_counts_what_it_holds(tmp_path):
    path = tmp_path / "restarts.json"
    path.write_text(json.dumps({"restarts": {WS: [1.0, 2.0]}}))
    history = RestartHistory(str(path), window_seconds=600)
    assert history.load() is None and history.totals == {WS: 2}


@pytest.mark.parametrize("content", ["{not json", '{"restarts": {"x": ["a"]}}', "[]"])
def test_an_unusable_history_is_reported_and_starts_afresh(tmp_path, content):
    path = tmp_path / "restarts.json"
    path.write_text(content)
    history = RestartHistory(str(path), window_seconds=600)
    assert "starting a new one" in history.load()
    assert history.restarts == {} and history.totals == {}


def test_the_status_survives_a_round_trip_and_ignores_what_it_does_not_know(tmp_path):
    path = str(tmp_path / "status.json")
    MonitorStatus(HEALTHY, 5.0, ["r"], HEALTHY, {"restart": 4.0}).save(path)
    assert MonitorStatus.load(path) == MonitorStatus(HEALTHY, 5.0, ["r"], HEALTHY, {"restart": 4.0})
    (tmp_path / "odd.json").write_text(json.dumps({"status": "MAYBE", "attempts": {"x": "soon"}, "reasons": [1, "a"]}))
    assert MonitorStatus.load(str(tmp_path / "odd.json")) == MonitorStatus(None, None, ["a"], None, {})
    (tmp_path / "bad.json").write_text("\x00")
    with pytest.raises(MonitorFileError):
        MonitorStatus.load(str(tmp_path / "bad.json"))
    assert MonitorStatus.load(str(tmp_path / "missing.json")) == MonitorStatus()


def _render(files: MonitorFiles, now: float):
    out = _Exposition()
    render_monitor(out, files, now)
    samples = {}
    for family in text_string_to_metric_families(out.text().decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, sample.labels.get("unit"))] = sample.value
    return samples


def test_metrics_show_every_unit_its_restarts_and_the_budget_left(tmp_path):
    files = MonitorFiles(str(tmp_path / "restarts.json"), str(tmp_path / "status.json"), 600, 3, (WS, API))
    history = RestartHistory(files.restart_file, 600)
    for at in (100.0, 200.0, 300.0):
        history.record(WS, at)
    MonitorStatus(HEALTHY, 290.0).save(files.status_file)
    samples = _render(files, now=310.0)
    assert samples[("funding_monitor_restarts_total", WS)] == 3
    assert samples[("funding_monitor_restarts_total", API)] == 0
    assert samples[("funding_monitor_restart_budget_remaining", WS)] == 0
    assert samples[("funding_monitor_restart_budget_remaining", API)] == 3
    assert samples[("funding_monitor_healthy", None)] == 1
    assert samples[("funding_monitor_last_check_timestamp_seconds", None)] == 290.0
    assert samples[("funding_monitor_files_ok", None)] == 1
    later = _render(files, now=1000.0)  # the window has passed: the budget is back, the total stays
    assert later[("funding_monitor_restart_budget_remaining", WS)] == 3
    assert later[("funding_monitor_restarts_total", WS)] == 3


def test_metrics_of_a_fresh_host_and_of_corrupt_files(tmp_path):
    files = MonitorFiles(str(tmp_path / "restarts.json"), str(tmp_path / "status.json"), 600, 3, (WS, API))
    fresh = _render(files, now=10.0)
    assert fresh[("funding_monitor_restart_budget_remaining", WS)] == 3
    assert ("funding_monitor_healthy", None) not in fresh and fresh[("funding_monitor_files_ok", None)] == 1
    (tmp_path / "restarts.json").write_text("garbage")
    (tmp_path / "status.json").write_text("garbage")
    corrupt = _render(files, now=10.0)
    assert corrupt[("funding_monitor_files_ok", None)] == 0
    assert corrupt[("funding_monitor_restarts_total", WS)] == 0
