"""GET /funding/stream over real HTTP with a real SSE client (httpx-sse): snapshot, updates, filters, resume,
the stream cap, slow and vanishing clients, a state file that turns corrupt mid-stream, and the metrics."""

from __future__ import annotations

import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from test_api_support import (
    RisingPrice,
    assert_json_error,
    fresh_symbols,
    metric,
    short_tempdir,
    start_api,
    wait_until,
    write_state,
)

MAX_STREAMS = 4
SEND_TIMEOUT = 1.0
GENERATED = 300  # symbols besides BTCUSDT, ETHUSDT, SOLUSDC
EVENT_DEADLINE = 10.0


@pytest.fixture(scope="module")
def stream_api():
    """A real server with two workers (a resume may reach either), a small stream cap and a short send timeout."""
    workdir = short_tempdir()
    state_file = Path(workdir) / "state.json"
    write_state(state_file, fresh_symbols(count=GENERATED))
    env = {
        "FUNDING_API_WORKERS": "2",
        "FUNDING_API_MAX_STREAMS": str(MAX_STREAMS),
        "FUNDING_API_STREAM_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT),
    }
    server = start_api(state_file, workdir=workdir, env=env)
    yield server
    server.close()


@pytest.fixture
def symbols(stream_api):
    """The state reset to fresh symbols for each test; no stream of an earlier test is still counted."""
    current = fresh_symbols(count=GENERATED)
    write_state(stream_api.state_file, current)
    assert wait_until(lambda: metric(stream_api, "funding_api_streams_open") == 0), "a stream is still open"
    return current


class EventReader:
    """One stream read on its own thread; events (with their arrival time) go to a queue."""

    def __init__(self, url: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.events: "queue.Queue[Tuple[float, ServerSentEvent]]" = queue.Queue()
        self.log: List[Tuple[float, ServerSentEvent]] = []  # every event, also those taken from the queue
        self.opened = threading.Event()
        self.status: Optional[int] = None
        self.response: Optional[httpx.Response] = None
        self.closed = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.opened.wait(EVENT_DEADLINE), "the stream did not open"

    def run(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0)) as client:
                with connect_sse(client, "GET", self.url, headers=dict(self.headers)) as source:
                    self.response = source.response
                    self.status = source.response.status_code
                    self.opened.set()
                    if self.status != 200:
                        return
                    for event in source.iter_sse():
                        self.log.append((time.monotonic(), event))
                        self.events.put((time.monotonic(), event))
                        if self.stop.is_set():
                            return
        except (httpx.HTTPError, OSError, ValueError):
            pass  # closed by close(), or by the server
        finally:
            self.opened.set()
            self.closed.set()

    def next(self, kind: Optional[str] = None, deadline: float = EVENT_DEADLINE) -> ServerSentEvent:
        end = time.monotonic() + deadline
        while True:
            try:
                _, event = self.events.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no %s event within %.0f s" % (kind or "", deadline)) from None
            if kind is None or event.event == kind:
                return event

    def until(self, predicate: Callable[[ServerSentEvent], bool], deadline: float = EVENT_DEADLINE) -> ServerSentEvent:
        end = time.monotonic() + deadline
        while True:
            event = self.next(deadline=max(0.01, end - time.monotonic()))
            if predicate(event):
                return event

    def close(self) -> None:
        """Disconnect now (not at the next event): the server must see the stream end."""
        self.stop.set()
        response = self.response
        if response is not None:
            stream = response.extensions.get("network_stream")
            if stream is not None:
                stream.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        self.thread.join(EVENT_DEADLINE)
        assert not self.thread.is_alive(), "the reader did not stop"


def records(event: ServerSentEvent) -> Dict[str, Dict[str, Any]]:
    return {r["symbol"]: r for r in event.json()["data"]}


def event_has(symbol: str, field: str, value: Any) -> Callable[[ServerSentEvent], bool]:
    def check(event: ServerSentEvent) -> bool:
        return event.event == "update" and records(event).get(symbol, {}).get(field) == value

    return check


def changed(current: Dict[str, Dict[str, Any]], symbol: str, rate: float) -> Dict[str, Dict[str, Any]]:
    """The state with one symbol's rate changed and freshly stamped, as the daemon would write it."""
    updated = dict(current)
    updated[symbol] = dict(current[symbol], fundingRate=rate, updatedAt=time.time())
    return updated


def version(event: ServerSentEvent) -> int:
    assert event.id and event.id.startswith("v"), event
    return int(event.id[1:])


# --- snapshot and updates -----------------------------------------------------------------------------------------


def test_stream_opens_with_a_snapshot_of_every_symbol_then_sends_changes_as_updates(stream_api, symbols):
    reader = EventReader(stream_api.url("/funding/stream"))
    try:
        snapshot = reader.next()
        assert snapshot.event == "snapshot" and snapshot.retry == 2000
        body = snapshot.json()
        assert body["count"] == len(symbols) == len(body["data"])
        assert set(records(snapshot)) == set(symbols)
        assert body["health"]["status"] == "healthy"
        btc = records(snapshot)["BTCUSDT"]
        assert btc["fundingRate"] == symbols["BTCUSDT"]["fundingRate"] and "ageSeconds" not in btc

        write_state(stream_api.state_file, changed(symbols, "BTCUSDT", 0.00123))
        update = reader.until(event_has("BTCUSDT", "fundingRate", 0.00123))
        assert set(records(update)) == {"BTCUSDT"}, "only the symbol that changed"
        assert update.json()["removed"] == []
        assert version(update) > version(snapshot)
    finally:
        reader.close()


def test_a_symbol_changing_many_times_a_second_is_sent_at_most_once_a_second_and_ends_at_its_last_value(
    stream_api, symbols
):
    reader = EventReader(stream_api.url("/funding/stream?symbols=BTCUSDT"))
    try:
        reader.next("snapshot")
        current = symbols
        for step in range(1, 16):  # 15 changes over about 1.5 s
            current = changed(current, "BTCUSDT", step / 100_000)
            write_state(stream_api.state_file, current)
            time.sleep(0.1)
        reader.until(event_has("BTCUSDT", "fundingRate", 15e-5), deadline=5.0)
        time.sleep(1.2)  # nothing more may come: the last value was sent
    finally:
        reader.close()
    updates = [(arrived, e) for arrived, e in reader.log if e.event == "update"]
    # Uncoalesced, 15 events 0.1 s apart; coalesced, two or three (a symbol sent in the snapshot waits its second).
    assert 2 <= len(updates) <= 3, [e.data for _, e in updates]
    gaps = [b[0] - a[0] for a, b in zip(updates, updates[1:])]
    assert min(gaps) > 0.5, gaps
    assert records(updates[-1][1])["BTCUSDT"]["fundingRate"] == 15e-5


def test_filters_select_by_symbols_quote_and_minimum_absolute_rate(stream_api, symbols):
    cases = {
        "symbols=btcusdt,SOLUSDC": {"BTCUSDT", "SOLUSDC"},
        "quote=USDC": {"SOLUSDC"},
        "minAbsFundingRate=0.00015": {s for s, r in symbols.items() if abs(r["fundingRate"]) >= 0.00015},
        "quote=USDT&minAbsFundingRate=0.00004": {
            s for s, r in symbols.items() if s.endswith("USDT") and abs(r["fundingRate"]) >= 0.00004
        },
    }
    for query, expected in cases.items():
        reader = EventReader(stream_api.url("/funding/stream?" + query))
        try:
            snapshot = reader.next("snapshot")
            assert set(records(snapshot)) == expected, query
        finally:
            reader.close()


def test_a_symbol_that_falls_below_the_minimum_rate_is_listed_as_removed(stream_api, symbols):
    reader = EventReader(stream_api.url("/funding/stream?minAbsFundingRate=0.00025"))
    try:
        assert set(records(reader.next("snapshot"))) == {"SOLUSDC"}
        write_state(stream_api.state_file, changed(symbols, "SOLUSDC", 0.0001))
        update = reader.until(lambda e: e.event == "update")
        assert update.json() == {"data": [], "removed": ["SOLUSDC"]}
    finally:
        reader.close()


def test_contract_type_filter_selects_exactly_the_records_served_with_that_contract_type(stream_api, symbols):
    tagged = {s: dict(r, contractType="PERPETUAL") for s, r in symbols.items()}
    tagged["ETHUSDT"]["contractType"] = "TRADIFI_PERPETUAL"
    write_state(stream_api.state_file, tagged)
    # Wait for the tagged file itself: its updatedAt stamps are those of the file the fixture wrote before it.
    assert wait_until(lambda: stream_api.get("/funding/ETHUSDT").json().get("contractType") == "TRADIFI_PERPETUAL")
    served = {r["symbol"]: r for r in stream_api.get("/funding").json()["data"]}
    expected = {s for s, r in served.items() if r.get("contractType") == "TRADIFI_PERPETUAL"}
    reader = EventReader(stream_api.url("/funding/stream?contractType=tradifi_perpetual"))
    try:
        assert set(records(reader.next("snapshot"))) == expected
    finally:
        reader.close()


def test_a_stream_snapshot_is_never_older_than_the_answer_a_client_just_got_from_another_worker():
    # The workers' refreshers see a new file up to 50 ms apart while it changes every 10 ms; a client that read a
    # price and then opens a stream, most likely on the other worker, must not get an older price in its snapshot.
    workdir = short_tempdir()
    state_file = Path(workdir) / "state.json"
    write_state(state_file, fresh_symbols())
    api = start_api(state_file, workdir=workdir, env={"FUNDING_API_WORKERS": "2", "FUNDING_API_STATE_POLL_MS": "50"})
    try:
        pairs = []
        with RisingPrice(state_file, "BTCUSDT"):
            for _ in range(40):
                answered = api.get("/funding/BTCUSDT").json()["markPrice"]
                reader = EventReader(api.url("/funding/stream?symbols=BTCUSDT"))
                try:
                    pairs.append((answered, records(reader.next("snapshot"))["BTCUSDT"]["markPrice"]))
                finally:
                    reader.close()
        assert [pair for pair in pairs if pair[1] < pair[0]] == []
        assert len({answered for answered, _ in pairs}) >= 10, "the price hardly moved: the test proved nothing"
    finally:
        api.close()


def test_a_contract_type_the_state_does_not_know_is_400_like_on_funding(stream_api, symbols):
    listing = stream_api.get("/funding?contractType=NOSUCH_TYPE")
    assert listing.status == 400
    reply = stream_api.get("/funding/stream?contractType=NOSUCH_TYPE")
    body = assert_json_error(reply, 400)
    assert body["error"] == "bad_contract_type" and "PERPETUAL" in body["detail"]


@pytest.mark.parametrize(
    "query, error",
    [
        ("foo=1", "unknown_parameter"),
        ("symbols=BTCUSDT&since=5", "unknown_parameter"),
        ("symbols=", "bad_symbols"),
        ("symbols=BTC-USDT", "invalid_symbol"),
        ("quote=US-DT", "bad_quote"),
        ("quote=USDT&quote=USDC", "repeated_parameter"),
        ("contractType=PERP%20ETUAL", "bad_contract_type"),
        ("minAbsFundingRate=abc", "bad_min_abs_funding_rate"),
        ("minAbsFundingRate=-0.1", "bad_min_abs_funding_rate"),
        ("minAbsFundingRate=nan", "bad_min_abs_funding_rate"),
        ("minAbsFundingRate=", "bad_min_abs_funding_rate"),
        ("symbols=" + ",".join("S%04dUSDT" % i for i in range(1001)), "too_many_symbols"),
    ],
)
def test_unknown_or_malformed_filters_are_400_json_before_any_event(stream_api, query, error):
    reply = stream_api.get("/funding/stream?" + query)
    body = assert_json_error(reply, 400)
    assert body["error"] == error
    assert b"event:" not in reply.body


def test_other_methods_are_405_and_head_describes_the_stream(stream_api):
    assert_json_error(stream_api.get("/funding/stream", method="POST"), 405)
    head = stream_api.get("/funding/stream", method="HEAD")
    assert head.status == 200 and head.header("content-type").startswith("text/event-stream")


# --- resume ---------------------------------------------------------------------------------------------------------


def test_last_event_id_resumes_without_a_snapshot_on_any_worker(stream_api, symbols):
    reader = EventReader(stream_api.url("/funding/stream"))
    try:
        reader.next("snapshot")
        current = changed(symbols, "ETHUSDT", 0.0007)
        write_state(stream_api.state_file, current)
        seen = reader.until(event_has("ETHUSDT", "fundingRate", 0.0007))
    finally:
        reader.close()
    # While away: two changes. Reconnecting (five times, so both workers answer some) brings exactly those.
    current = changed(current, "BTCUSDT", 0.0008)
    write_state(stream_api.state_file, current)
    current = changed(current, "SOLUSDC", -0.0009)
    write_state(stream_api.state_file, current)
    time.sleep(0.2)
    for _ in range(5):
        again = EventReader(stream_api.url("/funding/stream"), headers={"Last-Event-ID": seen.id})
        try:
            first = again.next()
            assert first.event == "update", first
            assert set(records(first)) == {"BTCUSDT", "SOLUSDC"}
            assert records(first)["SOLUSDC"]["fundingRate"] == -0.0009
        finally:
            again.close()


@pytest.mark.parametrize("last_event_id", ["hello", "v1", "v99999999999999999", "12", ""])
def test_a_last_event_id_that_is_not_ours_or_too_old_gets_a_snapshot(stream_api, symbols, last_event_id):
    reader = EventReader(stream_api.url("/funding/stream"), headers={"Last-Event-ID": last_event_id})
    try:
        first = reader.next()
        assert first.event == "snapshot" and first.json()["count"] == len(symbols)
    finally:
        reader.close()


# --- health ----------------------------------------------------------------------------------------------------------


def test_a_state_file_that_turns_corrupt_mid_stream_keeps_the_data_and_sends_health_transitions_only(
    stream_api, symbols
):
    reader = EventReader(stream_api.url("/funding/stream?symbols=BTCUSDT"))
    try:
        reader.next("snapshot")
        Path(stream_api.state_file).write_bytes(b'{"funding_state": {"BTCUSDT": ')
        broken = reader.next("health")
        body = broken.json()
        assert body["status"] == "unhealthy" and body["servingLastGoodState"] is True
        assert any(reason.startswith("state_file:") for reason in body["reasons"])
        # The last good data is still what the API serves.
        assert stream_api.get("/funding/BTCUSDT").json()["fundingRate"] == symbols["BTCUSDT"]["fundingRate"]
        # Still corrupt (a different corrupt file): no new transition, so no event.
        Path(stream_api.state_file).write_bytes(b"not json at all")
        time.sleep(2.5)
        assert all(e.event != "health" for _, e in list(reader.events.queue)), "health only on transitions"
        write_state(stream_api.state_file, changed(symbols, "BTCUSDT", 0.0004))
        recovered = reader.next("health")
        assert recovered.json()["status"] == "healthy"
        reader.until(event_has("BTCUSDT", "fundingRate", 0.0004))
    finally:
        reader.close()


# --- isolation: cap, slow and vanishing clients ---------------------------------------------------------------------


def test_streams_beyond_the_cap_get_503_json_with_retry_after_and_a_freed_slot_is_reused(stream_api, symbols):
    readers = [EventReader(stream_api.url("/funding/stream?symbols=BTCUSDT")) for _ in range(MAX_STREAMS)]
    try:
        for reader in readers:
            assert reader.status == 200
            reader.next("snapshot")
        assert metric(stream_api, "funding_api_streams_open") == MAX_STREAMS
        refused = stream_api.get("/funding/stream")
        body = assert_json_error(refused, 503)
        assert body["error"] == "too_many_streams" and int(refused.header("retry-after")) > 0
        # Ordinary requests are not affected by the streams.
        assert stream_api.get("/funding/BTCUSDT").status == 200
        readers.pop().close()
        write_state(stream_api.state_file, changed(symbols, "BTCUSDT", 0.0002))  # the closed one notices on writing
        assert wait_until(lambda: metric(stream_api, "funding_api_streams_open") == MAX_STREAMS - 1)
        extra = EventReader(stream_api.url("/funding/stream?symbols=BTCUSDT"))
        readers.append(extra)
        assert extra.status == 200 and extra.next("snapshot")
    finally:
        for reader in readers:
            reader.close()
    assert metric(stream_api, "funding_api_streams_refused_total") >= 1


def open_raw_stream(port: int, receive_buffer: int = 4096) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /funding/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    return sock


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout_while_others_keep_getting_updates(
    stream_api, symbols
):
    dropped_before = metric(stream_api, "funding_api_stream_clients_dropped_total", reason="slow")
    stalled = open_raw_stream(stream_api.port)
    healthy = EventReader(stream_api.url("/funding/stream"))
    try:
        healthy.next("snapshot")
        # Every symbol changes ten times a second: far more than a 4 KiB receive buffer holds.
        current = symbols
        end = time.monotonic() + SEND_TIMEOUT * 4
        step = 0
        while time.monotonic() < end:
            step += 1
            stamp = time.time()
            current = {s: dict(r, markPrice=r["markPrice"] + step, updatedAt=stamp) for s, r in current.items()}
            write_state(stream_api.state_file, current)
            time.sleep(0.1)
            if metric(stream_api, "funding_api_stream_clients_dropped_total", reason="slow") > dropped_before:
                break
        assert wait_until(
            lambda: metric(stream_api, "funding_api_stream_clients_dropped_total", reason="slow") == dropped_before + 1
        )
        # The healthy client still gets the newest value.
        last_price = current["BTCUSDT"]["markPrice"]
        healthy.until(event_has("BTCUSDT", "markPrice", last_price), deadline=5.0)
        # The stalled connection was reset: reading it ends (after what was already in its buffer).
        stalled.settimeout(10)
        with pytest.raises((ConnectionResetError, AssertionError)):
            while stalled.recv(65536):
                pass
            raise AssertionError("closed")
    finally:
        stalled.close()
        healthy.close()
    assert wait_until(lambda: metric(stream_api, "funding_api_streams_open") == 0)


def test_a_client_that_disconnects_mid_event_costs_nothing(stream_api, symbols):
    errors_before = metric(stream_api, "funding_api_stream_clients_dropped_total", reason="error")
    for _ in range(5):
        sock = open_raw_stream(stream_api.port, receive_buffer=65536)
        assert sock.recv(100)  # part of the headers or of the snapshot event
        sock.close()
    assert wait_until(lambda: metric(stream_api, "funding_api_streams_open") == 0)
    assert metric(stream_api, "funding_api_stream_clients_dropped_total", reason="error") == errors_before
    reader = EventReader(stream_api.url("/funding/stream?symbols=BTCUSDT"))
    try:
        assert reader.next("snapshot")
    finally:
        reader.close()
    assert "Traceback" not in stream_api.log()


def test_metrics_count_open_streams_and_events_by_type(stream_api, symbols):
    snapshots = metric(stream_api, "funding_api_stream_events_total", event="snapshot")
    updates = metric(stream_api, "funding_api_stream_events_total", event="update")
    reader = EventReader(stream_api.url("/funding/stream?symbols=ETHUSDT"))
    try:
        reader.next("snapshot")
        assert metric(stream_api, "funding_api_streams_open") == 1
        write_state(stream_api.state_file, changed(symbols, "ETHUSDT", 0.0003))
        reader.until(event_has("ETHUSDT", "fundingRate", 0.0003))
        assert metric(stream_api, "funding_api_stream_events_total", event="snapshot") == snapshots + 1
        assert metric(stream_api, "funding_api_stream_events_total", event="update") == updates + 1
    finally:
        reader.close()
