"""The simulated exchange lists contracts like today's Binance, serves TradFi only on per-symbol streams, enforces
Binance's connection rules and counts how clients kept to them; listing, delisting and exchangeInfo faults work.

Every test talks to a real simulator process through HTTP and WebSocket clients (websocket-client).
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Tuple

import pytest
import websocket
from binance_sim_faults import FaultError, FaultState, parse_fault_flag
from binance_sim_market import Market
from binance_sim_universe import mix_for
from sim_client import FAST_ARGS, SimulatorClient, start_simulator
from test_simulator import poll

DEADLINE = 20.0
PERPETUAL_TYPES = ("PERPETUAL", "TRADIFI_PERPETUAL")
EXCHANGE_INFO_KEYS = {"symbol", "pair", "contractType", "deliveryDate", "onboardDate", "status", "baseAsset",
                      "quoteAsset", "marginAsset", "pricePrecision", "quantityPrecision", "underlyingType",
                      "underlyingSubType", "filters"}


# --- helpers --------------------------------------------------------------------------------------------------------


def open_ws(url: str) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=DEADLINE)


def send_json(ws: websocket.WebSocket, payload: Any) -> None:
    ws.send(json.dumps(payload))


def next_reply(ws: websocket.WebSocket, timeout: float = DEADLINE) -> Dict[str, Any]:
    """The next control answer (an object with `id`), skipping data frames."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(ws.recv())
        if isinstance(message, dict) and "id" in message and ("result" in message or "error" in message):
            return message
    raise AssertionError("no control answer")


def data_frames(ws: websocket.WebSocket, count: int) -> List[Any]:
    """The next `count` data frames (control answers skipped)."""
    received: List[Any] = []
    while len(received) < count:
        message = json.loads(ws.recv())
        if isinstance(message, dict) and "id" in message and ("result" in message or "error" in message):
            continue
        received.append(message)
    return received


def close_code(ws: websocket.WebSocket, timeout: float = DEADLINE) -> int:
    """Read until the server's close frame; its code (1006 when the socket just ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            opcode, frame = ws.recv_data_frame(True)
        except websocket.WebSocketConnectionClosedException:
            return 1006
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
    raise AssertionError("connection not closed")


def symbol_rows_on_array(client: SimulatorClient, pushes: int = 4) -> Dict[str, Dict[str, Any]]:
    """Every row two full rounds of the @1s array carried, last value per symbol."""
    ws = open_ws(client.ws_url("ws", fast=True))
    try:
        rows: Dict[str, Dict[str, Any]] = {}
        for frame in data_frames(ws, pushes):
            for item in frame:
                rows[item["s"]] = item
        return rows
    finally:
        ws.close()


def exchange_info_by_symbol(client: SimulatorClient) -> Dict[str, Dict[str, Any]]:
    return {entry["symbol"]: entry for entry in client.exchange_info()["symbols"]}


def raw_get(client: SimulatorClient, path: str) -> Tuple[int, Dict[str, str], bytes]:
    return client.request("GET", path)


@pytest.fixture(scope="module")
def shared_simulator(tmp_path_factory):
    """One fast simulator at the default size for read-only tests (no faults, no listings)."""
    with start_simulator(FAST_ARGS, log_dir=tmp_path_factory.mktemp("universe-simulator")) as running:
        yield running.client


# --- exchangeInfo ---------------------------------------------------------------------------------------------------


def test_exchange_info_lists_a_binance_like_mix_at_the_default_size(shared_simulator):
    info = shared_simulator.exchange_info()
    assert {"timezone", "serverTime", "rateLimits", "symbols"} <= set(info)
    assert abs(info["serverTime"] - time.time() * 1000) < 60_000
    assert {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400} in \
        info["rateLimits"]
    entries = info["symbols"]
    assert all(EXCHANGE_INFO_KEYS <= set(entry) for entry in entries)
    counts: Dict[Tuple[str, str], int] = {}
    for entry in entries:
        key = (entry["contractType"], entry["status"])
        counts[key] = counts.get(key, 0) + 1
    assert len(entries) == 872
    assert counts[("PERPETUAL", "TRADING")] == 570
    assert counts[("TRADIFI_PERPETUAL", "TRADING")] == 170
    assert sum(n for (_, status), n in counts.items() if status == "SETTLING") == 127
    assert sum(n for (_, status), n in counts.items() if status == "PENDING_TRADING") == 1
    assert counts[("CURRENT_QUARTER", "TRADING")] >= 1 and counts[("NEXT_QUARTER", "TRADING")] >= 1
    by_symbol = {entry["symbol"]: entry for entry in entries}
    for symbol in ("BTCUSDT", "ETHUSDT"):
        assert by_symbol[symbol]["contractType"] == "PERPETUAL" and by_symbol[symbol]["status"] == "TRADING"
    assert by_symbol["XAUUSDT"]["underlyingType"] == "COMMODITY"
    assert by_symbol["TSLAUSDT"]["underlyingType"] == "EQUITY"
    tradfi_underlyings = {e["underlyingType"] for e in entries if e["contractType"] == "TRADIFI_PERPETUAL"}
    assert tradfi_underlyings == {"EQUITY", "COMMODITY", "INDEX"}
    assert {e["underlyingType"] for e in entries if e["contractType"] == "PERPETUAL"} == {"COIN"}
    assert {e["quoteAsset"] for e in entries if e["contractType"] == "PERPETUAL"} == {"USDT", "USDC"}
    assert all(e["marginAsset"] == e["quoteAsset"] for e in entries)
    dated = by_symbol["BTCUSDT_261225"]
    assert dated["pair"] == "BTCUSDT" and dated["deliveryDate"] < 4_133_404_800_000
    assert by_symbol["BTCUSDT"]["deliveryDate"] == 4_133_404_800_000
    assert not any(entry["symbol"].endswith("_PERP") for entry in entries), "COIN-M rows are not listed"


def test_sim_universe_and_status_agree_with_exchange_info(shared_simulator):
    entries = shared_simulator.exchange_info()["symbols"]
    universe = shared_simulator.universe()
    status = shared_simulator.status()
    trading = sorted(e["symbol"] for e in entries if e["status"] == "TRADING" and e["contractType"].endswith(
        "PERPETUAL"))
    assert universe["tradingPerpetuals"] == trading
    assert universe["tradfi"] == sorted(e["symbol"] for e in entries if e["status"] == "TRADING"
                                        and e["contractType"] == "TRADIFI_PERPETUAL")
    assert status["perpetualCount"] == len(trading) == 740
    assert status["tradfiCount"] == 170 and status["arrayPerpetualCount"] == 570
    assert status["symbolCount"] == len(entries)
    assert set(universe["notOnArray"]) == set(universe["tradfi"])
    assert sorted(shared_simulator.perpetuals()) == trading
    assert len(shared_simulator.array_perpetuals()) == 570


@pytest.mark.parametrize("size", [150, 300, 872, 2000])
def test_symbols_option_scales_the_mix_and_keeps_btc_and_eth(size):
    market = Market(seed=5, symbol_count=size, now_ms=1_790_000_000_000)
    counts = market.universe()["counts"]
    assert counts["exchangeInfo"] == size
    assert counts["tradfi"] == pytest.approx(size * 170 / 872, abs=1)
    assert counts["settling"] == pytest.approx(size * 127 / 872, abs=1)
    assert counts["pendingTrading"] == 1
    assert counts["tradingPerpetuals"] - counts["tradfi"] == mix_for(size)["crypto"]
    assert {"BTCUSDT", "ETHUSDT"} <= set(market.universe()["arrayPerpetuals"])


# --- the all-market array -------------------------------------------------------------------------------------------


def test_array_carries_no_tradfi_but_dated_settling_and_coin_m_rows(shared_simulator):
    rows = symbol_rows_on_array(shared_simulator)
    universe = shared_simulator.universe()
    listed = exchange_info_by_symbol(shared_simulator)
    assert set(rows) == set(universe["arraySymbols"])
    assert not set(rows) & set(universe["tradfi"])
    assert set(universe["arrayPerpetuals"]) <= set(rows)
    coin_m = {s: row for s, row in rows.items() if row["st"] == 2}
    assert set(coin_m) == set(universe["coinM"]) and "BTCUSD_PERP" in coin_m
    assert not set(coin_m) & set(listed)
    assert all(row["r"] and row["T"] > 0 for row in coin_m.values()), "COIN-M rows look like funded perpetuals"
    settling = [row for s, row in rows.items() if s in listed and listed[s]["status"] == "SETTLING"]
    assert settling and all(row["T"] == 0 and row["r"] in ("", "0.00000000") for row in settling)
    dated = [row for s, row in rows.items() if s in listed and not listed[s]["contractType"].endswith("PERPETUAL")]
    assert dated and all(row["T"] == 0 for row in dated)
    assert all(row["st"] == 1 for s, row in rows.items() if s in listed)
    status, _, body = raw_get(shared_simulator, "/fapi/v1/premiumIndex?symbol=BTCUSD_PERP")
    assert status == 400 and json.loads(body)["code"] == -1121


def test_premium_index_and_funding_info_cover_tradfi(shared_simulator):
    everything = {entry["symbol"]: entry for entry in shared_simulator.premium_index()}
    tradfi = shared_simulator.universe()["tradfi"]
    assert set(tradfi) <= set(everything)
    gold = shared_simulator.premium_index("XAUUSDT")
    assert gold["symbol"] == "XAUUSDT" and float(gold["markPrice"]) > 1000 and gold["nextFundingTime"] > 0
    intervals = {entry["symbol"]: entry["fundingIntervalHours"] for entry in shared_simulator.funding_info()}
    assert set(intervals) & set(tradfi), "some TradFi contracts fund every 4 h"


# --- per-symbol streams ---------------------------------------------------------------------------------------------


def test_tradfi_symbol_is_served_after_a_live_subscribe_with_one_object_per_frame(fast_simulator):
    client = fast_simulator
    client.set_fault("freeze")
    snapshot = client.symbols()
    ws = open_ws(client.ws_url("stream", fast=True))
    try:
        send_json(ws, {"method": "SUBSCRIBE", "params": ["xauusdt@markPrice@1s", "tslausdt@markPrice"], "id": 7})
        assert next_reply(ws) == {"result": None, "id": 7}
        seen: Dict[str, Dict[str, Any]] = {}
        for frame in data_frames(ws, 60):
            if frame["stream"] in ("xauusdt@markPrice@1s", "tslausdt@markPrice"):
                assert isinstance(frame["data"], dict), "a per-symbol payload is one object"
                seen[frame["stream"]] = frame["data"]
            if len(seen) == 2:
                break
        assert set(seen) == {"xauusdt@markPrice@1s", "tslausdt@markPrice"}
        gold = seen["xauusdt@markPrice@1s"]
        assert gold["e"] == "markPriceUpdate" and gold["s"] == "XAUUSDT"
        assert float(gold["p"]) == snapshot["XAUUSDT"]["markPrice"]
        assert float(gold["r"]) == snapshot["XAUUSDT"]["fundingRate"]
        assert gold["T"] == snapshot["XAUUSDT"]["nextFundingTime"]
        send_json(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 8})
        assert next_reply(ws) == {"result": ["!markPrice@arr@1s", "xauusdt@markPrice@1s", "tslausdt@markPrice"],
                                  "id": 8}
        send_json(ws, {"method": "UNSUBSCRIBE", "params": ["xauusdt@markPrice@1s", "tslausdt@markPrice"], "id": 9})
        assert next_reply(ws) == {"result": None, "id": 9}
        # Frames pushed before the UNSUBSCRIBE took effect travel ahead of its answer; none follow it.
        late = data_frames(ws, 8)
        assert {frame["stream"] for frame in late} == {"!markPrice@arr@1s"}, "unsubscribed streams stopped"
    finally:
        ws.close()


def test_per_symbol_streams_work_in_the_url_combined_and_raw(shared_simulator):
    ws = open_ws(shared_simulator.symbol_stream_url(["NVDAUSDT", "BTCUSDT"]))
    try:
        streams = {frame["stream"]: frame["data"] for frame in data_frames(ws, 8)}
        assert set(streams) == {"nvdausdt@markPrice@1s", "btcusdt@markPrice@1s"}
        assert streams["nvdausdt@markPrice@1s"]["s"] == "NVDAUSDT"
    finally:
        ws.close()
    raw = open_ws(shared_simulator.symbol_stream_url(["US500USDT"], fast=False, kind="ws"))
    try:
        payload = data_frames(raw, 1)[0]
        assert isinstance(payload, dict) and payload["s"] == "US500USDT" and payload["e"] == "markPriceUpdate"
    finally:
        raw.close()


def test_control_errors_look_like_binance(shared_simulator):
    ws = open_ws(shared_simulator.ws_base + "/market/ws")
    try:
        ws.send("{not json")
        reply = next_reply(ws)
        assert reply["error"]["code"] == 3 and reply["id"] is None and "Invalid JSON" in reply["error"]["msg"]
        send_json(ws, {"method": "SUBSCRIBE", "params": "xauusdt@markPrice", "id": 4})
        assert next_reply(ws)["error"]["code"] == 2
        send_json(ws, {"method": "SUBSCRIBE", "params": [17], "id": 5})
        assert next_reply(ws) == {"error": {"code": 2, "msg": "Invalid request: every stream name must be a "
                                                              "non-empty string"}, "id": 5}
        send_json(ws, {"method": "EXPLODE", "id": 6})
        reply = next_reply(ws)
        assert reply["id"] == 6 and reply["error"]["code"] == 2 and "unknown variant" in reply["error"]["msg"]
        send_json(ws, {"method": "LIST_SUBSCRIPTIONS", "id": -1})
        assert next_reply(ws)["error"]["code"] == 2
        send_json(ws, {"method": "SUBSCRIBE", "params": ["nosuchusdt@markPrice@1s"], "id": 9})
        assert next_reply(ws) == {"result": None, "id": 9}, "Binance acknowledges a stream it will never feed"
    finally:
        ws.close()


# --- connection rules -----------------------------------------------------------------------------------------------


def test_binary_control_frame_closes_the_connection_with_1008(fast_simulator):
    ws = open_ws(fast_simulator.ws_base + "/market/ws")
    ws.send_binary(json.dumps({"method": "SUBSCRIBE", "params": ["xauusdt@markPrice@1s"], "id": 1}).encode())
    assert close_code(ws) == 1008
    limits = poll(lambda: fast_simulator.limits()["policyCloses"].get("binary frame") and fast_simulator.limits(),
                  "the 1008 close counted")
    assert limits["policyCloses"] == {"binary frame": 1}
    closed = poll(lambda: fast_simulator.connections()["closed"], "the connection recorded as closed")
    assert closed[-1]["closeCode"] == 1008 and closed[-1]["binaryMessages"] == 1
    assert closed[-1]["closeCause"] == "policy violation"


def test_eleven_messages_within_a_second_close_with_1008_but_ten_do_not(fast_simulator):
    client = fast_simulator
    ws = open_ws(client.ws_base + "/market/ws")
    try:
        for number in range(10):
            send_json(ws, {"method": "LIST_SUBSCRIPTIONS", "id": number})
        assert [next_reply(ws)["id"] for _ in range(10)] == list(range(10))
        time.sleep(1.1)
        send_json(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 99})
        assert next_reply(ws) == {"result": [], "id": 99}, "the window slid: the connection is still open"
        assert client.limits()["peakMessagesPerSecondPerConnection"] == 10
        assert client.limits()["policyClosesTotal"] == 0
    finally:
        ws.close()
    ws = open_ws(client.ws_base + "/market/ws")
    for number in range(11):
        send_json(ws, {"method": "LIST_SUBSCRIPTIONS", "id": number})
    assert close_code(ws) == 1008
    limits = poll(lambda: client.limits()["policyCloses"] and client.limits(), "the 1008 close counted")
    assert limits["policyCloses"] == {"too many messages": 1}
    assert limits["peakMessagesPerSecondPerConnection"] == 11


def test_pings_do_not_count_against_the_message_limit(fast_simulator):
    ws = open_ws(fast_simulator.ws_base + "/market/ws")
    try:
        for _ in range(30):
            ws.ping(b"x")
        send_json(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert next_reply(ws) == {"result": [], "id": 1}
        assert fast_simulator.limits()["peakMessagesPerSecondPerConnection"] == 1
    finally:
        ws.close()


def test_more_than_1024_streams_on_one_connection_are_refused_and_nothing_is_added(fast_simulator):
    client = fast_simulator
    names = [f"sym{n}usdt@markPrice@1s" for n in range(1024)]
    ws = open_ws(client.ws_base + "/market/stream")
    try:
        send_json(ws, {"method": "SUBSCRIBE", "params": names[:1000], "id": 1})
        assert next_reply(ws) == {"result": None, "id": 1}
        send_json(ws, {"method": "SUBSCRIBE", "params": names[1000:] + ["xauusdt@markPrice@1s"], "id": 2})
        refused = next_reply(ws)
        assert refused["id"] == 2 and refused["error"]["code"] == 2 and "1024" in refused["error"]["msg"]
        send_json(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3})
        assert len(next_reply(ws)["result"]) == 1000, "a refused SUBSCRIBE adds nothing"
        send_json(ws, {"method": "SUBSCRIBE", "params": names[1000:], "id": 4})
        assert next_reply(ws) == {"result": None, "id": 4}
        send_json(ws, {"method": "SUBSCRIBE", "params": names[:5], "id": 5})
        assert next_reply(ws) == {"result": None, "id": 5}, "streams already held do not count twice"
        time.sleep(1.0)
        send_json(ws, {"method": "SUBSCRIBE", "params": ["xauusdt@markPrice@1s"], "id": 6})
        assert next_reply(ws)["error"]["code"] == 2
        status = client.status()
        assert list(status["streamsPerConnection"].values()) == [1024]
        assert status["limits"]["subscribesRefusedTooManyStreams"] == 2
        assert status["limits"]["peakStreamsPerConnection"] == 1024
        assert status["limits"]["subscribeErrors"] == {"2": 2}
    finally:
        ws.close()


def test_counters_report_subscribe_messages_streams_and_peaks_per_connection(fast_simulator):
    client = fast_simulator
    client.reset_counters()
    first = open_ws(client.ws_base + "/market/stream")
    second = open_ws(client.ws_base + "/market/stream")
    try:
        for number in range(3):
            send_json(first, {"method": "SUBSCRIBE", "params": [f"a{number}usdt@markPrice@1s"], "id": number})
        for number in range(2):
            send_json(second, {"method": "SUBSCRIBE", "params": [f"b{number}usdt@markPrice"], "id": number})
        for _ in range(3):
            next_reply(first)
        for _ in range(2):
            next_reply(second)
        connections = client.connections(names=True)
        opened = sorted(connections["open"], key=lambda c: c["number"])
        assert [c["subscribeMessages"] for c in opened] == [3, 2]
        assert [c["streams"] for c in opened] == [3, 2]
        assert opened[0]["streamNames"] == ["a0usdt@markPrice@1s", "a1usdt@markPrice@1s", "a2usdt@markPrice@1s"]
        limits = connections["limits"]
        assert limits["subscribeMessages"] == 5
        assert limits["peakSubscribeMessagesPerSecondPerConnection"] == 3
        assert limits["peakSubscribeMessagesPerSecondAllConnections"] == 5
        assert client.status()["connections"]["total"] == 2
    finally:
        first.close()
        second.close()


def test_subscribe_error_fault_refuses_subscriptions_count_times(fast_simulator):
    client = fast_simulator
    client.set_fault("subscribe_error", code=-1, msg="server busy", count=2)
    ws = open_ws(client.ws_base + "/market/stream")
    try:
        for number in (1, 2):
            send_json(ws, {"method": "SUBSCRIBE", "params": ["xauusdt@markPrice@1s"], "id": number})
            assert next_reply(ws) == {"error": {"code": -1, "msg": "server busy"}, "id": number}
        send_json(ws, {"method": "SUBSCRIBE", "params": ["xauusdt@markPrice@1s"], "id": 3})
        assert next_reply(ws) == {"result": None, "id": 3}
        assert "subscribe_error" not in client.status()["faults"]
        assert client.limits()["subscribeErrors"] == {"-1": 2}
        assert data_frames(ws, 1)[0]["stream"] == "xauusdt@markPrice@1s"
    finally:
        ws.close()


# --- listing and delisting ------------------------------------------------------------------------------------------


def test_list_adds_a_trading_perpetual_to_exchange_info_the_array_and_rest(fast_simulator):
    client = fast_simulator
    action = client.list_symbol("NEWCOINUSDT")
    assert action["symbol"] == "NEWCOINUSDT"
    entry = exchange_info_by_symbol(client)["NEWCOINUSDT"]
    assert (entry["contractType"], entry["status"], entry["underlyingType"]) == ("PERPETUAL", "TRADING", "COIN")
    assert "NEWCOINUSDT" in client.universe()["tradingPerpetuals"]
    poll(lambda: "NEWCOINUSDT" in symbol_rows_on_array(client), "the listing on the array")
    assert client.premium_index("NEWCOINUSDT")["nextFundingTime"] > 0
    status, _, body = client.request("POST", "/_sim/fault", {"fault": "list", "symbol": "NEWCOINUSDT"})
    assert status == 400 and "already" in json.loads(body)["error"]


def test_list_of_a_tradfi_contract_keeps_it_off_the_array_but_on_its_own_stream(fast_simulator):
    client = fast_simulator
    client.list_symbol("ACMEUSDT", contract_type="TRADIFI_PERPETUAL", underlying_type="EQUITY", price=123.4)
    entry = exchange_info_by_symbol(client)["ACMEUSDT"]
    assert (entry["contractType"], entry["underlyingType"]) == ("TRADIFI_PERPETUAL", "EQUITY")
    assert "ACMEUSDT" not in symbol_rows_on_array(client)
    ws = open_ws(client.symbol_stream_url(["ACMEUSDT"]))
    try:
        row = data_frames(ws, 1)[0]["data"]
        assert row["s"] == "ACMEUSDT" and 60 < float(row["p"]) < 250 and row["T"] > 0
    finally:
        ws.close()


@pytest.mark.parametrize("rows", ["no_funding", "stop"])
def test_delist_turns_a_symbol_settling_and_its_rows_lose_funding_or_stop(fast_simulator, rows):
    client = fast_simulator
    client.delist_symbol("SOLUSDT", rows=rows)
    assert exchange_info_by_symbol(client)["SOLUSDT"]["status"] == "SETTLING"
    universe = client.universe()
    assert "SOLUSDT" not in universe["tradingPerpetuals"] and "SOLUSDT" in universe["settling"]
    assert universe["changes"][-1]["action"] == "delisted"
    array_rows = symbol_rows_on_array(client)
    ws = open_ws(client.symbol_stream_url(["SOLUSDT", "BTCUSDT"]))
    try:
        streams = {frame["stream"] for frame in data_frames(ws, 10)}
    finally:
        ws.close()
    if rows == "no_funding":
        assert array_rows["SOLUSDT"]["T"] == 0 and array_rows["SOLUSDT"]["r"] == "0.00000000"
        assert streams == {"solusdt@markPrice@1s", "btcusdt@markPrice@1s"}
        assert client.premium_index("SOLUSDT")["lastFundingRate"] == ""
    else:
        assert "SOLUSDT" not in array_rows
        assert streams == {"btcusdt@markPrice@1s"}
        assert raw_get(client, "/fapi/v1/premiumIndex?symbol=SOLUSDT")[0] == 400
    client.list_symbol("SOLUSDT")
    assert exchange_info_by_symbol(client)["SOLUSDT"]["status"] == "TRADING"
    assert client.universe()["changes"][-1]["action"] == "relisted"
    assert poll(lambda: symbol_rows_on_array(client).get("SOLUSDT", {}).get("T"), "SOLUSDT funding again")


def test_array_tradfi_fault_puts_tradfi_rows_on_the_array_until_cleared(fast_simulator):
    client = fast_simulator
    client.set_fault("array_tradfi", underlyingType="COMMODITY")
    rows = symbol_rows_on_array(client)
    assert "XAUUSDT" in rows and "TSLAUSDT" not in rows
    client.clear()
    assert "XAUUSDT" not in symbol_rows_on_array(client)


# --- exchangeInfo faults --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "expected"), [("503", 503), ("500", 500), ("429", 429)])
def test_exchange_info_outage_fails_only_exchange_info(fast_simulator, mode, expected):
    client = fast_simulator
    client.set_fault("exchange_info_outage", mode=mode)
    status, headers, _ = raw_get(client, "/fapi/v1/exchangeInfo")
    assert status == expected
    if mode == "429":
        assert headers["Retry-After"] == "5"
    assert client.premium_index("BTCUSDT")["symbol"] == "BTCUSDT" and client.ping()
    client.clear_fault("exchange_info_outage")
    assert len(client.exchange_info()["symbols"]) == 872


def test_exchange_info_outage_reset_drops_the_connection(fast_simulator):
    client = fast_simulator
    client.set_fault("exchange_info_outage", mode="reset")
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(client.base_http_url + "/fapi/v1/exchangeInfo", timeout=10).read()
    assert client.ping()


def test_exchange_info_outage_hang_keeps_the_request_waiting(fast_simulator):
    client = fast_simulator
    client.set_fault("exchange_info_outage", mode="hang")
    with pytest.raises((socket.timeout, urllib.error.URLError, TimeoutError)):
        urllib.request.urlopen(client.base_http_url + "/fapi/v1/exchangeInfo", timeout=1.0).read()
    assert client.ping()


@pytest.mark.parametrize("kind", ["html", "truncated", "not_object", "no_symbols", "empty", "no_perpetuals",
                                  "too_many", "malformed_entries", "shrunk"])
def test_exchange_info_garbage_answers_each_kind_of_bad_body(fast_simulator, kind):
    client = fast_simulator
    client.set_fault("exchange_info_garbage", kind=kind)
    status, _, body = raw_get(client, "/fapi/v1/exchangeInfo")
    assert status == 200
    if kind in ("html", "truncated"):
        with pytest.raises(ValueError):
            json.loads(body)
        return
    payload = json.loads(body)
    if kind == "not_object":
        assert isinstance(payload, list)
        return
    if kind == "no_symbols":
        assert "symbols" not in payload and "rateLimits" in payload
        return
    symbols = payload["symbols"]
    perpetuals = [e for e in symbols if isinstance(e, dict) and isinstance(e.get("contractType"), str)
                  and e["contractType"].endswith("PERPETUAL") and e.get("status") == "TRADING"]
    if kind == "empty":
        assert symbols == []
    elif kind == "no_perpetuals":
        assert symbols and not perpetuals
    elif kind == "too_many":
        assert len(symbols) > 5000
    elif kind == "malformed_entries":
        assert any(not isinstance(e, dict) or not isinstance(e.get("symbol"), str) for e in symbols)
        assert len(perpetuals) >= 740
    elif kind == "shrunk":
        assert 2 < len(perpetuals) < 740 / 2 and {"BTCUSDT", "ETHUSDT"} <= {e["symbol"] for e in perpetuals}
    client.clear()
    assert len(client.exchange_info()["symbols"]) == 872


# --- fault requests -------------------------------------------------------------------------------------------------


def test_listing_and_exchange_info_fault_requests_are_validated():
    faults = FaultState()
    for name, params in (("delist", {}), ("list", {"symbol": "bad name"}), ("list", {"contractType": "FUTURE"}),
                         ("list", {"underlyingType": "BOND"}), ("list", {"fundingIntervalHours": 3}),
                         ("delist", {"symbol": "BTCUSDT", "rows": "maybe"}),
                         ("exchange_info_outage", {"mode": "404"}), ("exchange_info_garbage", {"kind": "odd"}),
                         ("subscribe_error", {"code": "x"}), ("array_tradfi", {"underlyingType": "BOND"})):
        with pytest.raises(FaultError):
            faults.apply(name, params)
    assert faults.active == {}
    assert faults.apply("list", {"underlyingType": "commodity"})["contractType"] == "TRADIFI_PERPETUAL"
    assert parse_fault_flag("delist=ETHUSDT") == ("delist", {"symbol": "ETHUSDT"})
    assert parse_fault_flag("exchange_info_garbage=shrunk") == ("exchange_info_garbage", {"kind": "shrunk"})
    faults.apply("exchange_info_outage", {})
    faults.apply("exchange_info_garbage", {"kind": "html"})
    assert list(faults.active) == ["exchange_info_garbage"], "one exchangeInfo fault at a time"


def test_faults_from_the_command_line_list_and_delist_at_start(simulator_factory):
    client = simulator_factory("--fault", "delist=ETHUSDT", "--fault", "list=BRANDNEWUSDT",
                               "--fault", "exchange_info_outage=503").client
    assert raw_get(client, "/fapi/v1/exchangeInfo")[0] == 503
    client.clear()
    listed = exchange_info_by_symbol(client)
    assert listed["ETHUSDT"]["status"] == "SETTLING" and listed["BRANDNEWUSDT"]["status"] == "TRADING"
    assert "Traceback" not in client.log_text()


def test_tradfi_option_sets_how_many_contracts_only_per_symbol_streams_carry(simulator_factory):
    client = simulator_factory("--symbols", "1400", "--tradfi", "1100").client
    status = client.status()
    assert status["symbolCount"] == 1400 and status["tradfiCount"] == 1100
    assert len(client.universe()["notOnArray"]) == 1100 > 1024
    names = [symbol.lower() + "@markPrice@1s" for symbol in client.universe()["tradfi"]]
    ws = open_ws(client.ws_base + "/market/stream")
    try:
        send_json(ws, {"method": "SUBSCRIBE", "params": names, "id": 1})
        assert next_reply(ws)["error"]["code"] == 2
        send_json(ws, {"method": "SUBSCRIBE", "params": names[:1024], "id": 2})
        assert next_reply(ws) == {"result": None, "id": 2}
    finally:
        ws.close()


def test_rest_weight_is_counted_like_binance_and_reported_in_a_header(fast_simulator):
    client = fast_simulator
    client.reset_counters()
    client.exchange_info()
    client.premium_index()
    status, headers, _ = raw_get(client, "/fapi/v1/premiumIndex?symbol=XAUUSDT")
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "12"
    reported = client.status()
    assert reported["restWeight"] == 12 and reported["exchangeInfoRequests"] == 1
    assert reported["restRequestsByPath"] == {"/fapi/v1/exchangeInfo": 1, "/fapi/v1/premiumIndex": 2}
