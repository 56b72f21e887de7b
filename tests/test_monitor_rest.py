"""funding_rest: every way a REST answer can go wrong becomes one RestError with a clear message."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Tuple

import pytest
from fakes.support import closed_url
from funding_rest import BinanceRest, JsonHttpClient, RestError, parse_premium_index

GOOD_ENTRY = {
    "symbol": "BTCUSDT", "markPrice": "90000.10000000", "indexPrice": "90010.00000000",
    "estimatedSettlePrice": "90005.00000000", "lastFundingRate": "0.00010000", "interestRate": "0.00010000",
    "nextFundingTime": 1764748800000, "time": 1764724344000,
}
DATED_ENTRY = dict(GOOD_ENTRY, symbol="BTCUSDT_260925", lastFundingRate="", interestRate="", nextFundingTime=0)


class CannedServer:
    """Answers each path with a canned (status, content type, body); `slow` paths wait before answering."""

    def __init__(self) -> None:
        self.routes: Dict[str, Tuple[int, str, bytes]] = {}
        self.slow: Dict[str, float] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?")[0]
                time.sleep(outer.slow.get(path, 0))
                status, content_type, body = outer.routes.get(path, (404, "application/json", b'{"msg":"no"}'))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (the timeout test)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def answer(self, path: str, body, status: int = 200, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.routes[path] = (status, content_type, data)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canned():
    server = CannedServer()
    yield server
    server.stop()


def test_premium_index_parses_numbers_and_times(canned):
    canned.answer("/fapi/v1/premiumIndex", GOOD_ENTRY)
    with BinanceRest(canned.url, 5) as rest:
        entry = rest.premium_index("BTCUSDT")
    assert entry.mark_price == 90000.1 and entry.funding_rate == 0.0001 and entry.time_ms == 1764724344000
    assert entry.has_funding


def test_dated_contracts_have_no_funding():
    entry = parse_premium_index(DATED_ENTRY)
    assert entry.funding_rate is None and not entry.has_funding


@pytest.mark.parametrize(
    ("status", "content_type", "body", "kind", "words"),
    [
        (503, "text/html", b"<html><body>Service Unavailable</body></html>", RestError.HTTP_STATUS, "HTTP 503"),
        (200, "text/html", b"<html><body>maintenance</body></html>", RestError.NOT_JSON, "answered HTML, not JSON"),
        (200, "application/json", b"{\"symbol\": \"BTC", RestError.NOT_JSON, "answer is not valid JSON"),
        (200, "application/json", b"", RestError.NOT_JSON, "empty body"),
        (200, "application/json", b"[1, 2, 3]", RestError.BAD_SHAPE, "expected one object, got a list"),
        (200, "application/json", b"{\"symbol\": \"BTCUSDT\"}", RestError.BAD_SHAPE, "markPrice"),
        (200, "application/json", json.dumps(dict(GOOD_ENTRY, markPrice="NaN")).encode(), RestError.BAD_SHAPE,
         "not a finite number"),
        (200, "application/json", json.dumps(dict(GOOD_ENTRY, markPrice="abc")).encode(), RestError.BAD_SHAPE,
         "not a number"),
        (200, "application/json", json.dumps(dict(GOOD_ENTRY, lastFundingRate=[1])).encode(), RestError.BAD_SHAPE,
         "lastFundingRate"),
        (200, "application/json", json.dumps({k: v for k, v in GOOD_ENTRY.items() if k != "time"}).encode(),
         RestError.BAD_SHAPE, "time is missing"),
        (200, "application/json", json.dumps(dict(GOOD_ENTRY, symbol="ETHUSDT")).encode(), RestError.BAD_SHAPE,
         "asked for BTCUSDT, got ETHUSDT"),
        (400, "application/json", b'{"code":-1121,"msg":"Invalid symbol."}', RestError.HTTP_STATUS,
         "Invalid symbol"),
    ],
)
def test_bad_single_answers_raise_rest_error(canned, status, content_type, body, kind, words):
    canned.answer("/fapi/v1/premiumIndex", body, status, content_type)
    with BinanceRest(canned.url, 5) as rest, pytest.raises(RestError) as caught:
        rest.premium_index("BTCUSDT")
    assert caught.value.kind == kind
    assert words in str(caught.value) and canned.url in str(caught.value)


def test_all_symbols_skips_malformed_entries_and_says_which(canned):
    canned.answer("/fapi/v1/premiumIndex", [GOOD_ENTRY, DATED_ENTRY, {"symbol": "BADUSDT"}, 17, GOOD_ENTRY])
    with BinanceRest(canned.url, 5) as rest:
        entries, problems, elapsed = rest.premium_index_all()
    assert [e.symbol for e in entries] == ["BTCUSDT", "BTCUSDT_260925"]
    assert len(problems) == 3 and "BTCUSDT listed twice" in problems
    assert elapsed >= 0


@pytest.mark.parametrize("body", [{"symbol": "BTCUSDT"}, [], [1, 2], "text"])
def test_all_symbols_without_a_usable_entry_is_an_error(canned, body):
    canned.answer("/fapi/v1/premiumIndex", body)
    with BinanceRest(canned.url, 5) as rest, pytest.raises(RestError) as caught:
        rest.premium_index_all()
    assert caught.value.kind == RestError.BAD_SHAPE


def test_ping_accepts_an_empty_object_only(canned):
    canned.answer("/fapi/v1/ping", {})
    with BinanceRest(canned.url, 5) as rest:
        assert rest.ping() >= 0
        canned.answer("/fapi/v1/ping", [])
        with pytest.raises(RestError):
            rest.ping()


def test_nobody_listening_is_unreachable():
    with BinanceRest(closed_url(), 5) as rest, pytest.raises(RestError) as caught:
        rest.ping()
    assert caught.value.kind == RestError.UNREACHABLE and "cannot connect" in str(caught.value)


def test_no_answer_within_the_timeout_is_unreachable(canned):
    canned.answer("/fapi/v1/ping", {})
    canned.slow["/fapi/v1/ping"] = 3
    with BinanceRest(canned.url, 0.5) as rest, pytest.raises(RestError) as caught:
        rest.ping()
    assert caught.value.kind == RestError.UNREACHABLE and "no answer within 0.5s" in str(caught.value)


def test_local_client_accepts_the_statuses_it_is_told_to(canned):
    canned.answer("/funding/health", {"status": "unhealthy"}, 503)
    with JsonHttpClient(canned.url, 5) as client:
        response = client.get("/funding/health", ok_statuses=(200, 503))
        assert response.status == 503 and response.body == {"status": "unhealthy"}
        with pytest.raises(RestError) as caught:
            client.get("/funding/health")
    assert caught.value.status == 503
