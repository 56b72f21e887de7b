"""The history endpoints of the API, over the recorder's SQLite database (read-only).

  GET /funding/{symbol}/history?since=&until=&limit=   newest first, fundingTime in [since, until] (ms, inclusive),
                                                       limit 1..1000 (default 100)
  GET /funding/history?at=<ms>                         every symbol's settlement at one funding time (ms; a
                                                       reported time such as …005 ms finds its settlement)
Both answer CSV with ?format=csv or `Accept: text/csv` (?format=json wins over the header).

Status codes: 400 for a bad time, limit, range (since > until) or format; 404 for a symbol neither served live
nor in the history ("delisted" when the state lists it as delisted), or a funding time with no settlement;
503 when the database cannot be read (the recorder has not run yet, or it is unreadable).
A symbol that is served live but has no row in the window answers 200 with an empty list.

Caching: a page is final when every row in it is REST-confirmed and its window closes at or before the recorder's
REST sweep cursor (nothing can be added or corrected there any more): `Cache-Control: public, max-age=86400`.
Any other page may still change (a stream row confirmed, the next settlement): `no-cache`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import funding_json
from funding_history import CSV_HEADER, MAX_ROWS, SOURCE_REST, HistoryError, HistoryReader, Settlement, csv_line

TIME_RE = re.compile(r"[0-9]{1,15}")
LIMIT_RE = re.compile(r"[0-9]{1,7}")
DEFAULT_LIMIT = 100
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"
FINAL_CACHE = "public, max-age=86400"
OPEN_CACHE = "no-cache"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    cache_control: str = "no-store"


ErrorBody = Callable[..., bytes]


def _csv_wanted(query: Mapping[str, str], accept: str, error_body: ErrorBody) -> "Optional[bool] | Reply":
    fmt = (query.get("format") or "").strip().lower()
    if fmt == "csv":
        return True
    if fmt == "json":
        return False
    if fmt:
        return Reply(400, error_body(400, "bad_format", "format must be json or csv"))
    return "text/csv" in accept.lower()


def _time(query: Mapping[str, str], name: str, error_body: ErrorBody) -> "Optional[int] | Reply":
    text = query.get(name)
    if text is None or text == "":
        return None
    if not TIME_RE.fullmatch(text):
        return Reply(400, error_body(400, "bad_time", "%s must be a time in epoch milliseconds (digits only)" % name))
    return int(text)


def _rows_reply(rows: List[Settlement], csv: bool, final: bool, extra: Dict[str, Any]) -> Reply:
    cache = FINAL_CACHE if final else OPEN_CACHE
    if csv:
        return Reply(200, (CSV_HEADER + "".join(csv_line(r) for r in rows)).encode("utf-8"), CSV_CONTENT_TYPE, cache)
    body = {"data": [r.as_json() for r in rows], "count": len(rows)}
    body.update(extra)
    return Reply(200, funding_json.dumps(body), JSON_CONTENT_TYPE, cache)


def _final(rows: List[Settlement], window_end: Optional[int], reader: HistoryReader) -> bool:
    if window_end is None or any(r.source != SOURCE_REST for r in rows):
        return False
    cursor = reader.facts().rest_cursor_ms
    return cursor is not None and window_end <= cursor


def symbol_history(
    reader: Optional[HistoryReader],
    name: str,
    query: Mapping[str, str],
    *,
    served_live: bool,
    delisted: bool,
    accept: str,
    error_body: ErrorBody,
) -> Reply:
    """`name` is an already validated, upper-cased symbol that is not a reserved word."""
    csv = _csv_wanted(query, accept, error_body)
    if isinstance(csv, Reply):
        return csv
    since = _time(query, "since", error_body)
    if isinstance(since, Reply):
        return since
    until = _time(query, "until", error_body)
    if isinstance(until, Reply):
        return until
    if since is not None and until is not None and since > until:
        return Reply(400, error_body(400, "bad_range", "since (%d) is after until (%d)" % (since, until)))
    limit_text = query.get("limit") or ""
    limit = DEFAULT_LIMIT
    if limit_text:
        if not LIMIT_RE.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_ROWS:
            return Reply(400, error_body(400, "bad_limit", "limit must be a whole number from 1 to %d" % MAX_ROWS))
        limit = int(limit_text)
    if reader is None:
        return Reply(503, error_body(503, "no_history", "the settlement history is not configured"))
    try:
        rows = reader.symbol_rows(name, since, until, limit)
        if not rows and not served_live and not reader.has_symbol(name):
            if delisted:
                return Reply(404, error_body(404, "delisted", "symbol %s is delisted" % name, symbol=name))
            return Reply(404, error_body(404, "not_found", "symbol %s not found" % name, symbol=name))
        # A full page ends at its oldest row; a short one covers the whole window down to `since`.
        final = _final(rows, until, reader) and (len(rows) == limit or since is not None)
    except HistoryError as exc:
        return Reply(503, error_body(503, "no_history", str(exc)))
    return _rows_reply(rows, csv, final, {"symbol": name, "since": since, "until": until, "limit": limit})


def history_at(reader: Optional[HistoryReader], query: Mapping[str, str], accept: str, error_body: ErrorBody) -> Reply:
    csv = _csv_wanted(query, accept, error_body)
    if isinstance(csv, Reply):
        return csv
    at = _time(query, "at", error_body)
    if isinstance(at, Reply):
        return at
    if at is None:
        return Reply(400, error_body(400, "bad_request", "at=<funding time in epoch milliseconds> is required"))
    if reader is None:
        return Reply(503, error_body(503, "no_history", "the settlement history is not configured"))
    try:
        rows = reader.at(at)
        if not rows:
            return Reply(404, error_body(404, "no_settlement", "no settlement recorded at %d" % at, at=at))
        final = _final(rows, rows[0].funding_time, reader)
    except HistoryError as exc:
        return Reply(503, error_body(503, "no_history", str(exc)))
    return _rows_reply(rows, csv, final, {"fundingTime": rows[0].funding_time})
