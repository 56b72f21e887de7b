"""In-process tests of the daemon's parts: backoff, the coalescing writer, disk errors, state loading."""

from __future__ import annotations

import errno
import json
import logging
import random
import threading
import time

import funding_daemon_log
import funding_daemon_writer
import funding_settings
import funding_state
import pytest
from funding_daemon_feed import FeedState
from funding_daemon_restore import load_previous_state
from funding_daemon_slots import Backoff, url_is_legacy
from funding_daemon_writer import StateWriter

E = 1_764_724_344_000
T = 1_764_748_800_000


def frame(symbols, mark="100.5", event_time=E):
    items = [
        {"e": "markPriceUpdate", "E": event_time, "s": s, "p": mark, "i": "100.1", "r": "0.0001", "T": T}
        for s in symbols
    ]
    return json.dumps({"stream": "!markPrice@arr", "data": items})


def wait_until(predicate, timeout=10.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def symbols_in(path):
    try:
        return funding_state.read_state(str(path))["funding_state"]
    except funding_state.StateFileError:
        return {}


@pytest.fixture
def feed():
    return FeedState({}, funding_state.new_connection_status())


@pytest.fixture
def make_writer(feed, tmp_path):
    writers = []

    def make(coalesce=0.01, heartbeat=60.0):
        writer = StateWriter(str(tmp_path / ".funding_state.json"), feed, coalesce, heartbeat)
        writers.append(writer)
        writer.start()
        return writer

    yield make
    for writer in writers:
        writer.stop()
        writer.join(5)


# --- backoff ------------------------------------------------------------------------------------------------


def test_backoff_doubles_from_initial_to_the_cap_with_bounded_jitter():
    backoff = Backoff(1.0, 60.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    for attempt, delay in enumerate(delays, start=1):
        base = min(60.0, 2.0 ** (attempt - 1))
        assert base * 0.8 <= delay <= min(60.0, base * 1.2)
    assert delays[-1] <= 60.0 and delays[-1] >= 48.0


def test_backoff_never_gives_up_and_resets():
    backoff = Backoff(1.0, 60.0, random.Random(1))
    for _ in range(1000):
        assert 0 < backoff.next_delay() <= 60.0
    assert backoff.attempts == 1000
    backoff.reset()
    assert 0.8 <= backoff.next_delay() <= 1.2


def test_backoff_jitter_varies():
    backoff = Backoff(1.0, 60.0, random.Random(3))
    delays = set()
    for _ in range(20):
        backoff.reset()
        delays.add(round(backoff.next_delay(), 6))
    assert len(delays) > 10


# --- feed state ---------------------------------------------------------------------------------------------


def test_feed_counts_markprice_frames_rejects_and_liveness(feed):
    feed.apply_frame(frame(["AUSDT", "BUSDT"]))
    feed.apply_frame("not json")
    feed.apply_frame(json.dumps([{"e": "24hrTicker", "s": "AUSDT", "p": "-5"}]))
    status = feed.status
    assert status["messages_received"] == 2
    assert status["frames_rejected"] == 1
    assert status["items_rejected"] == 1
    assert sorted(feed.funding) == ["AUSDT", "BUSDT"]
    liveness = status["last_message_time"]
    assert liveness is not None
    time.sleep(0.01)
    feed.apply_frame(json.dumps([{"e": "24hrTicker", "s": "AUSDT", "p": "-5"}]))
    assert feed.status["last_message_time"] == liveness, "a frame without accepted items is not liveness"
    assert feed.status["last_data_time"] > liveness


def test_feed_counts_out_of_order_items(feed):
    feed.apply_frame(frame(["AUSDT"], mark="2", event_time=E + 5000))
    feed.apply_frame(frame(["AUSDT"], mark="1", event_time=E))
    assert feed.status["items_out_of_order"] == 1
    assert feed.funding["AUSDT"]["markPrice"] == 2.0


# --- writer -------------------------------------------------------------------------------------------------


def test_writer_writes_a_valid_state_file_soon_after_a_frame(feed, make_writer, tmp_path):
    path = tmp_path / ".funding_state.json"
    writer = make_writer(coalesce=0.005)
    assert wait_until(path.exists)
    feed.apply_frame(frame(["AUSDT"], mark="123.25"))
    assert wait_until(lambda: "AUSDT" in symbols_in(path), timeout=5)
    payload = funding_state.read_state(str(path))
    assert payload["funding_state"]["AUSDT"]["markPrice"] == 123.25
    assert payload["daemon_pid"] > 0
    assert (path.stat().st_mode & 0o777) == 0o644
    # The counter moves once write_state_atomic has returned, which is after the rename a reader can already see.
    assert wait_until(lambda: writer.writes >= 2, timeout=5)


def test_a_burst_of_frames_costs_one_write(feed, make_writer, monkeypatch, tmp_path):
    calls = []
    real_write = funding_state.write_state_atomic

    def counting_write(path, payload):
        calls.append(len(payload["funding_state"]))
        return real_write(path, payload)

    monkeypatch.setattr(funding_state, "write_state_atomic", counting_write)
    make_writer(coalesce=0.5)
    assert wait_until(lambda: len(calls) == 1)
    for index in range(20):
        feed.apply_frame(frame(["S%dUSDT" % index]))
    assert wait_until(lambda: len(calls) >= 2)
    time.sleep(1.0)
    assert calls == [0, 20]


def test_writer_rewrites_periodically_when_nothing_changes(feed, make_writer, tmp_path):
    path = tmp_path / ".funding_state.json"
    writer = make_writer(heartbeat=0.1)
    assert wait_until(path.exists)
    first = funding_state.read_state(str(path))["updated_at"]
    assert wait_until(lambda: writer.writes >= 3)
    assert funding_state.read_state(str(path))["updated_at"] > first


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "Permission denied")],
)
def test_disk_errors_are_logged_once_counted_retried_and_survived(feed, make_writer, monkeypatch, tmp_path, caplog,
                                                                  error):
    path = tmp_path / ".funding_state.json"
    monkeypatch.setattr(funding_daemon_writer, "WRITE_RETRY_SECONDS", 0.05)
    writer = make_writer(coalesce=0.0, heartbeat=0.05)
    feed.apply_frame(frame(["GOODUSDT"]))
    assert wait_until(lambda: "GOODUSDT" in symbols_in(path))

    real_write = funding_state.write_state_atomic
    failing = threading.Event()
    failing.set()

    def flaky_write(target, payload):
        if failing.is_set():
            raise error
        return real_write(target, payload)

    caplog.set_level(logging.INFO, logger=funding_daemon_log.PROGRAM)
    monkeypatch.setattr(funding_state, "write_state_atomic", flaky_write)
    # The heartbeat may rewrite the file until the first failing write; from then on it must not change.
    assert wait_until(lambda: feed.status["state_write_errors"] >= 1)
    good_bytes = path.read_bytes()
    for index in range(5):
        feed.apply_frame(frame(["NEW%dUSDT" % index]))
    assert wait_until(lambda: feed.status["state_write_errors"] >= 6)
    assert path.read_bytes() == good_bytes, "the previous file stays intact"
    assert writer.is_alive()
    error_lines = [r for r in caplog.records if "cannot write state file" in r.getMessage()]
    assert len(error_lines) == 1, "one line per distinct error, not a flood"
    assert error.strerror in error_lines[0].getMessage()

    failing.clear()
    assert wait_until(lambda: "NEW4USDT" in symbols_in(path))
    payload = funding_state.read_state(str(path))
    assert payload["connection_status"]["state_write_errors"] >= 5
    # Logged once write_state_atomic has returned, after the rename a reader can already see.
    assert wait_until(lambda: any("written again after" in r.getMessage() for r in caplog.records), timeout=5)


def test_final_write_after_stop_records_disconnected(feed, make_writer, tmp_path):
    path = tmp_path / ".funding_state.json"
    writer = make_writer()
    feed.update_status(connected=True)
    assert wait_until(lambda: path.exists() and funding_state.read_state(str(path))["connection_status"]["connected"])
    writer.stop()
    writer.join(5)
    feed.update_status(connected=False)
    assert writer.write_once(lock_timeout=1.0)
    assert funding_state.read_state(str(path))["connection_status"]["connected"] is False


# --- previous state -----------------------------------------------------------------------------------------


def test_load_previous_state_keeps_old_updated_at(tmp_path):
    path = tmp_path / "state.json"
    record = {"fundingRate": 0.0001, "markPrice": 5.0, "indexPrice": 5.1, "nextFundingTime": T, "updatedAt": 1000.0,
              "eventTime": E}
    funding_state.write_state_atomic(str(path), funding_state.build_payload({"AUSDT": record}, {}, 1000.0, 1))
    assert load_previous_state(str(path)).records == {"AUSDT": record}


@pytest.mark.parametrize("content", [b"", b"{", b"\x00\xff garbage", b"[]", b'{"funding_state": []}',
                                     b'{"funding_state": {}, "connection_status": {}, "updated_at": "x"}'])
def test_load_previous_state_survives_a_corrupt_file(tmp_path, caplog, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    caplog.set_level(logging.INFO, logger=funding_daemon_log.PROGRAM)
    assert load_previous_state(str(path)).records == {}
    assert any("unusable" in r.getMessage() for r in caplog.records)


def test_load_previous_state_without_a_file_starts_empty(tmp_path):
    assert load_previous_state(str(tmp_path / "missing.json")).records == {}


def test_legacy_url_detection():
    assert url_is_legacy("wss://fstream.binance.com/stream?streams=!markPrice@arr")
    assert url_is_legacy("wss://fstream.binance.com/ws/!markPrice@arr")
    assert not url_is_legacy(funding_settings.DEFAULT_WS_URL)
    assert not url_is_legacy("wss://fstream.binance.com/market/ws/!markPrice@arr@1s")
