"""funding_health_monitor.py: the seed's checks and report, bounded recovery, bad input.

Runs the monitor as a script against: a fake systemctl/sudo (tests/fakes), a state file written with
funding_state.write_state_atomic, the real funding_api_server.py over that file, and the simulated exchange's REST.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Dict, List

import funding_health_monitor as monitor_module
import pytest
from fakes.support import (
    API_UNIT,
    FAKE_SUDO,
    FAKE_SYSTEMCTL,
    WS_UNIT,
    FakeSystemd,
    closed_url,
    daemon_state,
    rendered_sudoers,
    run_fake,
    run_program,
    write_state,
)
from funding_history import HistoryWriter, Settlement

BANNER = "=" * 100
HEADER = re.compile(r"^Funding Data Health Check - \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
HEALTHY = "✅ STATUS: HEALTHY"
UNHEALTHY = "❌ STATUS: UNHEALTHY - ACTION REQUIRED"


def assert_seconds_line(lines: List[str], template: str, expected: int) -> None:
    """A line of `template` (with {} where the seconds go) naming about `expected` seconds (a slow run adds some)."""
    pattern = "^" + re.escape(template).replace(r"\{\}", r"(\d+)") + "$"
    found = [int(m.group(1)) for m in (re.match(pattern, line) for line in lines) if m]
    assert len(found) == 1 and expected <= found[0] <= expected + 5, (template, lines)


def parse_report(text: str) -> Dict[str, Any]:
    """Check the seed's layout and return the sections' lines (without their two-space indent)."""
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == BANNER and lines[2] == BANNER and lines[-1] == BANNER, text
    assert HEADER.match(lines[1]), lines[1]
    assert lines[3] == "", text
    assert lines[-2] in (HEALTHY, UNHEALTHY), text
    sections: Dict[str, List[str]] = {"info": [], "warnings": [], "errors": []}
    names = {"✅ INFO:": "info", "⚠️  WARNINGS:": "warnings", "❌ ERRORS:": "errors"}
    current = None
    seen = []
    for line in lines[4:-2]:
        if line in names:
            current = names[line]
            seen.append(current)
        elif line == "":
            current = None
        else:
            assert current is not None and line.startswith("  ") and not line.startswith("   "), repr(line)
            sections[current].append(line[2:])
    assert seen == [s for s in ("info", "warnings", "errors") if sections[s]], "sections out of order: %s" % seen
    sections["status"] = lines[-2]
    return sections


class Monitor:
    """Runs the monitor with everything on loopback and the fake systemd."""

    def __init__(self, systemd: FakeSystemd, state_file: Path, history_file: Path, api_url: str) -> None:
        self.systemd = systemd
        self.state_file = state_file
        self.history_file = history_file
        self.env: Dict[str, str] = {
            "FUNDING_STATE_FILE": str(state_file),
            "FUNDING_API_URL": api_url,
            "FUNDING_REST_URL": closed_url(),
            "FUNDING_MONITOR_STATE_FILE": str(history_file),
            "FUNDING_MONITOR_STATUS_FILE": str(history_file.parent / "monitor-status.json"),
            "FUNDING_RESTART_WAIT_SECONDS": "2",
            "FUNDING_HTTP_TIMEOUT_SECONDS": "3",
            **systemd.env(),
        }

    def write(self, payload: Dict[str, Any]) -> None:
        write_state(self.state_file, payload)

    def run(self, *args: str, **env: str):
        result = run_program("funding_health_monitor.py", {**self.env, **env}, args)
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        return result

    def report(self, *args: str, **env: str):
        result = self.run(*args, **env)
        return result, parse_report(result.stdout)


@pytest.fixture
def monitor(systemd, monitor_api, tmp_path):
    return Monitor(systemd, monitor_api.state_file, tmp_path / "monitor-restarts.json", monitor_api.url)


@pytest.fixture
def market(simulator, monitor):
    """A frozen simulated market (REST answers what the stream last pushed); the monitor's REST points at it."""
    simulator.set_fault("freeze")
    monitor.env["FUNDING_REST_URL"] = simulator.rest_url
    return simulator.perpetuals()


def stuck_state(market, no_data_for: float, connected: bool = False) -> Dict[str, Any]:
    now = time.time()
    return daemon_state(
        market, now=now, data_age=no_data_for, connected=connected,
        last_disconnect_time=now - no_data_for, daemon_started_at=now - 7200,
    )


# --------------------------------------------------------------------------- healthy


def test_healthy_system_prints_the_seed_report_and_exits_0_without_restarting(monitor, market, systemd):
    monitor.write(daemon_state(market))
    result, report = monitor.report()
    count = len(market)
    assert result.returncode == 0
    assert report["status"] == HEALTHY
    tradfi = sum(1 for q in market.values() if q["contractType"] == "TRADIFI_PERPETUAL")
    assert tradfi > 100
    assert re.match(r"^Last message [2-9]s ago$", report["info"][5]), report["info"]
    report["info"][5] = "Last message Ns ago"
    assert report["info"] == [
        "WebSocket daemon service is running",
        "WebSocket is connected to Binance",
        "%d symbols tracked" % count,
        "%d of %d perpetuals (%d TradFi)" % (count, count, tradfi),
        "36936 messages processed",
        "Last message Ns ago",
        "API server service is running",
        "API health check: healthy",
        "API reports %d symbols" % count,
        "Data quality check: BTCUSDT funding rate matches REST API",
        "Data quality check: BTCUSDT price diff $0.00 (0.000%)",
        "Data quality check: XAUUSDT funding rate matches REST API",
        "Data quality check: XAUUSDT price diff $0.00 (0.000%)",
    ]
    assert report["warnings"] == [] and report["errors"] == []
    assert "⚠️  WARNINGS:" not in result.stdout and "❌ ERRORS:" not in result.stdout
    assert systemd.restart_calls() == []
    assert sorted(systemd.calls()) == sorted(["systemctl is-active " + WS_UNIT, "systemctl is-active " + API_UNIT])


def test_json_output_carries_the_same_result_for_machines(monitor, market):
    monitor.write(daemon_state(market))
    text = monitor.run()
    result = monitor.run("--json")
    data = json.loads(result.stdout)
    assert result.returncode == 0
    assert data["healthy"] is True and data["status"] == "HEALTHY"
    def without_ages(lines):
        return [re.sub(r"\d+s ago", "Ns ago", line) for line in lines]

    assert without_ages(data["info"]) == without_ages(parse_report(text.stdout)["info"])
    assert data["warnings"] == [] and data["errors"] == [] and data["restarts"] == []
    assert data["upstream_outage"] is False
    checks = data["checks"]
    assert checks["ws_service"]["state"] == "active" and checks["api_service"]["state"] == "active"
    assert checks["symbol_count"] == len(market) and checks["connected"] is True
    assert checks["api_health"]["http_status"] == 200
    spot = checks["spot_check"]
    assert spot["symbol"] == "BTCUSDT" and spot["funding_rate_verdict"] == "match" and spot["price_verdict"] == "ok"
    assert spot["source"] == "api"
    assert re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", data["timestamp"])


def test_json_output_of_an_unhealthy_system_lists_the_errors_and_exits_1(monitor, market):
    monitor.write(daemon_state(dict(list(market.items())[:10])))
    result = monitor.run("--json", "--no-restart")
    data = json.loads(result.stdout)
    assert result.returncode == 1
    assert data["healthy"] is False and data["status"] == "UNHEALTHY"
    assert "Only 10 symbols tracked (expected at least 500)" in data["errors"]


# --------------------------------------------------------------------------- the state checks


def test_coverage_under_99_percent_past_the_grace_is_an_error_naming_the_missing(monitor, market, systemd):
    payload = daemon_state(market, coverage_low_since=time.time() - 600)
    gone = sorted(s for s in market if s != "BTCUSDT")[:30]
    for symbol in gone:
        del payload["funding_state"][symbol]
    monitor.write(payload)
    result, report = monitor.report()
    assert result.returncode == 1
    errors = [e for e in report["errors"] if e.startswith("Feed is unhealthy: coverage: %d of %d perpetuals"
                                                          % (len(market) - 30, len(market)))]
    assert errors and gone[0] in errors[0]
    assert "30 perpetuals without fresh data: %s, ..." % ", ".join(gone[:20]) in report["warnings"]
    assert systemd.restart_calls() == [], "a coverage gap is not fixed by restarting a connected daemon"


def test_stale_symbols_are_a_warning_and_the_system_stays_healthy(monitor, market, systemd):
    payload = daemon_state(market)
    stale = sorted(s for s in market if s != "BTCUSDT")[:45]
    for symbol in stale:
        payload["funding_state"][symbol]["updatedAt"] = time.time() - 400
    monitor.write(payload)
    result, report = monitor.report()
    # Stale perpetuals of the universe are also missing from its coverage (named, at most 20); 45 of 740 is under
    # 99 %, but the daemon has not reported a low-coverage spell (coverage_low_since): no error yet.
    assert report["warnings"] == [
        "45 perpetuals without fresh data: %s, ..." % ", ".join(stale[:20]),
        "45 symbols have stale data (>180s old)",
    ]
    assert "%d of %d perpetuals" % (len(market) - 45, len(market)) in " ".join(report["info"])
    assert report["errors"] == []
    assert result.returncode == 0 and report["status"] == HEALTHY
    assert systemd.restart_calls() == []


def test_null_funding_rate_and_mark_price_are_errors_but_no_reason_to_restart(monitor, market, systemd):
    payload = daemon_state(market)
    others = sorted(s for s in market if s != "BTCUSDT")
    for symbol in others[:23]:
        payload["funding_state"][symbol]["fundingRate"] = None
    for symbol in others[23:25]:
        payload["funding_state"][symbol]["markPrice"] = None
    monitor.write(payload)
    result, report = monitor.report()
    assert "23 symbols have NULL funding rate" in report["errors"]
    assert "2 symbols have NULL mark price" in report["errors"]
    assert result.returncode == 1 and report["status"] == UNHEALTHY
    assert systemd.restart_calls() == []


def test_too_few_symbols_is_an_error(monitor, market):
    monitor.write(daemon_state(dict(sorted(market.items())[:120])))
    result, report = monitor.report()
    assert "Only 120 symbols tracked (expected at least 500)" in report["errors"]
    assert result.returncode == 1
    result, report = monitor.report(FUNDING_MIN_SYMBOLS="100")
    assert "120 symbols tracked" in report["info"] and result.returncode == 0


def test_last_message_older_than_60s_is_an_error(monitor, market):
    monitor.write(daemon_state(market, data_age=90))
    result, report = monitor.report("--no-restart")
    assert_seconds_line(report["errors"], "No messages received for {} seconds", 90)
    assert result.returncode == 1


def test_acks_without_market_data_count_as_no_messages(monitor, market):
    """The retired endpoint acknowledges and then sends nothing: messages arrive, market data does not."""
    now = time.time()
    monitor.write(daemon_state(market, now=now, data_age=95, last_data_time=now - 2))
    result, report = monitor.report("--no-restart")
    assert_seconds_line(
        report["errors"],
        "No messages received for {} seconds (the connection still gets other messages, but no market data)",
        95,
    )


# --------------------------------------------------------------------------- the spot check


def test_mark_price_half_a_percent_off_is_a_warning(monitor, market, simulator):
    simulator.set_fault("rest_skew", percent=0.5)
    monitor.write(daemon_state(market))
    result, report = monitor.report()
    lines = [w for w in report["warnings"] if w.startswith("Data quality: BTCUSDT price differs by $")]
    assert len(lines) == 1 and re.search(r"\(0\.\d{3}%\)$", lines[0]), report
    assert float(re.search(r"\((\d\.\d+)%\)", lines[0]).group(1)) == pytest.approx(0.5, abs=0.01)
    assert report["errors"] == [] and result.returncode == 0


def test_mark_price_two_percent_off_is_an_error_and_no_reason_to_restart(monitor, market, simulator, systemd):
    simulator.set_fault("rest_skew", percent=2)
    monitor.write(daemon_state(market))
    result, report = monitor.report()
    lines = [e for e in report["errors"] if e.startswith("Data quality: BTCUSDT price differs by $")]
    assert len(lines) == 1 and "more than 1%" in lines[0], report
    assert result.returncode == 1 and report["status"] == UNHEALTHY
    assert systemd.restart_calls() == []


def test_far_apart_timestamps_are_named_in_the_price_line(monitor, market, simulator):
    simulator.set_fault("rest_skew", percent=2)
    payload = daemon_state(market)
    payload["funding_state"]["BTCUSDT"]["eventTime"] -= 75_000
    monitor.write(payload)
    result, report = monitor.report()
    line = next(e for e in report["errors"] if "BTCUSDT price differs" in e)
    assert line.endswith("REST time and local eventTime are 75s apart")


def test_funding_rate_that_moved_between_the_two_reads_is_a_warning(monitor, market):
    payload = daemon_state(market)
    btc = payload["funding_state"]["BTCUSDT"]
    btc["fundingRate"] += 0.00002
    btc["eventTime"] -= 4000
    monitor.write(payload)
    result, report = monitor.report()
    assert any(
        w.startswith("Data quality: BTCUSDT funding rate moved between the two reads (REST ") and "4.0s apart" in w
        for w in report["warnings"]
    ), report
    assert report["errors"] == [] and result.returncode == 0


def test_funding_rate_that_differs_at_the_same_moment_is_an_error(monitor, market):
    payload = daemon_state(market)
    payload["funding_state"]["BTCUSDT"]["fundingRate"] += 0.00002
    monitor.write(payload)
    result, report = monitor.report()
    assert any("BTCUSDT funding rate differs from REST API at the same moment" in e for e in report["errors"])
    assert result.returncode == 1


def test_a_price_stored_as_the_funding_rate_is_an_error_whatever_the_timestamps(monitor, market):
    payload = daemon_state(market)
    btc = payload["funding_state"]["BTCUSDT"]
    btc["fundingRate"] = btc["markPrice"]  # the estimated settle price `P` mistaken for the rate
    btc["eventTime"] -= 30_000
    monitor.write(payload)
    result, report = monitor.report()
    assert any("far more than a live rate moves between two reads" in e for e in report["errors"]), report
    assert result.returncode == 1


# --------------------------------------------------------------------------- REST failures


def test_binance_rest_down_is_an_error_line_and_exit_1(monitor, market, simulator, systemd):
    simulator.set_fault("rest_outage")
    monitor.write(daemon_state(market))
    result, report = monitor.report()
    errors = [e for e in report["errors"] if e.startswith("Data quality check failed: cannot get BTCUSDT from Binance")]
    assert len(errors) == 1 and "HTTP 503" in errors[0], report
    assert result.returncode == 1
    assert systemd.restart_calls() == []


def test_binance_rest_refusing_connections_is_an_error_line_and_exit_1(monitor, market):
    monitor.write(daemon_state(market))
    result, report = monitor.report(FUNDING_REST_URL=closed_url())
    assert any("cannot connect" in e for e in report["errors"] if e.startswith("Data quality check failed")), report
    assert result.returncode == 1


def test_binance_rest_answering_html_is_an_error_line_and_exit_1(monitor, market, simulator):
    simulator.set_fault("rest_garbage")
    monitor.write(daemon_state(market))
    result, report = monitor.report()
    assert any("answered HTML, not JSON" in e for e in report["errors"]), report
    assert result.returncode == 1


# --------------------------------------------------------------------------- recovery


def test_daemon_down_is_restarted_through_sudo_and_confirmed(monitor, systemd):
    systemd.set_state(WS_UNIT, "failed")
    monitor.write(daemon_state({}))
    result, report = monitor.report()
    assert "WebSocket daemon service is NOT running (%s is failed)" % WS_UNIT in report["errors"]
    assert "✅ Successfully restarted %s" % WS_UNIT in report["info"]
    assert systemd.restart_calls() == ["sudo -n %s restart %s" % (FAKE_SYSTEMCTL, WS_UNIT)]
    assert not any("REJECTED" in line for line in systemd.calls())
    assert systemd.state(WS_UNIT) == "active"
    assert result.returncode == 1  # it was down at check time
    history = json.loads(monitor.history_file.read_text())
    assert len(history["restarts"][WS_UNIT]) == 1


def test_a_restart_that_fails_is_reported(monitor, systemd):
    systemd.set_state(WS_UNIT, "inactive")
    systemd.set_restart_result(WS_UNIT, "fail")
    monitor.write(daemon_state({}))
    result, report = monitor.report()
    assert any(
        e.startswith("❌ Failed to restart %s: Job for %s failed" % (WS_UNIT, WS_UNIT)) for e in report["errors"]
    ), report
    assert result.returncode == 1


def test_a_unit_that_never_becomes_active_after_restart_is_a_failure(monitor, systemd):
    systemd.set_state(API_UNIT, "failed")
    systemd.set_restart_result(API_UNIT, "activating")
    monitor.write(daemon_state({}))
    result, report = monitor.report(FUNDING_RESTART_WAIT_SECONDS="1")
    assert "❌ Failed to restart %s: still activating after 1s" % API_UNIT in report["errors"], report
    assert len(systemd.restart_calls()) == 1


def test_restart_limit_stops_further_restarts(monitor, systemd):
    systemd.set_state(WS_UNIT, "failed")
    systemd.set_restart_result(WS_UNIT, "fail")
    monitor.write(daemon_state({}))
    for run in range(1, 4):
        monitor.report()
        assert len(systemd.restart_calls()) == run
    result, report = monitor.report()
    assert len(systemd.restart_calls()) == 3
    assert (
        "Restart limit reached for %s: 3 restarts in the last 30 minutes; not restarting it again "
        "(manual action required)" % WS_UNIT in report["errors"]
    )
    assert result.returncode == 1


def test_restarts_older_than_the_window_do_not_count(monitor, systemd):
    old = time.time() - 31 * 60
    monitor.history_file.write_text(json.dumps({"restarts": {WS_UNIT: [old, old + 1, old + 2]}}))
    systemd.set_state(WS_UNIT, "inactive")
    monitor.write(daemon_state({}))
    monitor.report()
    assert len(systemd.restart_calls()) == 1
    assert len(json.loads(monitor.history_file.read_text())["restarts"][WS_UNIT]) == 1


def test_a_corrupt_restart_history_is_reset_with_a_warning(monitor, systemd):
    monitor.history_file.write_text("{not json")
    systemd.set_state(WS_UNIT, "inactive")
    monitor.write(daemon_state({}))
    result, report = monitor.report()
    assert any(w.startswith("Restart history %s was unreadable" % monitor.history_file) for w in report["warnings"])
    assert len(systemd.restart_calls()) == 1
    assert list(json.loads(monitor.history_file.read_text())["restarts"]) == [WS_UNIT]


def test_an_unwritable_restart_history_means_no_restart(monitor, systemd, tmp_path):
    systemd.set_state(WS_UNIT, "inactive")
    monitor.write(daemon_state({}))
    missing_dir = tmp_path / "no-such-dir" / "monitor-restarts.json"
    result, report = monitor.report(FUNDING_MONITOR_STATE_FILE=str(missing_dir))
    assert any(e.startswith("Cannot record the restart in %s" % missing_dir) for e in report["errors"]), report
    assert systemd.restart_calls() == []


def test_upstream_outage_is_reported_and_the_daemon_is_not_restarted(monitor, market, simulator, systemd):
    simulator.set_fault("rest_outage")
    monitor.write(stuck_state(market, no_data_for=600))
    result, report = monitor.report()
    assert "WebSocket is NOT connected to Binance" in report["errors"]
    assert_seconds_line(report["errors"], "Disconnected for {} seconds", 600)
    assert any(e.startswith("UPSTREAM OUTAGE: Binance REST is unreachable too") for e in report["errors"]), report
    assert "Data quality check skipped: Binance REST is unreachable" in report["warnings"]
    assert systemd.restart_calls() == []
    assert result.returncode == 1
    assert json.loads(monitor.run("--json").stdout)["upstream_outage"] is True


def test_daemon_without_data_past_the_bound_is_restarted_when_rest_answers(monitor, market, systemd):
    monitor.write(stuck_state(market, no_data_for=600))
    result, report = monitor.report()
    assert_seconds_line(
        report["info"], "Attempting to restart %s (no market data for {}s while Binance REST answers)..." % WS_UNIT, 600
    )
    assert systemd.restart_calls() == ["sudo -n %s restart %s" % (FAKE_SYSTEMCTL, WS_UNIT)]


def test_daemon_without_data_gets_time_to_heal_itself_first(monitor, market, systemd):
    monitor.write(stuck_state(market, no_data_for=90))
    result, report = monitor.report()
    assert any(re.match(r"^Daemon has had no data for 9\ds while Binance REST answers", w) for w in report["warnings"])
    assert systemd.restart_calls() == []


def test_a_daemon_waiting_out_its_backoff_after_an_outage_is_not_restarted(monitor, market, systemd):
    """Binance was down for 10 minutes; the daemon's last failed attempt was 20 s ago and the next one is due."""
    now = time.time()
    monitor.write(daemon_state(market, now=now, data_age=600, connected=False, last_disconnect_time=now - 20,
                               daemon_started_at=now - 7200))
    result, report = monitor.report()
    assert any(re.match(r"^Daemon has had no data for 2\ds while Binance REST answers", w) for w in report["warnings"])
    assert systemd.restart_calls() == []


def test_a_reconnect_within_the_grace_is_a_warning_and_the_system_stays_healthy(monitor, market, systemd):
    now = time.time()
    monitor.write(daemon_state(market, now=now, connected=False, last_disconnect_time=now - 2))
    result, report = monitor.report()
    assert any(w.startswith("WebSocket is reconnecting (disconnected") for w in report["warnings"]), report
    assert "WebSocket is NOT connected to Binance" not in report["errors"]
    assert result.returncode == 0, report
    assert systemd.restart_calls() == []


def test_a_recently_started_daemon_is_not_restarted_for_old_data(monitor, market, systemd):
    now = time.time()
    monitor.write(daemon_state(market, now=now, data_age=900, connected=False, daemon_started_at=now - 30))
    result, report = monitor.report()
    assert systemd.restart_calls() == []


def test_connected_daemon_with_fresh_data_is_never_restarted_even_when_everything_else_fails(monitor, market,
                                                                                             simulator, systemd):
    simulator.set_fault("rest_outage")
    payload = daemon_state(dict(sorted(market.items())[:10]), data_age=1)
    payload["funding_state"]["BTCUSDT"] = dict(payload["funding_state"][sorted(market)[0]], fundingRate=None)
    monitor.write(payload)
    result, report = monitor.report(FUNDING_API_URL=closed_url())
    assert result.returncode == 1
    assert not any(WS_UNIT in line for line in systemd.restart_calls())


def test_api_not_answering_is_restarted(monitor, market, systemd):
    monitor.write(daemon_state(market))
    result, report = monitor.report(FUNDING_API_URL=closed_url())
    assert any(e.startswith("API health check failed:") and "cannot connect" in e for e in report["errors"]), report
    assert "✅ Successfully restarted %s" % API_UNIT in report["info"]
    assert systemd.restart_calls() == ["sudo -n %s restart %s" % (FAKE_SYSTEMCTL, API_UNIT)]
    # The spot check still ran, from the state file.
    assert any(i.startswith("Data quality check: using the state file for BTCUSDT") for i in report["info"])
    assert "Data quality check: BTCUSDT funding rate matches REST API" in report["info"]


def test_api_answering_503_is_reported_but_not_restarted(monitor, market, systemd):
    monitor.write(daemon_state(market, data_age=240, connected=False))
    result, report = monitor.report()
    assert any(e.startswith("API health check: unhealthy (HTTP 503") for e in report["errors"]), report
    assert not any(API_UNIT in line for line in systemd.restart_calls())


def test_no_restart_only_looks(monitor, systemd):
    systemd.set_state(WS_UNIT, "failed")
    systemd.set_state(API_UNIT, "inactive")
    monitor.write(daemon_state({}))
    result, report = monitor.report("--no-restart")
    assert "Would restart %s (unit is failed); auto-restart is off (--no-restart)" % WS_UNIT in report["warnings"]
    assert "Would restart %s (unit is inactive); auto-restart is off (--no-restart)" % API_UNIT in report["warnings"]
    assert systemd.restart_calls() == []
    assert not monitor.history_file.exists()
    assert result.returncode == 1


def test_a_unit_systemd_is_already_starting_is_left_alone(monitor, systemd):
    systemd.set_state(WS_UNIT, "activating")
    monitor.write(daemon_state({}))
    result, report = monitor.report()
    assert "WebSocket daemon service is activating; systemd is handling it, not restarting" in report["warnings"]
    assert systemd.restart_calls() == []


# --------------------------------------------------------------------------- bad input


def test_missing_state_file_is_an_error_line(monitor, tmp_path):
    missing = tmp_path / "nowhere.json"
    result, report = monitor.report("--no-restart", FUNDING_STATE_FILE=str(missing))
    assert "Cannot read state file: state file %s does not exist" % missing in report["errors"]
    assert result.returncode == 1


def test_corrupt_state_file_is_an_error_line(monitor, tmp_path):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"funding_state": {"BTC')
    result, report = monitor.report("--no-restart", FUNDING_STATE_FILE=str(corrupt))
    assert any(e.startswith("Cannot read state file: not valid JSON") for e in report["errors"]), report
    assert result.returncode == 1


def test_state_file_of_the_wrong_shape_is_an_error_line(monitor, tmp_path):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"funding_state": [], "connection_status": {}, "updated_at": 1}))
    result, report = monitor.report("--no-restart", FUNDING_STATE_FILE=str(wrong))
    assert "Cannot read state file: funding_state is missing or not an object" in report["errors"]


def test_systemctl_missing_is_an_error_line_and_nothing_is_restarted(monitor, systemd, tmp_path):
    monitor.write(daemon_state({}))
    missing = str(tmp_path / "bin" / "systemctl")
    result, report = monitor.report(FUNDING_SYSTEMCTL=missing)
    assert "Cannot check WebSocket daemon service (%s): %s not found" % (WS_UNIT, missing) in report["errors"]
    assert "Cannot check API server service (%s): %s not found" % (API_UNIT, missing) in report["errors"]
    assert systemd.calls() == []
    assert result.returncode == 1


def test_sudo_missing_is_a_failed_restart(monitor, systemd, tmp_path):
    systemd.set_state(WS_UNIT, "failed")
    monitor.write(daemon_state({}))
    missing = str(tmp_path / "bin" / "sudo")
    result, report = monitor.report(FUNDING_SUDO=missing)
    assert "❌ Failed to restart %s: %s not found" % (WS_UNIT, missing) in report["errors"]


def test_rest_url_off_skips_the_spot_check_instead_of_refusing_to_run(monitor, systemd):
    # FUNDING_REST_URL=off is valid for the daemon, and funding.env is shared: the monitor used to exit 2 on it.
    monitor.write(daemon_state({"BTCUSDT": {"fundingRate": 0.0001, "markPrice": 91000.0, "indexPrice": 91001.0,
                                            "nextFundingTime": 1764748800000, "eventTime": 1764724344000}}))
    result, report = monitor.report(FUNDING_REST_URL="off", FUNDING_MIN_SYMBOLS="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Data quality check skipped: FUNDING_REST_URL is off" in report["info"]
    assert report["status"] == HEALTHY


def test_help_lists_every_setting_and_bad_settings_exit_2(monitor):
    result = monitor.run("--help")
    assert result.returncode == 0
    for setting in monitor_module.SETTINGS:
        assert setting.env in result.stdout
    bad = monitor.run(FUNDING_SYSTEMCTL="systemctl")
    assert bad.returncode == 2 and "FUNDING_SYSTEMCTL" in bad.stderr
    bad = monitor.run(FUNDING_MAX_RESTARTS="zero")
    assert bad.returncode == 2 and "FUNDING_MAX_RESTARTS" in bad.stderr


# --------------------------------------------------------------------------- the fakes mirror the sudoers rule


@pytest.mark.parametrize(
    "argv",
    [
        ["{systemctl}", "restart", WS_UNIT],  # no -n
        ["-n", "systemctl", "restart", WS_UNIT],  # not the absolute path
        ["-n", "{systemctl}", "stop", WS_UNIT],
        ["-n", "{systemctl}", "restart", "ssh.service"],
        ["-n", "{systemctl}", "restart", WS_UNIT, API_UNIT],
        ["-n", "/bin/sh", "-c", "id"],
    ],
)
def test_fake_sudo_refuses_what_the_sudoers_rule_does_not_grant(systemd, argv):
    argv = [a.replace("{systemctl}", str(FAKE_SYSTEMCTL)) for a in argv]
    result = run_fake([str(FAKE_SUDO), *argv], systemd)
    assert result.returncode == 1 and "a password is required" in result.stderr
    assert systemd.state(WS_UNIT) == "active"
    assert any("REJECTED" in line for line in systemd.calls())


@pytest.mark.parametrize("verb", ["restart", "status", "is-active"])
@pytest.mark.parametrize("unit", [WS_UNIT, API_UNIT])
def test_fake_sudo_allows_exactly_the_granted_commands(systemd, verb, unit):
    result = run_fake([str(FAKE_SUDO), "-n", str(FAKE_SYSTEMCTL), verb, unit], systemd)
    assert result.returncode == 0, result.stderr
    assert not any("REJECTED" in line for line in systemd.calls())


def test_fake_sudo_grants_what_the_rendered_sudoers_file_grants_and_nothing_else(systemd, tmp_path):
    rendered = rendered_sudoers().read_text()
    assert "NOPASSWD: %s restart %s" % (FAKE_SYSTEMCTL, WS_UNIT) in rendered
    only_restart = tmp_path / "sudoers"
    only_restart.write_text("".join(line + "\n" for line in rendered.splitlines() if " restart %s" % WS_UNIT in line))
    systemd.env = lambda: {**FakeSystemd.env(systemd), "FAKE_SUDOERS": str(only_restart)}
    allowed = run_fake([str(FAKE_SUDO), "-n", str(FAKE_SYSTEMCTL), "restart", WS_UNIT], systemd)
    refused = run_fake([str(FAKE_SUDO), "-n", str(FAKE_SYSTEMCTL), "status", WS_UNIT], systemd)
    assert allowed.returncode == 0, allowed.stderr
    assert refused.returncode == 1 and "a password is required" in refused.stderr


def test_fake_systemctl_refuses_a_restart_without_sudo(systemd):
    result = run_fake([str(FAKE_SYSTEMCTL), "restart", WS_UNIT], systemd)
    assert result.returncode != 0 and "Access denied" in result.stderr



# --- the settlement history ---------------------------------------------------------------------------------------


def _history_with_last_settlement(path: Path, funding_time: int) -> None:
    with HistoryWriter(str(path)) as writer:
        writer.add_rest([Settlement("BTCUSDT", funding_time, 0.0001, 90000.0, "rest")], funding_time)


def _state_with_one_hour_symbol(market, settled_ms: int) -> Dict[str, Any]:
    payload = daemon_state(market)
    record = payload["funding_state"]["BTCUSDT"]
    record.update(fundingIntervalHours=1, nextFundingTime=settled_ms + 3_600_000,
                  lastSettlement={"fundingTime": settled_ms, "fundingRate": 0.0001, "markPrice": 90000.0,
                                  "eventTime": settled_ms - 1000})
    return payload


def test_a_history_more_than_two_intervals_behind_is_a_warning_not_an_error(monitor, market, tmp_path):
    settled = (int(time.time()) // 3600) * 3_600_000
    monitor.write(_state_with_one_hour_symbol(market, settled))
    db = tmp_path / "history.sqlite3"
    _history_with_last_settlement(db, settled - 3 * 3_600_000)
    result, report = monitor.report(FUNDING_HISTORY_DB=str(db))
    assert result.returncode == 0, "the live feed is healthy"
    lagging = [w for w in report["warnings"] if w.startswith("Settlement history lags")]
    assert len(lagging) == 1 and "10800 s behind" in lagging[0] and "(7200 s)" in lagging[0], report["warnings"]


def test_a_history_within_two_intervals_is_reported_as_info(monitor, market, tmp_path):
    settled = (int(time.time()) // 3600) * 3_600_000
    monitor.write(_state_with_one_hour_symbol(market, settled))
    db = tmp_path / "history.sqlite3"
    _history_with_last_settlement(db, settled - 3_600_000)
    result, report = monitor.report(FUNDING_HISTORY_DB=str(db))
    assert not [w for w in report["warnings"] if "Settlement history" in w]
    assert any(i.startswith("Settlement history: newest settlement") and "3600 s behind" in i for i in report["info"])
