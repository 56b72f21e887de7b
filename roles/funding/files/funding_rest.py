"""A small JSON-over-HTTP client for Binance REST and the local funding API.

Used by the health monitor and the comparison tool. Every failure (cannot
connect, timeout, HTTP error, HTML or garbage instead of JSON, a JSON value
of the wrong shape) becomes one exception type, `RestError`, whose message
names the URL and says what went wrong, and whose `kind` lets a caller tell
"nobody answered" from "someone answered badly".
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar
from urllib.parse import urlencode, urlsplit

import funding_json
import requests
from funding_version import VERSION

USER_AGENT = "binance-funding/%s" % VERSION
_Self = TypeVar("_Self", bound="_Closable")
BODY_PREVIEW_CHARS = 60
SYMBOL_NAME = re.compile(r"[A-Z0-9_]{1,40}")
HTML_TITLE = re.compile(r"<title[^>]*>([^<]*)</title>", re.IGNORECASE)


class RestError(Exception):
    """A request that did not give usable JSON. `kind` is one of the class constants."""

    UNREACHABLE = "unreachable"  # connection refused, DNS failure, timeout: nobody answered
    HTTP_STATUS = "http_status"  # answered with an unexpected HTTP status
    NOT_JSON = "not_json"  # answered, but the body is not JSON (HTML error page, garbage)
    BAD_SHAPE = "bad_shape"  # valid JSON, but not what the endpoint promises

    def __init__(self, message: str, kind: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after: Optional[str] = None  # the Retry-After header of a 429/418


@dataclass(frozen=True)
class JsonResponse:
    url: str
    status: int
    body: Any
    elapsed_seconds: float


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _preview(data: bytes) -> str:
    """A short, one-line hint of what a bad body was: an HTML page's title, else its first characters."""
    text = data[:4096].decode("utf-8", "replace")
    title = HTML_TITLE.search(text)
    if title:
        text = title.group(1)
    return " ".join(text.split())[:BODY_PREVIEW_CHARS]


class _Closable:
    """A context manager that closes the object on exit."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class JsonHttpClient(_Closable):
    """GET JSON from one base URL with a timeout; raise RestError on any failure."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        # A proxy from the environment must never see loopback traffic.
        self._session.trust_env = not is_loopback_url(self.base_url)
        self._session.headers["User-Agent"] = USER_AGENT
        self._session.headers["Accept"] = "application/json"

    def close(self) -> None:
        self._session.close()

    def url_for(self, path: str, params: Optional[Mapping[str, str]] = None) -> str:
        url = self.base_url + path
        return url + "?" + urlencode(params) if params else url

    def get(
        self,
        path: str,
        params: Optional[Mapping[str, str]] = None,
        ok_statuses: Sequence[int] = (200,),
    ) -> JsonResponse:
        url = self.url_for(path, params)
        started = time.monotonic()
        try:
            response = self._session.get(url, timeout=self.timeout, allow_redirects=False)
            data = response.content
        except requests.Timeout:
            raise RestError("%s: no answer within %gs" % (url, self.timeout), RestError.UNREACHABLE) from None
        except requests.ConnectionError as exc:
            raise RestError("%s: cannot connect (%s)" % (url, _reason(exc)), RestError.UNREACHABLE) from None
        except requests.RequestException as exc:
            raise RestError("%s: request failed (%s)" % (url, _reason(exc)), RestError.UNREACHABLE) from None
        elapsed = time.monotonic() - started
        status = response.status_code
        if status not in ok_statuses:
            detail = _preview(data)
            error = RestError(
                "%s: HTTP %d%s" % (url, status, (" (%s)" % detail) if detail else ""),
                RestError.HTTP_STATUS,
                status,
            )
            error.retry_after = response.headers.get("Retry-After")
            raise error
        content_type = response.headers.get("Content-Type", "")
        if "html" in content_type.lower() or data.lstrip()[:1] == b"<":
            raise RestError(
                "%s: answered HTML, not JSON (%s)" % (url, _preview(data)), RestError.NOT_JSON, status
            )
        try:
            body = funding_json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise RestError(
                "%s: answer is not valid JSON (%s)" % (url, _preview(data) or "empty body"), RestError.NOT_JSON, status
            ) from None
        return JsonResponse(url, status, body, elapsed)


def _reason(exc: BaseException) -> str:
    """The useful part of a requests error (e.g. "[Errno 111] Connection refused"), which it nests deep inside."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\][^'\")]*|Name or service not known|Connection refused|timed out", text)
    return match.group(0).strip() if match else text[:200]


@dataclass(frozen=True)
class PremiumIndex:
    """One entry of GET /fapi/v1/premiumIndex, with numbers parsed."""

    symbol: str
    mark_price: float
    index_price: Optional[float]
    funding_rate: Optional[float]  # None for contracts without funding (dated delivery contracts)
    next_funding_time: int  # ms; 0 for contracts without funding
    time_ms: int  # when Binance computed these values

    @property
    def has_funding(self) -> bool:
        return self.funding_rate is not None and self.next_funding_time > 0


class ShapeError(ValueError):
    pass


def _converted(value: Any, name: str, convert: Callable[[Any], Any], what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ShapeError("%s is %r, not %s" % (name, value, what))
    try:
        return convert(value)
    except ValueError:
        raise ShapeError("%s is %r, not %s" % (name, value, what)) from None


def _number(value: Any, name: str, allow_empty: bool = False) -> Optional[float]:
    if allow_empty and (value is None or value == ""):
        return None
    number = _converted(value, name, float, "a number")
    if not math.isfinite(number):
        raise ShapeError("%s is %r, not a finite number" % (name, value))
    return number


def _millis(value: Any, name: str) -> int:
    millis = _converted(value, name, int, "a time in ms")
    if millis < 0:
        raise ShapeError("%s is negative" % name)
    return millis


def parse_premium_index(entry: Any) -> PremiumIndex:
    """Validate and parse one premiumIndex object; raise ShapeError naming the bad field."""
    if not isinstance(entry, dict):
        raise ShapeError("entry is %s, not an object" % type(entry).__name__)
    symbol = entry.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise ShapeError("symbol is missing")
    mark_price = _number(entry.get("markPrice"), "markPrice")
    if mark_price is None or mark_price <= 0:
        raise ShapeError("%s markPrice is not positive" % symbol)
    index_price = _number(entry.get("indexPrice"), "indexPrice", allow_empty=True)
    funding_rate = _number(entry.get("lastFundingRate"), "lastFundingRate", allow_empty=True)
    next_funding = entry.get("nextFundingTime", 0)
    if "time" not in entry:
        raise ShapeError("%s time is missing" % symbol)
    return PremiumIndex(
        symbol=symbol,
        mark_price=mark_price,
        index_price=index_price,
        funding_rate=funding_rate,
        next_funding_time=_millis(next_funding, "nextFundingTime"),
        time_ms=_millis(entry["time"], "time"),
    )


class BinanceRest(_Closable):
    """The three public USDⓈ-M endpoints the monitor and the comparison tool use."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.http = JsonHttpClient(base_url, timeout)

    def close(self) -> None:
        self.http.close()

    def ping(self) -> float:
        """Seconds the ping took; RestError if Binance did not answer with {}."""
        response = self.http.get("/fapi/v1/ping")
        if not isinstance(response.body, dict):
            raise RestError("%s: expected {}, got %s" % (response.url, _kind(response.body)), RestError.BAD_SHAPE)
        return response.elapsed_seconds

    def premium_index(self, symbol: str) -> PremiumIndex:
        response = self.http.get("/fapi/v1/premiumIndex", {"symbol": symbol})
        if not isinstance(response.body, dict):
            raise RestError(
                "%s: expected one object, got %s" % (response.url, _kind(response.body)), RestError.BAD_SHAPE
            )
        try:
            entry = parse_premium_index(response.body)
        except ShapeError as exc:
            raise RestError("%s: unexpected answer: %s" % (response.url, exc), RestError.BAD_SHAPE) from None
        if entry.symbol != symbol:
            raise RestError(
                "%s: asked for %s, got %s" % (response.url, symbol, entry.symbol), RestError.BAD_SHAPE
            )
        return entry

    def premium_index_all(self) -> "Tuple[List[PremiumIndex], List[str], float]":
        """(entries, problems with rejected entries, seconds the fetch took).

        A few malformed entries are skipped and described; an answer with no
        usable entry at all is a RestError.
        """
        response = self.http.get("/fapi/v1/premiumIndex")
        if not isinstance(response.body, list):
            raise RestError(
                "%s: expected a list of symbols, got %s" % (response.url, _kind(response.body)), RestError.BAD_SHAPE
            )
        entries: List[PremiumIndex] = []
        problems: List[str] = []
        seen: Dict[str, int] = {}
        for raw in response.body:
            try:
                entry = parse_premium_index(raw)
            except ShapeError as exc:
                problems.append(str(exc))
                continue
            if entry.symbol in seen:
                problems.append("%s listed twice" % entry.symbol)
                continue
            seen[entry.symbol] = len(entries)
            entries.append(entry)
        if not entries:
            detail = ("; first problem: %s" % problems[0]) if problems else ""
            raise RestError("%s: no usable symbol in the answer%s" % (response.url, detail), RestError.BAD_SHAPE)
        return entries, problems, response.elapsed_seconds


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "%s %r" % (type(value).__name__, value) if not isinstance(value, str) else "a string"


@dataclass(frozen=True)
class FundingRateRow:
    """One entry of GET /fapi/v1/fundingRate."""

    symbol: str
    funding_time: int  # ms, as reported (not always an exact second)
    funding_rate: float
    mark_price: Optional[float]  # "" in some old rows


def parse_funding_rate_row(entry: Any) -> FundingRateRow:
    if not isinstance(entry, dict):
        raise ShapeError("entry is %s, not an object" % type(entry).__name__)
    symbol = entry.get("symbol")
    if not isinstance(symbol, str) or not SYMBOL_NAME.fullmatch(symbol):
        raise ShapeError("symbol is missing or malformed")
    rate = _number(entry.get("fundingRate"), "fundingRate")
    if rate is None or abs(rate) > 1.0:
        raise ShapeError("%s fundingRate is not a plausible rate" % symbol)
    funding_time = _millis(entry.get("fundingTime"), "fundingTime")
    if funding_time <= 0:
        raise ShapeError("%s fundingTime is 0" % symbol)
    price = _number(entry.get("markPrice"), "markPrice", allow_empty=True)
    if price is not None and price <= 0:
        price = None
    return FundingRateRow(symbol, funding_time, rate, price)


def funding_rates(
    client: JsonHttpClient, *, symbol: Optional[str], start_ms: Optional[int], end_ms: Optional[int], limit: int
) -> "Tuple[List[FundingRateRow], List[str]]":
    """GET /fapi/v1/fundingRate: (rows, problems with rejected entries). RestError when the answer is no list."""
    params: Dict[str, str] = {"limit": str(limit)}
    if symbol is not None:
        params["symbol"] = symbol
    if start_ms is not None:
        params["startTime"] = str(start_ms)
    if end_ms is not None:
        params["endTime"] = str(end_ms)
    response = client.get("/fapi/v1/fundingRate", params)
    if not isinstance(response.body, list):
        raise RestError("%s: expected a list, got %s" % (response.url, _kind(response.body)), RestError.BAD_SHAPE)
    rows: List[FundingRateRow] = []
    problems: List[str] = []
    for raw in response.body:
        try:
            rows.append(parse_funding_rate_row(raw))
        except ShapeError as exc:
            problems.append(str(exc))
    return rows, problems
