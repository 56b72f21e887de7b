"""The API's pieces without HTTP (WSGI calls, views), and the program's life cycle as systemd sees it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import funding_api_server
import funding_api_view
import funding_settings
import funding_state
import pytest
from funding_api_app import ApiConfig, build_app
from funding_api_metrics import RequestCounter, SharedCounters, counters_file_size
from funding_api_view import SnapshotView, StateViews, ViewRefresher, build_records
from funding_state import StateReader
from prometheus_client.parser import text_string_to_metric_families
from test_api_support import (
    SERVER,
    Reply,
    assert_json_error,
    call,
    free_port,
    fresh_symbols,
    record,
    start_api,
    wait_until,
    write_state,
)


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "state.json"
    write_state(path, fresh_symbols())
    return path


def make_app(path, clock=time.time):
    views = StateViews(StateReader(str(path)))
    return build_app(views, ApiConfig(stale_seconds=180, clock=clock), RequestCounter()), views


class ExplodingViews(StateViews):
    def current(self):
        raise RuntimeError("secret internal detail")


def test_an_unexpected_exception_is_a_logged_500_json_without_traceback(state_file, caplog):
    app = build_app(ExplodingViews(StateReader(str(state_file))), ApiConfig(), RequestCounter())
    with caplog.at_level(logging.ERROR, logger="funding_api"):
        status, headers, body = call(app, "/funding/BTCUSDT")
    assert status == 500
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    parsed = json.loads(body)
    assert parsed["error"] == "internal_error"
    assert b"secret internal detail" not in body and b"Traceback" not in body
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records)


def test_an_unexpected_exception_on_head_sends_no_body(state_file):
    app = build_app(ExplodingViews(StateReader(str(state_file))), ApiConfig(), RequestCounter())
    status, _, body = call(app, "/funding/health", method="HEAD")
    assert status == 500 and body == b""


def test_non_finite_and_odd_values_in_the_state_become_null_not_invalid_json(tmp_path):
    path = tmp_path / "state.json"
    # Python's json reads NaN/Infinity, and the contract only checks the price and rate fields.
    path.write_text(
        '{"funding_state": {"BTCUSDT": {"fundingRate": 0.0001, "markPrice": 1.0, "indexPrice": 1.0,'
        ' "nextFundingTime": NaN, "fundingIntervalHours": [8], "updatedAt": %f}},'
        ' "connection_status": {"connected": "yes", "messages_received": Infinity,'
        ' "last_connected_time": {"x": 1}}, "updated_at": %f}' % (time.time(), time.time())
    )
    app, _ = make_app(path)
    status, _, body = call(app, "/funding/BTCUSDT")
    assert status == 200
    parsed = json.loads(body, parse_constant=lambda name: pytest.fail("non-standard JSON constant %s" % name))
    assert parsed["nextFundingTime"] is None and parsed["fundingIntervalHours"] is None
    status, _, body = call(app, "/funding/health")
    health = json.loads(body, parse_constant=lambda name: pytest.fail("non-standard JSON constant %s" % name))
    assert status == 503 and health["websocketConnected"] is False
    assert health["messagesReceived"] is None and health["lastConnectedTime"] is None
    status, _, body = call(app, "/metrics")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert status == 200 and "funding_daemon_messages_received" in names


def test_age_is_never_negative_when_updated_at_is_in_the_future(tmp_path):
    path = tmp_path / "state.json"
    now = time.time()
    write_state(path, {"BTCUSDT": record(now, age=-30.0)}, now=now)
    app, _ = make_app(path)
    _, _, body = call(app, "/funding/BTCUSDT")
    assert json.loads(body)["ageSeconds"] == 0.0


def test_age_is_measured_at_the_request_to_the_millisecond(tmp_path):
    path = tmp_path / "state.json"
    write_state(path, {"BTCUSDT": record(1000.0, age=0.0)}, now=1000.0)
    clock = [1012.3456]
    app, _ = make_app(path, clock=lambda: clock[0])
    assert json.loads(call(app, "/funding/BTCUSDT")[2])["ageSeconds"] == 12.346
    clock[0] = 1179.9
    assert call(app, "/funding/BTCUSDT")[0] == 200
    clock[0] = 1180.1
    assert call(app, "/funding/BTCUSDT")[0] == 503


def test_views_are_rebuilt_only_when_the_reader_parsed_a_new_file(state_file):
    views = StateViews(StateReader(str(state_file)))
    first, _ = views.current()
    assert first is not None and first.count == 3
    assert views.refresh() is False and views.current()[0] is first
    write_state(state_file, fresh_symbols(count=5))
    # Without a stat the published view stays until the refresher runs ...
    assert views.published()[0] is first
    assert views.refresh() is True
    second, _ = views.current()
    assert second is not first and second.count == 8 and second.loads == first.loads + 1
    assert views.current()[0] is second and views.refresh() is False


def test_a_request_after_a_rename_gets_the_new_file_before_the_refresher_runs(state_file):
    views = StateViews(StateReader(str(state_file)))
    first, _ = views.current()
    write_state(state_file, fresh_symbols(count=5))
    second, snapshot = views.current()
    assert second is not first and second.count == 8 and snapshot.error is None
    # The file did not change again: the next request reuses the view without parsing.
    assert views.current()[0] is second and views.reader.snapshot().loads == second.loads


def test_a_damaged_file_is_parsed_once_not_on_every_request(state_file):
    views = StateViews(StateReader(str(state_file)))
    good, _ = views.current()
    state_file.write_bytes(b"{broken")
    for _ in range(5):
        view, snapshot = views.current()
        assert view is good and snapshot.error is not None
    assert views.load_errors == 1 and views.reader.snapshot().loads == good.loads


def test_the_refresher_publishes_a_new_file_in_the_background(state_file):
    views = StateViews(StateReader(str(state_file)))
    refresher = ViewRefresher(views, 0.002)
    refresher.start()
    try:
        write_state(state_file, fresh_symbols(count=5))
        assert wait_until(lambda: views.current()[0].count == 8, deadline=5)
    finally:
        refresher.stop_event.set()
        refresher.join(5)


def test_loads_and_errors_are_reported_to_the_counters_once_each(state_file):
    counter = SharedCounters()
    views = StateViews(StateReader(str(state_file)), on_load=counter.count_load, on_error=counter.count_load_error)
    state_file.write_bytes(b"{broken")
    views.refresh()
    views.refresh()
    write_state(state_file, fresh_symbols())
    views.refresh()
    assert counter.loads() == 2 and counter.load_errors() == 1


def test_records_are_encoded_in_one_call_and_split_exactly_even_with_odd_symbol_names():
    now = time.time()
    odd = ['A,{"symbol":"B', 'C\\"},{"symbol":', "D\u00e9", "E"]
    records = build_records({name: record(now, rate=0.0001 * i) for i, name in enumerate(odd)})
    for i, name in enumerate(odd):
        parsed = json.loads(records[name].encode(now))
        assert parsed["symbol"] == name and parsed["fundingRate"] == 0.0001 * i
        assert list(parsed) == ["symbol", "markPrice", "fundingRate", "nextFundingTime", "indexPrice",
                                "fundingRateCap", "fundingRateFloor", "fundingRateAnnualized", "fundingRateHourly",
                                "capUsage", "updatedAt", "ageSeconds", "secondsToFunding"]


def test_a_number_orjson_cannot_encode_is_written_exactly():
    now = time.time()
    records = build_records({"BTCUSDT": dict(record(now), nextFundingTime=2**70)})
    assert json.loads(records["BTCUSDT"].encode(now))["nextFundingTime"] == 2**70


def test_a_new_view_keeps_unchanged_records_and_rebuilds_exactly_the_changed_ones():
    now = time.time()
    state = {"S%03dUSDT" % i: record(now, rate=0.0001 * i) for i in range(50)}
    connection = funding_state.new_connection_status()
    first = SnapshotView(funding_state.build_payload(state, connection, now, 1), loads=1, loaded_at=now)
    changed = dict(state)
    changed["S007USDT"] = dict(state["S007USDT"], markPrice=123.5)
    changed["S009USDT"] = dict(state["S009USDT"], lastSettlement={"fundingTime": 1764748800000, "fundingRate": 1e-4})
    del changed["S011USDT"]
    changed["NEWUSDT"] = record(now, rate=0.0003)
    second = SnapshotView(funding_state.build_payload(changed, connection, now, 1), loads=2, loaded_at=now,
                          previous=first)
    rebuilt = {s for s, r in second.records.items() if first.records.get(s) is not r}
    assert rebuilt == {"S007USDT", "S009USDT", "NEWUSDT"}
    assert list(second.records) == list(changed)
    # Kept or rebuilt, every record is what a view built from nothing serves.
    scratch = SnapshotView(funding_state.build_payload(changed, connection, now, 1), loads=2, loaded_at=now)
    served = {symbol: r.encode(now) for symbol, r in second.records.items()}
    assert served == {symbol: r.encode(now) for symbol, r in scratch.records.items()}
    assert json.loads(second.records["S007USDT"].encode(now))["markPrice"] == 123.5


def test_a_state_file_rewritten_with_one_change_rebuilds_one_record_through_the_reader(tmp_path):
    path = tmp_path / "state.json"
    symbols = fresh_symbols(count=100)
    write_state(path, symbols)
    views = StateViews(StateReader(str(path)))
    first = views.current()[0]
    symbols["ETHUSDT"] = dict(symbols["ETHUSDT"], fundingRate=0.0042)
    write_state(path, symbols)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new stat even within one clock tick
    assert views.refresh()
    second = views.current()[0]
    # The reader handed every unchanged entry over as the previous object, so the view kept their records.
    assert {s for s, r in second.records.items() if first.records.get(s) is not r} == {"ETHUSDT"}
    assert json.loads(second.records["ETHUSDT"].encode(time.time()))["fundingRate"] == 0.0042


def test_the_reader_hands_over_unchanged_entries_as_the_previous_objects_and_still_checks_changed_ones():
    now = time.time()
    previous = {"AUSDT": record(now), "BUSDT": record(now)}
    payload = funding_state.build_payload(
        {"AUSDT": dict(previous["AUSDT"]), "BUSDT": dict(previous["BUSDT"], markPrice=7.0)},
        funding_state.new_connection_status(), now, 1)
    checked = funding_state.validate_payload(payload, previous)["funding_state"]
    assert checked["AUSDT"] is previous["AUSDT"] and checked["BUSDT"] is not previous["BUSDT"]
    broken = funding_state.build_payload(
        {"AUSDT": dict(previous["AUSDT"]), "BUSDT": dict(previous["BUSDT"], markPrice="x")},
        funding_state.new_connection_status(), now, 1)
    with pytest.raises(funding_state.StateFileError):
        funding_state.validate_payload(broken, previous)


def test_counters_of_two_processes_add_up_in_one_file(tmp_path):
    path = tmp_path / "counters"
    path.write_bytes(b"\0" * counters_file_size(2))
    first, second = SharedCounters(str(path), region=0), SharedCounters(str(path), region=1)
    for _ in range(3):
        first.count("/funding/{symbol}", "200")
    second.count("/funding/{symbol}", "200")
    second.count("other", "404")
    second.count("/funding/health", "weird")
    reader = SharedCounters(str(path), region=0)
    assert dict(reader.items()) == {
        ("/funding/{symbol}", "200"): 4,
        ("other", "404"): 1,
        ("/funding/health", "000"): 1,
    }


def test_a_view_sorts_records_without_funding_rate_last():
    now = time.time()
    payload = funding_state.build_payload(
        {
            "AUSDT": record(now, rate=0.0002),
            "BUSDT": dict(record(now), fundingRate=None),
            "CUSDT": record(now, rate=-0.0001),
        },
        funding_state.new_connection_status(),
        now,
        1,
    )
    view = SnapshotView(payload, loads=1, loaded_at=now)
    assert [r.symbol for r in view.sorted_records("fundingRate")] == ["CUSDT", "AUSDT", "BUSDT"]
    assert [r.symbol for r in view.sorted_records("-fundingRate")] == ["AUSDT", "CUSDT", "BUSDT"]


def test_granian_worker_arguments_bound_slow_and_large_requests():
    arguments = funding_api_server.granian_worker_arguments(header_timeout=30, workers=2)
    assert arguments["blocking_threads"] == 1 and arguments["websockets"] is False
    assert arguments["http1_settings"].header_read_timeout == 30_000
    # A 1000-symbol batch URL (about 41 KB) must fit under the buffer limit.
    assert arguments["http1_settings"].max_buffer_size > 1000 * 41 + 1024
    assert arguments["log_access_fmt"] is None and arguments["ssl_ctx"][0] is False


def test_workers_default_to_one_per_core_capped_at_4(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert funding_settings.api_workers("0") == 4
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert funding_settings.api_workers("0") == 2
    assert funding_settings.api_workers("3") == 3


# --- the program ------------------------------------------------------------------------------------------------


def run_program(*args, env=None, timeout=30):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDING_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(SERVER), *args], check=False, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_setting_and_exits_0():
    result = run_program("--help")
    assert result.returncode == 0
    for setting in funding_api_server.SETTINGS:
        assert setting.env in result.stdout
        assert "[%s]" % setting.default in result.stdout


@pytest.mark.parametrize(
    "env",
    [
        {"FUNDING_API_PORT": "http"},
        {"FUNDING_API_PORT": "70000"},
        {"FUNDING_STALE_SECONDS": "-1"},
        {"FUNDING_API_WORKERS": "-1"},
        {"FUNDING_API_STATE_POLL_MS": "0"},
        {"FUNDING_LOG_LEVEL": "LOUD"},
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(env):
    result = run_program(env=env)
    assert result.returncode == 2
    assert next(iter(env)) in result.stderr and "Traceback" not in result.stderr


def test_a_port_already_in_use_exits_1_with_a_message(tmp_path):
    holder, port = free_port()
    try:
        result = run_program(env={"FUNDING_API_PORT": str(port), "FUNDING_STATE_FILE": str(tmp_path / "s.json")})
    finally:
        holder.close()
    assert result.returncode == 1
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr


def test_a_second_server_on_the_port_of_a_running_one_exits_1_instead_of_sharing_it(tmp_path):
    # The workers' sockets form an SO_REUSEPORT group: a second server of the same user could join it and take a
    # share of the connections unnoticed. It must be refused like any other port in use.
    write_state(tmp_path / "state.json", fresh_symbols())
    api = start_api(tmp_path / "state.json", env={"FUNDING_API_WORKERS": "2"})
    try:
        result = run_program(env={"FUNDING_API_PORT": str(api.port), "FUNDING_STATE_FILE": str(tmp_path / "s.json")})
        assert result.returncode == 1
        assert "cannot listen" in result.stderr and "Traceback" not in result.stderr
        assert api.get("/funding/BTCUSDT").status == 200
    finally:
        api.close()


def test_ready_once_listening_then_sigterm_stops_cleanly_with_status_0(tmp_path):
    write_state(tmp_path / "state.json", fresh_symbols())
    api = start_api(tmp_path / "state.json")
    try:
        assert api.notifications[0].startswith("READY=1")
        # READY carried the port, and the port answers.
        assert api.get("/funding/BTCUSDT").status == 200
        api.process.send_signal(signal.SIGTERM)
        assert api.process.wait(20) == 0
        api.receive_notifications("STOPPING=1", 5)
        assert any("STOPPING=1" in m for m in api.notifications)
        assert "Traceback" not in api.log() and "stopped" in api.log()
    finally:
        api.close()


def test_the_watchdog_is_fed_only_by_answered_self_checks(tmp_path):
    write_state(tmp_path / "state.json", fresh_symbols())
    # WatchdogSec=1 s: a self-check and WATCHDOG=1 every 0.5 s.
    api = start_api(tmp_path / "state.json", env={"WATCHDOG_USEC": "1000000"})
    try:
        messages = api.receive_notifications("WATCHDOG=1", 20)
        assert "WATCHDOG=1" in messages
        # The pings come from real requests: they show up as answered /funding/health requests.
        reply = api.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
        health_requests = [
            s.value for s in families["funding_api_requests"].samples if s.labels.get("route") == "/funding/health"
        ]
        assert health_requests and health_requests[0] >= 1
        # Stop the server from answering (SIGSTOP): no more pings arrive.
        api.process.send_signal(signal.SIGSTOP)
        try:
            api.drain_notifications()
            api.receive_notifications("WATCHDOG=1", 2.5)
            assert "WATCHDOG=1" not in api.notifications
        finally:
            api.process.send_signal(signal.SIGCONT)
    finally:
        api.close()


def test_self_check_reports_a_server_that_does_not_answer():
    silent, port = free_port()  # listens but never answers
    try:
        problem = funding_api_server.self_check("127.0.0.1", port, timeout=0.5)
    finally:
        silent.close()
    assert problem is not None and "timed out" in problem.lower()
    closed_port = free_port()
    closed_port[0].close()
    assert funding_api_server.self_check("127.0.0.1", closed_port[1], timeout=0.5) is not None


def test_self_check_addresses_loopback_for_wildcard_binds():
    assert funding_api_server.self_check_address("0.0.0.0", 8888) == ("127.0.0.1", 8888)
    assert funding_api_server.self_check_address("::", 8888) == ("::1", 8888)
    assert funding_api_server.self_check_address("127.0.0.1", 8888) == ("127.0.0.1", 8888)


def test_batch_with_non_ascii_bytes_is_400_json(state_file):
    app, _ = make_app(state_file)
    status, headers, body = call(app, "/funding/batch", query="symbols=" + "%FF" * 10)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"] == "invalid_symbol"


def test_the_json_error_assertion_rejects_an_html_error_page():
    # A guard for the helper the HTTP tests rely on: a non-JSON body must fail it.
    with pytest.raises(AssertionError):
        assert_json_error(Reply(404, {"content-type": "text/html"}, b"<h1>nope</h1>"), 404)


def test_every_key_an_answer_serves_is_a_key_of_the_state_files_symbol_record():
    contract = {f.key for f in funding_state.SYMBOL_RECORD_FIELDS}
    assert set(funding_api_view.RECORD_KEYS + funding_api_view.OPTIONAL_RECORD_KEYS) <= contract

