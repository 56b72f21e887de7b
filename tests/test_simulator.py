"""The simulated exchange behaves like Binance's USDⓈ-M mark-price feed and REST, and its faults do what they say."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Callable, Dict, List, Optional

import pytest
import websocket  # websocket-client, what many Binance consumers use
from binance_sim_faults import FaultError, FaultState, parse_fault_flag
from binance_sim_market import Market, build_universe, next_funding_time_ms
from binance_simulator import OPTIONS, is_loopback
from sim_client import FAST_ARGS, SIMULATOR_SCRIPT, SimulatorClient, start_simulator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

DECIMAL_TEXT = re.compile(r"^-?\d+\.\d{8}$")
NAMED_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "DOGEUSDT", "XRPUSDT", "BTCUSDC", "XAUUSDT", "TSLAUSDT",
                 "BTCUSDT_260925", "1000PEPEUSDT")
DEADLINE = 20.0


# --- helpers --------------------------------------------------------------------------------------------------------


def run(coroutine: Any, timeout: float = 60.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


def decode(message: Any) -> Any:
    return json.loads(message)


def items_of(frame: Any) -> List[Dict[str, Any]]:
    return frame["data"] if isinstance(frame, dict) else frame


async def frames(url: str, count: int, timeout: float = DEADLINE) -> List[Any]:
    async with connect(url, max_size=None) as ws:
        return [decode(await asyncio.wait_for(ws.recv(), timeout)) for _ in range(count)]


async def status_of(client: SimulatorClient) -> Dict[str, Any]:
    return await asyncio.get_running_loop().run_in_executor(None, client.status)


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.get_running_loop().run_in_executor(None, predicate)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def status_when(client: SimulatorClient, condition: Callable[[Dict[str, Any]], bool]) -> Callable[[], Any]:
    """A predicate for poll/wait_until: the status once `condition(status)` holds."""

    def check() -> Optional[Dict[str, Any]]:
        status = client.status()
        return status if condition(status) else None

    return check


def poll(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def expect_closed(ws: Any, timeout: float = DEADLINE) -> Optional[int]:
    """Read until the connection closes; returns the close code the client saw (1006 when abrupt)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(ws.recv(), 1.0)
        except asyncio.TimeoutError:
            continue
        except ConnectionClosed as closed:
            received = closed.rcvd
            return received.code if received is not None else 1006
    raise AssertionError("connection was not closed")


def frozen_snapshot(client: SimulatorClient) -> Dict[str, Dict[str, Any]]:
    client.set_fault("freeze")
    return client.symbols()


def raw_get(client: SimulatorClient, path: str) -> tuple:
    return client.request("GET", path)


@pytest.fixture(scope="module")
def shared_simulator(tmp_path_factory):
    """One fast simulator for the read-only tests of this module (no faults set on it)."""
    with start_simulator(FAST_ARGS, log_dir=tmp_path_factory.mktemp("shared-simulator")) as running:
        yield running.client


# --- command line ---------------------------------------------------------------------------------------------------


def test_help_lists_every_flag_and_its_environment_variable_and_exits_zero():
    result = subprocess.run([sys.executable, str(SIMULATOR_SCRIPT), "--help"], check=False, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for flag, variable, _default, _kind, _text in OPTIONS:
        assert flag in result.stdout
        assert variable in result.stdout
    assert "--fault" in result.stdout and "SIM_FAULTS" in result.stdout
    for name in ("drop", "stall", "refuse", "malformed", "poison", "rotate", "rest_outage", "rest_skew",
                 "rest_garbage"):
        assert name in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "complaint"),
    [
        (["--push-interval", "-1"], {}, "--push-interval"),
        (["--fault", "meltdown"], {}, "meltdown"),
        (["--fault", "rest_skew=lots"], {}, "percent"),
        ([], {"SIM_PORT": "ninety"}, "--port"),
        ([], {"SIM_FAULTS": "stall,bogus"}, "bogus"),
    ],
)
def test_bad_configuration_exits_2_with_a_message_and_no_traceback(args, env, complaint):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SIM_")}
    environment.update(env)
    result = subprocess.run([sys.executable, str(SIMULATOR_SCRIPT), *args], check=False, capture_output=True, text=True,
                            env=environment, timeout=30)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_and_sim_environment_variables_configure_the_simulator(simulator_factory):
    running = simulator_factory(
        "--fault", "stall", "--fault", "rest_skew=5",
        env={"SIM_FAULTS": "refuse", "SIM_SYMBOLS": "150", "SIM_PUSH_INTERVAL": "0.3", "SIM_SEED": "7"},
        fast=False,
    )
    status = running.client.status()
    assert status["faults"] == {"refuse": {}, "rest_skew": {"percent": 5.0}, "stall": {}}
    assert status["symbolCount"] == 150
    assert status["seed"] == 7
    assert status["config"]["pushInterval"] == 0.3
    assert status["config"]["pingInterval"] == 180.0
    assert status["config"]["connectionLifetime"] == 86400.0


def test_sigterm_closes_connections_and_exits_zero(tmp_path):
    running = start_simulator(FAST_ARGS, log_dir=tmp_path)
    try:
        async def scenario() -> Optional[int]:
            async with connect(running.client.ws_url("ws"), max_size=None) as ws:
                await ws.recv()
                running.process.terminate()
                return await expect_closed(ws)

        assert run(scenario()) == 1001
        assert running.process.wait(10) == 0
        log = running.client.log_text()
        assert "stopped" in log and "Traceback" not in log
    finally:
        running.stop()


# --- stream shape ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True], ids=["arr", "arr@1s"])
def test_combined_path_sends_stream_wrapped_markprice_arrays(shared_simulator, fast):
    received = run(frames(shared_simulator.ws_url("stream", fast), 3))
    name = "!markPrice@arr@1s" if fast else "!markPrice@arr"
    for frame in received:
        assert set(frame) == {"stream", "data"}
        assert frame["stream"] == name
        assert isinstance(frame["data"], list) and frame["data"]
        assert {item["e"] for item in frame["data"]} == {"markPriceUpdate"}


@pytest.mark.parametrize("fast", [False, True], ids=["arr", "arr@1s"])
def test_raw_path_sends_bare_markprice_arrays(shared_simulator, fast):
    for frame in run(frames(shared_simulator.ws_url("ws", fast), 3)):
        assert isinstance(frame, list) and frame
        assert {item["e"] for item in frame} == {"markPriceUpdate"}


def test_fast_stream_is_pushed_more_often_than_the_slow_one(shared_simulator):
    before = shared_simulator.status()["pushes"]
    after = poll(status_when(shared_simulator, lambda s: s["pushes"]["slow"] >= before["slow"] + 10),
                 "ten slow pushes")["pushes"]
    assert after["fast"] - before["fast"] > after["slow"] - before["slow"]


def test_items_carry_binance_fields_as_strings_and_integer_times(shared_simulator):
    received = run(frames(shared_simulator.ws_url("ws", True), 2))
    items = [item for frame in received for item in frame]
    for item in items:
        assert isinstance(item["E"], int) and isinstance(item["T"], int)
        assert isinstance(item["s"], str)
        for key in ("p", "P"):
            assert DECIMAL_TEXT.match(item[key]), item
            assert float(item[key]) > 0
        assert item["r"] == "" or DECIMAL_TEXT.match(item["r"]), item
        assert "ap" in item and "st" in item  # undocumented extra keys, like 2026 frames
    with_index = [item for item in items if "i" in item]
    assert all(DECIMAL_TEXT.match(item["i"]) for item in with_index)
    assert 0 < len(items) - len(with_index) < 20, "a few symbols omit the index price"


def test_two_consecutive_pushes_are_partial_shards_covering_every_array_symbol(shared_simulator):
    every_symbol = set(shared_simulator.universe()["arraySymbols"])
    for fast in (False, True):
        first, second = run(frames(shared_simulator.ws_url("ws", fast), 2))
        first_symbols = {item["s"] for item in first}
        second_symbols = {item["s"] for item in second}
        assert first_symbols | second_symbols == every_symbol
        assert first_symbols != every_symbol and second_symbols != every_symbol


def test_dated_contracts_carry_no_funding_in_stream_rest_and_sim_symbols(shared_simulator):
    received = run(frames(shared_simulator.ws_url("ws"), 2))
    dated = [item for frame in received for item in frame if "_" in item["s"] and item["st"] == 1]
    assert dated
    assert {item["r"] for item in dated} == {"", "0.00000000"}
    assert {item["T"] for item in dated} == {0}
    rest = {entry["symbol"]: entry for entry in shared_simulator.premium_index()}
    known = shared_simulator.symbols()
    for item in dated:
        assert rest[item["s"]]["lastFundingRate"] == ""
        assert rest[item["s"]]["nextFundingTime"] == 0
        assert known[item["s"]]["perpetual"] is False
        assert known[item["s"]]["fundingRate"] is None
    assert not any(known[s]["perpetual"] for s in known if "_" in s), "no dated contract or COIN-M row is served"


def test_universe_has_about_870_realistic_contracts(shared_simulator):
    known = shared_simulator.symbols()
    status = shared_simulator.status()
    assert all(v["listed"] for v in known.values()), "COIN-M rows only with include_coin_m"
    assert len(known) == status["symbolCount"] == 872
    assert set(shared_simulator.symbols(include_coin_m=True)) - set(known) == {"BTCUSD_PERP", "ETHUSD_PERP",
                                                                                "BNBUSD_PERP"}
    assert status["perpetualCount"] == sum(1 for values in known.values() if values["perpetual"])
    for symbol in NAMED_SYMBOLS:
        assert symbol in known
    assert 60_000 < known["BTCUSDT"]["markPrice"] < 130_000
    assert 0.07 < known["DOGEUSDT"]["markPrice"] < 0.35
    assert sum(1 for s in known if s.startswith("1000")) >= 5
    assert sum(1 for s, v in known.items() if v["quoteAsset"] == "USDC" and v["perpetual"]) >= 10
    perpetuals = {s: v for s, v in known.items() if v["perpetual"]}
    rates = sorted(v["fundingRate"] for v in perpetuals.values())
    assert 0.00004 <= rates[len(rates) // 2] <= 0.0002, "median funding rate near 0.01 %"
    assert sum(1 for rate in rates if rate < 0) >= 10
    assert all(abs(rate) <= 0.03 for rate in rates)
    assert {v["fundingIntervalHours"] for v in perpetuals.values()} == {1, 4, 8}
    for values in perpetuals.values():
        period = values["fundingIntervalHours"] * 3_600_000
        assert values["nextFundingTime"] % period == 0
        assert values["eventTime"] < values["nextFundingTime"] <= values["eventTime"] + period


# --- market model (in process) --------------------------------------------------------------------------------------


def test_same_seed_builds_the_same_universe_and_another_seed_a_different_one():
    first = [(spec.symbol, spec.base_price, spec.funding_interval_hours) for spec in build_universe(3, 700)]
    again = [(spec.symbol, spec.base_price, spec.funding_interval_hours) for spec in build_universe(3, 700)]
    other = [(spec.symbol, spec.base_price, spec.funding_interval_hours) for spec in build_universe(4, 700)]
    assert first == again
    assert first != other
    assert len({symbol for symbol, _, _ in first}) == 700 + 3, "700 contracts and the three COIN-M rows"


def test_next_funding_time_rolls_over_when_the_boundary_is_reached():
    boundary = 1_790_000_000_000 // (8 * 3_600_000) * (8 * 3_600_000) + 8 * 3_600_000
    market = Market(seed=1, symbol_count=200, now_ms=boundary - 1_000)
    btc = market.quotes["BTCUSDT"]
    assert btc.next_funding_time == boundary
    shard = market.specs["BTCUSDT"].shard
    market.tick(shard, boundary)
    assert btc.next_funding_time == boundary + 8 * 3_600_000
    assert next_funding_time_ms(boundary - 1, 4) == boundary
    assert next_funding_time_ms(boundary, 1) == boundary + 3_600_000


def test_random_walk_keeps_prices_positive_near_their_level_and_rates_within_caps():
    market = Market(seed=9, symbol_count=300, now_ms=1_790_000_000_000)
    for step in range(2_000):
        market.tick(step % market.shard_count, 1_790_000_000_000 + step * 1000)
    for symbol, spec in market.specs.items():
        quote = market.quotes[symbol]
        assert quote.mark > 0 and math.isfinite(quote.mark)
        assert 0.5 < quote.mark / spec.base_price < 2.0
        assert abs(quote.index / quote.mark - 1) < 0.01
        if spec.funded:
            assert abs(quote.rate) <= spec.funding_cap + 1e-12


def test_freeze_stops_the_market_but_not_the_clock_of_ticks():
    market = Market(seed=2, symbol_count=120, now_ms=1_790_000_000_000)
    before = market.snapshot()
    market.frozen = True
    market.tick(0, 1_790_000_005_000)
    market.tick(1, 1_790_000_006_000)
    assert market.snapshot() == before
    assert market.ticks == 2


def test_fault_requests_are_validated():
    faults = FaultState()
    with pytest.raises(FaultError):
        faults.apply("meltdown", {})
    with pytest.raises(FaultError):
        faults.apply("rest_skew", {"percent": "NaN"})
    with pytest.raises(FaultError):
        faults.apply("drop", {"mode": "gently"})
    with pytest.raises(FaultError):
        faults.apply("stall", {"colour": "red"})
    assert faults.active == {}
    faults.apply("rest_skew", {"percent": "2.5"})
    assert faults.skew_percent == 2.5
    faults.apply("rest_skew", {"percent": 0})
    assert not faults.is_on("rest_skew")
    assert parse_fault_flag("rotate=30") == ("rotate", {"after": "30"})
    assert parse_fault_flag("stall=off") == ("stall", {"on": "off"})


def test_only_loopback_addresses_count_as_loopback():
    for address in (("127.0.0.1", 1), ("127.5.0.1", 1), ("::1", 1, 0, 0), ("::ffff:127.0.0.1", 1, 0, 0)):
        assert is_loopback(address), address
    for address in (("10.0.0.1", 1), ("192.168.1.20", 1), ("2001:db8::1", 1, 0, 0), ("not an ip", 1), None):
        assert not is_loopback(address), address


# --- REST -----------------------------------------------------------------------------------------------------------


def test_pushed_values_rest_and_sim_symbols_agree_exactly(fast_simulator):
    client = fast_simulator
    snapshot = frozen_snapshot(client)
    rest = {entry["symbol"]: entry for entry in client.premium_index()}

    async def pushed_after_freeze() -> Dict[str, Dict[str, Any]]:
        seen: Dict[str, Dict[str, Any]] = {}
        expected = {s for s, v in snapshot.items() if v["onArray"]}
        async with connect(client.ws_url("stream"), max_size=None) as ws:
            while len(seen) < len(expected):
                for item in decode(await asyncio.wait_for(ws.recv(), DEADLINE))["data"]:
                    if item["s"] in snapshot and item["E"] == snapshot[item["s"]]["eventTime"]:
                        seen[item["s"]] = item
        return seen

    pushed = run(pushed_after_freeze())
    universe = client.universe()
    assert set(pushed) == set(universe["arraySymbols"]) - set(universe["coinM"])
    assert set(rest) == {s for s, v in snapshot.items() if v["listed"]}
    for symbol in set(pushed) & set(rest):
        values, item, entry = snapshot[symbol], pushed[symbol], rest[symbol]
        assert float(item["p"]) == values["markPrice"] and entry["markPrice"] == item["p"]
        assert entry["estimatedSettlePrice"] == item["P"]
        if "i" in item:
            assert entry["indexPrice"] == item["i"]
        assert float(entry["indexPrice"]) == values["indexPrice"]
        assert item["T"] == entry["nextFundingTime"] == values["nextFundingTime"]
        assert entry["time"] == values["eventTime"]
        if values["perpetual"]:
            assert entry["lastFundingRate"] == item["r"] and float(item["r"]) == values["fundingRate"]
            assert entry["interestRate"] == "0.00010000"


def test_premium_index_for_one_symbol_has_binance_fields(shared_simulator):
    entry = shared_simulator.premium_index("BTCUSDT")
    assert list(entry) == ["symbol", "markPrice", "indexPrice", "estimatedSettlePrice", "lastFundingRate",
                           "interestRate", "nextFundingTime", "time"]
    assert entry["symbol"] == "BTCUSDT"
    assert all(isinstance(entry[key], str) for key in list(entry)[:6])
    assert isinstance(entry["nextFundingTime"], int) and isinstance(entry["time"], int)
    dated = shared_simulator.premium_index("BTCUSDT_260925")
    assert dated["lastFundingRate"] == "" and dated["nextFundingTime"] == 0


def test_rest_errors_look_like_binance(shared_simulator):
    status, headers, body = raw_get(shared_simulator, "/fapi/v1/premiumIndex?symbol=NOSUCHUSDT")
    assert status == 400 and json.loads(body) == {"code": -1121, "msg": "Invalid symbol."}
    assert headers["Content-Type"].startswith("application/json")
    status, _, body = raw_get(shared_simulator, "/fapi/v1/premiumIndex?symbol=")
    assert status == 400 and json.loads(body)["code"] == -1102
    status, _, body = raw_get(shared_simulator, "/fapi/v1/ping")
    assert status == 200 and json.loads(body) == {}
    assert raw_get(shared_simulator, "/fapi/v1/nothingHere")[0] == 404
    assert raw_get(shared_simulator, "/nowhere")[0] == 404


def test_funding_info_lists_only_symbols_with_non_default_intervals(shared_simulator):
    info = shared_simulator.funding_info()
    known = shared_simulator.symbols()
    expected = {s for s, v in known.items() if v["perpetual"] and v["fundingIntervalHours"] != 8}
    assert {entry["symbol"] for entry in info} == expected
    for entry in info:
        assert entry["fundingIntervalHours"] in (1, 4)
        assert entry["fundingIntervalHours"] == known[entry["symbol"]]["fundingIntervalHours"]
        assert float(entry["adjustedFundingRateCap"]) == -float(entry["adjustedFundingRateFloor"]) > 0
        assert DECIMAL_TEXT.match(entry["adjustedFundingRateCap"])


# --- connections ----------------------------------------------------------------------------------------------------


def test_unknown_websocket_path_is_refused_with_404(shared_simulator):
    async def attempt() -> int:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(shared_simulator.ws_base + "/market/nothing"):
                pass
        return refused.value.response.status_code

    assert run(attempt()) == 404


@pytest.mark.parametrize("kind", ["legacy-stream", "legacy-ws"])
def test_legacy_paths_accept_then_send_nothing_but_keep_the_socket_and_answer_pings(shared_simulator, kind):
    client = shared_simulator

    async def scenario() -> None:
        async with connect(client.ws_url(kind), max_size=None) as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["!markPrice@arr"], "id": 7}))
            assert decode(await asyncio.wait_for(ws.recv(), DEADLINE)) == {"result": None, "id": 7}
            start = (await status_of(client))["pushes"]
            while True:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.3)
                pushes = (await status_of(client))["pushes"]
                if pushes["slow"] >= start["slow"] + 4 and pushes["fast"] >= start["fast"] + 4:
                    break
            pong = await ws.ping()
            await asyncio.wait_for(pong, DEADLINE)
            label = "/stream" if kind == "legacy-stream" else "/ws"
            assert (await status_of(client))["connections"]["byPath"].get(label) == 1

    run(scenario())


def test_bare_market_ws_path_delivers_after_a_live_subscribe(shared_simulator):
    async def scenario() -> None:
        async with connect(shared_simulator.ws_base + "/market/ws", max_size=None) as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["!markPrice@arr@1s"], "id": 1}))
            assert decode(await asyncio.wait_for(ws.recv(), DEADLINE)) == {"result": None, "id": 1}
            frame = decode(await asyncio.wait_for(ws.recv(), DEADLINE))
            assert isinstance(frame, list) and frame[0]["e"] == "markPriceUpdate"
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
            while True:
                message = decode(await asyncio.wait_for(ws.recv(), DEADLINE))
                if isinstance(message, dict):
                    assert message == {"result": ["!markPrice@arr@1s"], "id": 2}
                    break

    run(scenario())


def test_websocket_client_library_consumes_the_raw_stream(shared_simulator):
    ws = websocket.create_connection(shared_simulator.ws_url("ws"), timeout=DEADLINE)
    try:
        frame = json.loads(ws.recv())
        assert isinstance(frame, list) and frame[0]["e"] == "markPriceUpdate"
    finally:
        ws.close()


def test_server_pings_at_the_configured_interval(simulator_factory):
    client = simulator_factory("--ping-interval", "0.3").client
    ws = websocket.create_connection(client.ws_url("legacy-ws"), timeout=DEADLINE)
    try:
        opcode, _ = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PING
    finally:
        ws.close()


def _raw_handshake(client: SimulatorClient, path: str) -> socket.socket:
    sock = socket.create_connection((client.host, client.port), timeout=DEADLINE)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "closed during handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_client_that_never_answers_pings_is_dropped_after_the_pong_timeout(simulator_factory):
    client = simulator_factory("--ping-interval", "0.3", "--ping-timeout", "0.5").client
    sock = _raw_handshake(client, "/ws/!markPrice@arr")  # never reads, so never pongs
    try:
        poll(lambda: client.status()["connections"]["total"] == 0 and client.status()["connectionsOpened"] == 1,
             "the silent client to be dropped")
        assert client.status()["connectionsClosed"] == {"keepalive": 1}
        assert "keepalive ping timeout" in client.log_text()
    finally:
        sock.close()


def test_connections_are_closed_when_their_lifetime_ends(simulator_factory):
    client = simulator_factory("--connection-lifetime", "1").client

    async def scenario() -> Optional[int]:
        async with connect(client.ws_url("stream"), max_size=None) as ws:
            return await expect_closed(ws)

    assert run(scenario()) == 1001
    assert client.status()["connectionsClosed"].get("lifetime") == 1


def test_status_counts_open_connections_by_path(fast_simulator):
    async def scenario() -> Dict[str, Any]:
        async with connect(fast_simulator.ws_url("stream"), max_size=None), \
                connect(fast_simulator.ws_url("ws", True), max_size=None), \
                connect(fast_simulator.ws_url("legacy-stream")):
            return await wait_until(
                status_when(fast_simulator, lambda s: s["connections"]["total"] == 3), "three connections")

    status = run(scenario())
    assert status["connections"]["byPath"] == {"/market/stream": 1, "/market/ws/!markPrice@arr@1s": 1, "/stream": 1}


# --- faults ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "expected_code"), [("abrupt", 1006), ("close", 1001)])
def test_drop_closes_every_open_connection_once(fast_simulator, mode, expected_code):
    client = fast_simulator

    async def scenario() -> None:
        async with connect(client.ws_url("stream"), max_size=None) as data, \
                connect(client.ws_url("legacy-ws")) as legacy:
            await data.recv()
            await wait_until(lambda: client.status()["connections"]["total"] == 2, "two connections")
            await asyncio.get_running_loop().run_in_executor(None, lambda: client.set_fault("drop", mode=mode))
            assert await expect_closed(data) == expected_code
            assert await expect_closed(legacy) == expected_code
        assert (await status_of(client))["faults"] == {}
        async with connect(client.ws_url("ws"), max_size=None) as again:  # one-shot: new connections work
            assert isinstance(decode(await again.recv()), list)

    run(scenario())
    assert client.status()["connectionsClosed"]["drop"] == 2


def test_stall_keeps_sockets_open_without_data_while_pings_and_rest_still_work(fast_simulator):
    client = fast_simulator

    async def scenario() -> None:
        async with connect(client.ws_url("ws", True), max_size=None) as ws:
            await ws.recv()
            await asyncio.get_running_loop().run_in_executor(None, lambda: client.set_fault("stall"))
            stalled_at_ms = int(time.time() * 1000)
            ticks = (await status_of(client))["marketTicks"]
            while (await status_of(client))["marketTicks"] < ticks + 5:
                try:
                    frame = decode(await asyncio.wait_for(ws.recv(), 0.2))
                except asyncio.TimeoutError:
                    continue
                assert max(item["E"] for item in frame) <= stalled_at_ms, "data frame pushed during a stall"
            await asyncio.wait_for(await ws.ping(), DEADLINE)
            assert client.ping()
            await asyncio.get_running_loop().run_in_executor(None, lambda: client.set_fault("stall", on=False))
            frame = decode(await asyncio.wait_for(ws.recv(), DEADLINE))
            while max(item["E"] for item in frame) <= stalled_at_ms:
                frame = decode(await asyncio.wait_for(ws.recv(), DEADLINE))

    run(scenario())


def test_refuse_rejects_new_handshakes_with_503_but_keeps_existing_connections(fast_simulator):
    client = fast_simulator

    async def scenario() -> None:
        async with connect(client.ws_url("stream"), max_size=None) as existing:
            await existing.recv()
            await asyncio.get_running_loop().run_in_executor(None, lambda: client.set_fault("refuse"))
            with pytest.raises(InvalidStatus) as refused:
                async with connect(client.ws_url("stream")):
                    pass
            assert refused.value.response.status_code == 503
            decode(await asyncio.wait_for(existing.recv(), DEADLINE))
            assert client.ping()
            await asyncio.get_running_loop().run_in_executor(None, client.clear)
            async with connect(client.ws_url("stream"), max_size=None) as again:
                assert decode(await again.recv())["data"]

    run(scenario())
    assert client.status()["handshakesRefused"] == 1


def _classify(message: Any) -> str:
    if isinstance(message, bytes):
        return "binary"
    try:
        payload = json.loads(message)
    except (ValueError, RecursionError):
        return "invalid json"
    data = payload.get("data") if isinstance(payload, dict) and "stream" in payload else payload
    if isinstance(data, list):
        return "list"
    return "non-list payload"


@pytest.mark.parametrize("kind", ["stream", "ws"])
def test_malformed_adds_invalid_json_binary_and_non_list_frames_beside_good_ones(fast_simulator, kind):
    fast_simulator.set_fault("malformed")

    async def scenario() -> set:
        seen: set = set()
        async with connect(fast_simulator.ws_url(kind, True), max_size=None) as ws:
            for _ in range(200):
                seen.add(_classify(await asyncio.wait_for(ws.recv(), DEADLINE)))
                if seen == {"binary", "invalid json", "list", "non-list payload"}:
                    break
        return seen

    assert run(scenario()) == {"binary", "invalid json", "list", "non-list payload"}


def test_poison_items_and_oversized_frames_appear_but_never_move_rest_prices(fast_simulator):
    client = fast_simulator
    before = frozen_snapshot(client)
    rest_before = client.premium_index()
    client.set_fault("poison", oversize_every=1)

    async def scenario() -> Dict[str, Any]:
        findings: Dict[str, Any] = {"ticker": 0, "nan": 0, "no symbol": 0, "overlong": 0, "typed": 0,
                                    "largest": 0, "genuine": set()}
        async with connect(client.ws_url("stream", True), max_size=None) as ws:
            for _ in range(12):
                message = await asyncio.wait_for(ws.recv(), DEADLINE)
                findings["largest"] = max(findings["largest"], len(message))
                for item in json.loads(message)["data"]:
                    if not isinstance(item, dict):
                        continue
                    if item.get("e") == "24hrTicker":
                        findings["ticker"] += 1
                        assert item.get("s") in before or item.get("s") is None
                    elif "s" not in item:
                        findings["no symbol"] += 1
                    elif not isinstance(item["s"], str):
                        findings["typed"] += 1
                    elif item.get("p") == "NaN":
                        findings["nan"] += 1
                    elif isinstance(item.get("s"), str) and len(item["s"]) > 100:
                        findings["overlong"] += 1
                    elif isinstance(item.get("p"), (list, dict, bool)):
                        findings["typed"] += 1
                    elif item.get("s") in before and item.get("e") == "markPriceUpdate":
                        genuine = before[item["s"]]
                        if item["E"] == genuine["eventTime"] and item["p"] == "%.8f" % genuine["markPrice"]:
                            findings["genuine"].add(item["s"])
        return findings

    findings = run(scenario())
    assert findings["ticker"] and findings["nan"] and findings["no symbol"] and findings["overlong"]
    assert findings["typed"]
    assert findings["largest"] > 1_000_000
    assert findings["genuine"], "genuine items still travel in poisoned pushes"
    assert client.premium_index() == rest_before
    assert client.symbols() == before


def test_rotate_after_closes_connections_reaching_that_age_until_cleared(fast_simulator):
    client = fast_simulator
    client.set_fault("rotate", after=0.5)

    async def one_connection() -> Optional[int]:
        async with connect(client.ws_url("stream"), max_size=None) as ws:
            return await expect_closed(ws)

    assert run(one_connection()) == 1001
    assert run(one_connection()) == 1001, "connections opened after the fault are rotated too"
    assert client.status()["connectionsClosed"]["rotate"] == 2
    client.clear()

    async def survives() -> None:
        async with connect(client.ws_url("ws"), max_size=None) as ws:
            ticks = (await status_of(client))["marketTicks"]
            while (await status_of(client))["marketTicks"] < ticks + 10:
                await asyncio.wait_for(ws.recv(), DEADLINE)

    run(survives())


def test_rotate_without_age_closes_current_connections_once(fast_simulator):
    client = fast_simulator

    async def scenario() -> None:
        async with connect(client.ws_url("stream"), max_size=None) as ws:
            await ws.recv()
            await asyncio.get_running_loop().run_in_executor(None, lambda: client.set_fault("rotate"))
            assert await expect_closed(ws) == 1001
        async with connect(client.ws_url("stream"), max_size=None) as again:
            for _ in range(5):
                await asyncio.wait_for(again.recv(), DEADLINE)

    run(scenario())
    assert client.status()["faults"] == {}


def test_rest_outage_answers_503_html_everywhere_but_control_until_cleared(fast_simulator):
    client = fast_simulator
    client.set_fault("rest_outage")
    for path in ("/fapi/v1/ping", "/fapi/v1/premiumIndex", "/fapi/v1/premiumIndex?symbol=BTCUSDT",
                 "/fapi/v1/fundingInfo"):
        status, headers, body = raw_get(client, path)
        assert status == 503 and headers["Content-Type"].startswith("text/html") and b"<html" in body
    assert client.status()["faults"] == {"rest_outage": {}}
    client.clear()
    assert client.ping()


def test_rest_garbage_answers_200_with_a_body_that_is_not_json(fast_simulator):
    client = fast_simulator
    client.set_fault("rest_garbage")
    status, _, body = raw_get(client, "/fapi/v1/premiumIndex?symbol=BTCUSDT")
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(body)
    client.set_fault("rest_garbage", on=False)
    assert client.premium_index("BTCUSDT")["symbol"] == "BTCUSDT"


def test_rest_skew_moves_rest_mark_prices_by_the_percentage_and_zero_turns_it_off(fast_simulator):
    client = fast_simulator
    snapshot = frozen_snapshot(client)
    client.set_fault("rest_skew", percent=10)
    skewed = {entry["symbol"]: entry for entry in client.premium_index()}
    for symbol in ("BTCUSDT", "ETHUSDT", "DOGEUSDT", "XAUUSDT"):
        assert float(skewed[symbol]["markPrice"]) == pytest.approx(snapshot[symbol]["markPrice"] * 1.1, rel=1e-4)
        assert float(skewed[symbol]["indexPrice"]) == snapshot[symbol]["indexPrice"]
    assert client.symbols() == snapshot, "the skew is a REST lie; the market is unchanged"
    client.set_fault("rest_skew", percent=0)
    assert "rest_skew" not in client.status()["faults"]
    assert float(client.premium_index("BTCUSDT")["markPrice"]) == snapshot["BTCUSDT"]["markPrice"]


def test_control_api_validates_requests_and_accepts_query_parameters(fast_simulator):
    client = fast_simulator
    assert client.request("POST", "/_sim/fault", {"fault": "meltdown"})[0] == 400
    assert client.request("POST", "/_sim/fault", {"fault": "rest_skew", "percent": "lots"})[0] == 400
    assert client.request("POST", "/_sim/fault", {"nofault": 1})[0] == 400
    bad_body = urllib.request.Request(client.base_http_url + "/_sim/fault", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as rejected:
        urllib.request.urlopen(bad_body, timeout=10)
    assert rejected.value.code == 400
    assert client.request("GET", "/_sim/fault")[0] == 405
    assert client.request("GET", "/_sim/nothing")[0] == 404
    status, _, body = client.request("POST", "/_sim/fault?fault=stall&on=true")
    assert status == 200 and json.loads(body)["faults"] == {"stall": {}}
    assert client.clear()["faults"] == {}
    assert "Traceback" not in client.log_text()


def test_junk_requests_are_refused_with_a_one_line_log_and_no_traceback(fast_simulator):
    client = fast_simulator
    for junk in (b"garbage\r\n\r\n", b"POST /_sim/fault HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"):
        with socket.create_connection((client.host, client.port), timeout=DEADLINE) as sock:
            sock.sendall(junk)
            while sock.recv(4096):
                pass
    poll(lambda: client.log_text().count("rejected a malformed request") == 2, "two one-line rejections")
    assert "Traceback" not in client.log_text()
    assert client.ping() and client.status()["faults"] == {}
