"""Event lines (`event=<name> key=value ...`) that split the same way in shlex, logfmt parsers and grep."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from conftest import PROGRAMS
from fakes.support import API_UNIT, WS_UNIT, FakeSystemd, closed_url, daemon_state, run_program, write_state
from funding_log import KeyValueFormatter, event_line, format_value, log_event
from test_api_support import fresh_symbols, start_api, wait_until
from test_api_support import write_state as write_api_state

KEY = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_event(line: str) -> Dict[str, str]:
    """The fields of one event line (the part from `event=` on); AssertionError when it is not key=value."""
    start = line.find("event=")
    assert start >= 0, line
    fields: Dict[str, str] = {}
    for token in shlex.split(line[start:]):
        key, sep, value = token.partition("=")
        assert sep and KEY.match(key), (token, line)
        assert key not in fields, (key, line)
        fields[key] = value
    return fields


def event_lines(text: str) -> List[Dict[str, str]]:
    return [parse_event(line) for line in text.splitlines() if "event=" in line]


@pytest.mark.parametrize(("value", "text"), [
    (None, "-"), (True, "true"), (3, "3"), (1.5, "1.5"), (2.0, "2"), (0.12345, "0.123"), (float("nan"), "-"),
    ("plain", "plain"), ("two words", '"two words"'), ('say "hi"', '"say \\"hi\\""'), ("a=b", '"a=b"'),
    ("", '""'),
])
def test_values_are_bare_when_they_can_be_and_quoted_when_they_must(value, text):
    assert format_value(value) == text


def test_an_event_line_splits_back_into_exactly_its_fields():
    line = event_line("disconnect", conn=3, reason='server closed the connection (1000 "bye")', delay_s=1.25,
                      attempt=2, url="wss://x/market/stream?streams=!markPrice@arr")
    assert parse_event("WARNING " + line) == {
        "event": "disconnect", "conn": "3", "reason": 'server closed the connection (1000 "bye")', "delay_s": "1.25",
        "attempt": "2", "url": "wss://x/market/stream?streams=!markPrice@arr",
    }


def test_a_field_name_that_is_not_lower_snake_case_is_a_programming_error():
    with pytest.raises(ValueError):
        event_line("x", **{"Bad-Key": 1})


def test_every_record_becomes_one_key_value_line_with_its_event_fields_and_message(caplog):
    logger = logging.getLogger("test_log_events")
    with caplog.at_level(logging.INFO, logger="test_log_events"):
        log_event(logger, logging.INFO, "check", status="HEALTHY", errors=0)
        log_event(logger, logging.DEBUG, "hidden", status="x")
        logger.warning('plain "sentence" %d', 7)
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            logger.exception("it failed")
    journald = KeyValueFormatter(under_journald=True)
    lines = [journald.format(record) for record in caplog.records]
    assert lines[0] == "level=INFO event=check status=HEALTHY errors=0"
    assert lines[1] == 'level=WARNING event=log msg="plain \\"sentence\\" 7"'
    assert "\n" not in lines[2] and parse_event(lines[2])["exc"].startswith("Traceback")
    outside = parse_event(KeyValueFormatter(under_journald=False).format(caplog.records[0]))
    assert set(outside) == {"event", "status", "errors"}  # ts, level and logger come before event=
    assert all(parse_event(line) for line in lines)


def test_every_log_line_of_the_health_monitor_is_an_event(tmp_path):
    systemd = FakeSystemd(tmp_path / "systemd")
    systemd.set_state(WS_UNIT, "failed")
    systemd.set_state(API_UNIT, "active")
    state = tmp_path / "state.json"
    write_state(state, daemon_state({}))
    done = run_program("funding_health_monitor.py", {
        **systemd.env(), "FUNDING_STATE_FILE": str(state), "FUNDING_API_URL": closed_url(),
        "FUNDING_REST_URL": "off", "FUNDING_MONITOR_STATE_FILE": str(tmp_path / "restarts.json"),
        "FUNDING_MONITOR_STATUS_FILE": str(tmp_path / "status.json"), "FUNDING_RESTART_WAIT_SECONDS": "2",
        "FUNDING_ALERT_WEBHOOK_URL": closed_url() + "/hook", "FUNDING_HTTP_TIMEOUT_SECONDS": "2"})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and all("event=" in line for line in lines), done.stderr
    events = event_lines(done.stderr)
    assert [e["event"] for e in events] == ["restart", "restart", "alert_failed", "check"], done.stderr
    assert events[0]["unit"] == WS_UNIT and events[0]["result"] == "restarted"
    assert events[1]["unit"] == API_UNIT and events[1]["reason"] == "API does not answer"
    assert events[2]["error"].startswith("cannot connect") and "/hook" not in done.stderr
    assert events[3]["status"] == "UNHEALTHY" and events[3]["restarts"] == "2"


def _all_lines_are_events(text: str) -> List[Dict[str, str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no log lines at all"
    not_events = [line for line in lines if not line.startswith(("ts=", "level=")) or " event=" not in line]
    assert not_events == [], "\n".join(not_events[:10])
    return [parse_event(line) for line in lines]


@contextlib.contextmanager
def running_daemon(tmp_path: Path, ws_url: str, rest_url: str) -> Iterator[Tuple[Path, Path]]:
    """The daemon as a process summarizing every second, its output in a file: (state file, log file)."""
    state = tmp_path / "state" / ".funding_state.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNDING_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update(FUNDING_WS_URL=ws_url, FUNDING_REST_URL=rest_url, FUNDING_STATE_FILE=str(state),
               FUNDING_SUMMARY_SECONDS="1", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log_file:
        daemon = subprocess.Popen([sys.executable, str(PROGRAMS / "binance_funding_ws_daemon.py")], env=env,
                                  stdout=log_file, stderr=subprocess.STDOUT)
    try:
        yield state, log_path
    finally:
        daemon.terminate()
        daemon.wait(15)


def test_every_log_line_of_the_daemon_is_key_value(simulator_factory, tmp_path):
    sim = simulator_factory().client
    with running_daemon(tmp_path, sim.ws_url("stream"), sim.rest_url) as (state, log_path):
        assert wait_until(lambda: state.exists() and "summary" in log_path.read_text(), deadline=60), \
            log_path.read_text()
        sim.set_fault("drop")  # a disconnect and a reconnect, with their reasons
        assert wait_until(lambda: "reconnecting" in log_path.read_text(), deadline=30), log_path.read_text()
    _all_lines_are_events(log_path.read_text())


def test_every_log_line_of_the_api_is_key_value(tmp_path):
    state = tmp_path / "state.json"
    api = start_api(state)  # no state file yet: a warning, then it appears
    try:
        write_api_state(state, fresh_symbols())
        assert wait_until(lambda: api.get("/funding/health").status == 200)
        for target in ("/funding/BTCUSDT", "/nope", "/metrics"):
            api.get(target)
        api.stop()
        log = api.log()
    finally:
        api.close()
    _all_lines_are_events(log)


def test_the_daemons_disconnect_and_reconnect_are_events_with_their_fields(simulator_factory, tmp_path):
    sim = simulator_factory().client
    with running_daemon(tmp_path, sim.ws_url("stream"), "off") as (state, log_path):
        assert wait_until(lambda: "event=connected" in log_path.read_text() and "event=summary" in log_path.read_text(),
                          deadline=60), log_path.read_text()
        sim.set_fault("drop")
        assert wait_until(lambda: "delay_s=" in log_path.read_text(), deadline=30), log_path.read_text()
    events = event_lines(log_path.read_text())
    names = [e["event"] for e in events]
    assert {"start", "connect", "connected", "disconnect", "summary", "stop", "exit"} <= set(names), names
    disconnect = next(e for e in events if e["event"] == "disconnect" and "delay_s" in e)
    assert disconnect["kind"] in ("server_closed", "connection_lost", "receive_error") and disconnect["reason"]
    assert float(disconnect["delay_s"]) > 0 and int(disconnect["attempt"]) >= 1
    final = json.loads(state.read_text())["connection_status"]
    assert final["disconnects_" + disconnect["kind"]] >= 1
