"""funding_api_stream in-process: filters, versions and resume, coalescing, heartbeats and health transitions,
with a fake transport on a real event loop (timings shrunk through StreamConfig)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from funding_api_metrics import SharedCounters
from funding_api_stream import (
    FilterError,
    StreamClient,
    StreamConfig,
    StreamFilters,
    StreamHub,
    format_event,
    health_key,
    parse_event_id,
    parse_filters,
    send_now,
)
from funding_api_view import StateViews
from funding_state import StateReader
from test_api_support import fresh_symbols, write_state


class Transport:
    def __init__(self) -> None:
        self.chunks: List[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.chunks.append(data)

    def events(self) -> List[Dict[str, str]]:
        parsed = []
        for block in b"".join(self.chunks).decode().split("\n\n"):
            fields: Dict[str, str] = {}
            for line in block.splitlines():
                name, _, value = line.partition(": ")
                fields[name] = value
            if fields:
                parsed.append(fields)
        return parsed


def make_hub(path: Path, **config: Any) -> StreamHub:
    views = StateViews(StateReader(str(path)))
    health = {"status": "healthy", "reasons": []}

    def probe(view: Any, snapshot: Any) -> Dict[str, Any]:
        if snapshot.error:
            return {"status": "unhealthy", "reasons": ["state_file: " + snapshot.error]}
        return dict(health)

    return StreamHub(views, StreamConfig(**config), SharedCounters(), probe)


def rewrite(hub: StreamHub, path: Path, symbols: Dict[str, Dict[str, Any]]) -> None:
    write_state(path, symbols, now=time.time())
    hub.views.refresh()
    hub.poll()


def test_parse_filters_accepts_every_filter_and_normalises_case():
    filters = parse_filters("symbols=btcusdt,ETHUSDT&symbols=solusdc&quote=usdt&contractType=perpetual"
                            "&minAbsFundingRate=0.0005")
    assert filters == StreamFilters(frozenset({"BTCUSDT", "ETHUSDT", "SOLUSDC"}), "USDT", "PERPETUAL", 0.0005)
    assert parse_filters("") == StreamFilters()


@pytest.mark.parametrize("query", ["x=1", "quote=", "minAbsFundingRate=2", "minAbsFundingRate=inf",
                                   "symbols=%FF", "contractType=A&contractType=B", "q" * 50000])
def test_parse_filters_refuses_unknown_or_malformed_input(query):
    with pytest.raises(FilterError):
        parse_filters(query)


@pytest.mark.parametrize("text, expected", [("v12", 12), (" v12 ", 12), ("12", None), ("v", None), (None, None),
                                            ("v1x", None), ("v" + "9" * 21, None)])
def test_event_ids_are_ours_only_when_they_read_v_and_a_number(text, expected):
    assert parse_event_id(text) == expected


def test_health_transitions_depend_on_status_and_reason_codes_not_on_changing_numbers():
    first = {"status": "unhealthy", "reasons": ["stale: newest data is 200.1 s old"]}
    later = {"status": "unhealthy", "reasons": ["stale: newest data is 250.7 s old"]}
    assert health_key(first) == health_key(later)
    assert health_key(first) != health_key({"status": "unhealthy", "reasons": ["state_file: corrupt", "stale: x"]})


def test_format_event_carries_kind_id_and_one_data_line():
    assert format_event("update", 7, b'{"a":1}') == b'event: update\nid: v7\ndata: {"a":1}\n\n'


def test_changes_since_an_id_cover_every_later_version_and_an_unknown_id_is_not_resumable(tmp_path):
    path = tmp_path / "state.json"
    symbols = fresh_symbols()
    write_state(path, symbols)
    hub = make_hub(path)
    hub.poll()
    first = hub.current_id
    symbols["BTCUSDT"] = dict(symbols["BTCUSDT"], fundingRate=0.001)
    rewrite(hub, path, symbols)
    second = hub.current_id
    del symbols["SOLUSDC"]
    rewrite(hub, path, symbols)
    changed, removed = hub.changes_since(first)
    assert "BTCUSDT" in changed and removed == {"SOLUSDC"}
    changed, removed = hub.changes_since(second)
    assert "BTCUSDT" not in changed and removed == {"SOLUSDC"}
    assert hub.changes_since(hub.current_id) == ({}, set())
    assert hub.changes_since(first - 10_000_000) is None  # older than anything kept
    assert hub.changes_since(hub.current_id + 1) is None  # from the future: not ours


def run_client(hub: StreamHub, filters: StreamFilters, scenario: Any, resume_from: Optional[int] = None) -> Transport:
    transport = Transport()

    async def main() -> None:
        hub.start(asyncio.get_running_loop())
        client = StreamClient(hub, filters, transport, None)
        hub.clients.add(client)
        task = asyncio.ensure_future(client.run(resume_from))
        await scenario(client)
        client.disconnected()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    return transport


def test_changes_within_the_coalescing_window_reach_the_client_as_one_event_with_the_last_value(tmp_path):
    path = tmp_path / "state.json"
    symbols = fresh_symbols()
    write_state(path, symbols)
    hub = make_hub(path, coalesce_seconds=0.3)

    async def scenario(client: StreamClient) -> None:
        await asyncio.sleep(0.35)  # BTCUSDT may be sent again
        for step in range(1, 6):
            symbols["BTCUSDT"] = dict(symbols["BTCUSDT"], fundingRate=step * 1e-4)
            rewrite(hub, path, symbols)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)

    events = run_client(hub, StreamFilters(symbols=frozenset({"BTCUSDT"})), scenario).events()
    assert [e["event"] for e in events] == ["snapshot", "update", "update"]
    assert '"fundingRate":0.0001' in events[1]["data"] and '"fundingRate":0.0005' in events[2]["data"]


def test_a_quiet_stream_gets_a_heartbeat_comment(tmp_path):
    path = tmp_path / "state.json"
    write_state(path, fresh_symbols())
    hub = make_hub(path, heartbeat_seconds=0.1)

    async def scenario(client: StreamClient) -> None:
        await asyncio.sleep(0.35)

    transport = run_client(hub, StreamFilters(symbols=frozenset({"BTCUSDT"})), scenario)
    assert b"".join(transport.chunks).count(b": keepalive\n\n") >= 2


def test_a_corrupt_state_file_sends_one_health_event_and_recovery_another(tmp_path):
    path = tmp_path / "state.json"
    symbols = fresh_symbols()
    write_state(path, symbols)
    hub = make_hub(path)

    async def scenario(client: StreamClient) -> None:
        await asyncio.sleep(0.05)
        for garbage in (b"{", b"not json"):
            path.write_bytes(garbage)
            hub.views.refresh()
            hub.poll()
            await asyncio.sleep(0.05)
        rewrite(hub, path, symbols)
        await asyncio.sleep(0.05)

    events = run_client(hub, StreamFilters(), scenario).events()
    health = [e for e in events if e.get("event") == "health"]
    assert len(health) == 2
    assert '"status":"unhealthy"' in health[0]["data"] and '"status":"healthy"' in health[1]["data"]


def test_resume_sends_only_what_changed_after_the_id_without_a_snapshot(tmp_path):
    path = tmp_path / "state.json"
    symbols = fresh_symbols()
    write_state(path, symbols)
    hub = make_hub(path)
    hub.poll()
    since = hub.current_id
    symbols["ETHUSDT"] = dict(symbols["ETHUSDT"], fundingRate=0.0042)
    rewrite(hub, path, symbols)

    async def scenario(client: StreamClient) -> None:
        await asyncio.sleep(0.1)

    events = run_client(hub, StreamFilters(), scenario, resume_from=since).events()
    kinds = [e.get("event") for e in events if "event" in e]
    assert kinds == ["update"]
    assert '"ETHUSDT"' in events[-1]["data"] and '"BTCUSDT"' not in events[-1]["data"]


def test_a_send_is_done_on_the_spot_and_a_closed_stream_says_so():
    sent: List[bytes] = []

    class Queueing:  # Granian 2.5: the bytes are queued at once, the awaitable is already done
        async def send_bytes(self, data: bytes) -> None:
            sent.append(data)

    class Closed:  # Granian's "stream closed", raised when the awaitable is awaited
        async def send_bytes(self, data: bytes) -> None:
            raise RuntimeError("stream closed")

    failures: List[int] = []
    assert send_now(Queueing(), b"event", lambda: failures.append(1)) is True
    assert sent == [b"event"]
    assert send_now(Closed(), b"event", lambda: failures.append(1)) is False
    assert failures == []


def test_a_send_that_does_not_finish_at_once_is_left_to_the_loop_and_a_failure_there_is_reported():
    failures: List[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pending: List[asyncio.Future] = []

        class Waiting:
            def send_bytes(self, data: bytes) -> asyncio.Future:
                future = loop.create_future()
                pending.append(future)
                return future

        assert send_now(Waiting(), b"first", lambda: failures.append("first")) is True
        assert send_now(Waiting(), b"second", lambda: failures.append("second")) is True
        pending[0].set_result(None)
        pending[1].set_exception(RuntimeError("stream closed"))
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert failures == ["second"]
