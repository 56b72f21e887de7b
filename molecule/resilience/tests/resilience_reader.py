#!/usr/bin/env python3
"""A consumer that watches the box during the whole fault run and records everything a reader must never see.

Runs inside the box (the simulator's virtualenv python: it needs `websockets`), as an unprivileged user:

- a recorder subscribed to the simulator's mark-price streams (slow and fast) keeps what the exchange really
  pushed: (symbol, eventTime) -> (markPrice, fundingRate, indexPrice, nextFundingTime) for the last minutes.
  Genuine items carry the simulator's `ap` and `st` fields; injected poison never does, so it is never recorded;
- a checker reads the state file and the API in a loop: a state file that is not JSON (torn), a stored value that
  differs from what the exchange pushed for that eventTime, an API answer that is not JSON, a 5xx other than the
  documented 503s, a traceback, or an API price the exchange never pushed are errors;
- a health poller asks /funding/health every 0.25 s and logs every change of its status with the reasons.

Output (for the tests to read): events as JSON lines in OUT/events.jsonl, counters in OUT/summary.json (rewritten
atomically every second). Errors are logged with their time, so the tests can tell a deliberately corrupted state
file (case 9) from a torn write.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import signal
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

STREAM_URL = "ws://127.0.0.1:9000/market/stream?streams=!markPrice@arr/!markPrice@arr@1s"
HISTORY_SECONDS = 600
PENDING_SECONDS = 20.0
MAX_LOGGED_PER_KIND = 1000

Quote = Tuple[float, Optional[float], Optional[float], Optional[int]]  # mark, rate, index, next funding time


def number(value: Any) -> Optional[float]:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


class Journal:
    """Events (JSON lines) and counters, shared by the threads."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.lock = threading.Lock()
        self.counters: Dict[str, int] = {}
        self.logged: Dict[str, int] = {}
        self.started_at = time.time()
        self.events = open(os.path.join(directory, "events.jsonl"), "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def count(self, key: str, by: int = 1) -> None:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + by

    def event(self, kind: str, always: bool = False, **details: Any) -> None:
        with self.lock:
            self.counters["event:" + kind] = self.counters.get("event:" + kind, 0) + 1
            seen = self.logged.get(kind, 0)
            if not always and seen >= MAX_LOGGED_PER_KIND:
                return
            self.logged[kind] = seen + 1
            self.events.write(json.dumps({"t": round(time.time(), 3), "kind": kind, **details}) + "\n")

    def write_summary(self, extra: Dict[str, Any]) -> None:
        with self.lock:
            summary = {"t": time.time(), "startedAt": self.started_at, "counters": dict(self.counters), **extra}
        path = os.path.join(self.directory, "summary.json")
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(summary, handle)
        os.replace(path + ".tmp", path)


class PushHistory:
    """What the exchange pushed, by symbol and eventTime, for the last HISTORY_SECONDS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_symbol: Dict[str, Dict[int, Quote]] = {}
        self.first_event_ms: Optional[int] = None
        self.newest_event_ms = 0
        self.items = 0
        # (from, to) epoch seconds while the recorder was not subscribed: pushes it may have missed.
        self.gaps: List[Tuple[float, float]] = []
        self.disconnected_since: Optional[float] = time.time()

    def connected(self) -> None:
        with self.lock:
            if self.disconnected_since is not None:
                self.gaps.append((self.disconnected_since, time.time()))
                self.disconnected_since = None

    def disconnected(self) -> None:
        with self.lock:
            if self.disconnected_since is None:
                self.disconnected_since = time.time()

    def in_gap(self, when: float, margin: float = 3.0) -> bool:
        with self.lock:
            if self.disconnected_since is not None and when >= self.disconnected_since - margin:
                return True
            return any(start - margin <= when <= end + margin for start, end in self.gaps)

    def add(self, item: Dict[str, Any]) -> None:
        symbol, event_ms = item.get("s"), item.get("E")
        if not isinstance(symbol, str) or not isinstance(event_ms, int):
            return
        mark = number(item.get("p"))
        if mark is None:
            return
        rate_text = item.get("r")
        next_funding = item.get("T")
        quote = (mark, number(rate_text) if rate_text not in (None, "") else None, number(item.get("i")),
                 next_funding if isinstance(next_funding, int) else None)
        with self.lock:
            self.by_symbol.setdefault(symbol, {})[event_ms] = quote
            if self.first_event_ms is None:
                self.first_event_ms = event_ms
            self.newest_event_ms = max(self.newest_event_ms, event_ms)
            self.items += 1

    def lookup(self, symbol: str, event_ms: int) -> Optional[Quote]:
        with self.lock:
            return self.by_symbol.get(symbol, {}).get(event_ms)

    def pushed_values(self, symbol: str) -> List[Quote]:
        with self.lock:
            return list(self.by_symbol.get(symbol, {}).values())

    def prune(self) -> None:
        cutoff = int((time.time() - HISTORY_SECONDS) * 1000)
        with self.lock:
            for quotes in self.by_symbol.values():
                for event_ms in [e for e in quotes if e < cutoff]:
                    del quotes[event_ms]
            if self.first_event_ms is not None and self.first_event_ms < cutoff:
                self.first_event_ms = cutoff


def genuine_items(message: Any) -> List[Dict[str, Any]]:
    if not isinstance(message, str):
        return []
    try:
        frame = json.loads(message)
    except (ValueError, RecursionError):
        return []
    data = frame.get("data") if isinstance(frame, dict) else None
    if not isinstance(data, list):
        return []
    return [item for item in data if isinstance(item, dict) and item.get("e") == "markPriceUpdate"
            and "ap" in item and "st" in item]


def record_pushes(history: PushHistory, journal: Journal, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with connect(STREAM_URL, open_timeout=5, close_timeout=1, max_size=None, compression=None) as socket:
                journal.count("recorder_connections")
                history.connected()
                while not stop.is_set():
                    try:
                        message = socket.recv(timeout=1)
                    except TimeoutError:
                        continue
                    for item in genuine_items(message):
                        history.add(item)
        except (OSError, WebSocketException, EOFError) as exc:
            history.disconnected()
            journal.count("recorder_disconnects")
            journal.event("recorder_disconnected", error="%s: %s" % (type(exc).__name__, str(exc)[:120]))
        stop.wait(0.2)


class Checker:
    """Reads the state file and the API, and judges what it reads against the recorded pushes."""

    def __init__(self, args: argparse.Namespace, history: PushHistory, journal: Journal) -> None:
        self.args = args
        self.history = history
        self.journal = journal
        self.verified: Dict[str, int] = {}  # symbol -> newest eventTime already verified
        self.pending: Dict[Tuple[str, int], Tuple[float, Quote]] = {}
        self.rng = random.Random(7)
        self.symbols: List[str] = ["BTCUSDT"]

    # --- state file ---

    def check_state_file(self) -> None:
        try:
            with open(self.args.state_file, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            self.journal.count("state_missing")
            self.journal.event("state_missing")
            return
        except OSError as exc:
            self.journal.event("state_unreadable", error=str(exc))
            return
        try:
            payload = json.loads(raw)
            records = payload["funding_state"]
            payload["connection_status"]["connected"]  # noqa: B018 (shape check)
        except (ValueError, KeyError, TypeError) as exc:
            self.journal.count("state_invalid")
            self.journal.event("state_invalid", size=len(raw), error="%s: %s" % (type(exc).__name__, str(exc)[:100]),
                               head=raw[:60].decode("latin-1"))
            return
        self.journal.count("state_reads")
        if records:
            self.symbols = list(records)
        for symbol, record in records.items():
            self.check_record(symbol, record)

    def check_record(self, symbol: str, record: Dict[str, Any]) -> None:
        event_ms = record.get("eventTime")
        mark = record.get("markPrice")
        if not isinstance(mark, (int, float)) or not math.isfinite(mark) or mark <= 0:
            self.journal.count("wrong_price")
            self.journal.event("wrong_price", where="state file", symbol=symbol, record=record)
            return
        if not isinstance(event_ms, int) or self.verified.get(symbol) == event_ms:
            return
        first = self.history.first_event_ms
        if first is None or event_ms < first:
            self.journal.count("state_preexisting")
            self.verified[symbol] = event_ms
            return
        stored: Quote = (float(mark), number(record.get("fundingRate")), number(record.get("indexPrice")),
                         record.get("nextFundingTime"))
        pushed = self.history.lookup(symbol, event_ms)
        if pushed is None:
            self.pending.setdefault((symbol, event_ms), (time.time(), stored))
            return
        self.judge(symbol, event_ms, stored, pushed)

    def judge(self, symbol: str, event_ms: int, stored: Quote, pushed: Quote) -> None:
        self.verified[symbol] = event_ms
        mark, rate, index, next_funding = stored
        same = mark == pushed[0] and rate == pushed[1] and next_funding == pushed[3] and (
            pushed[2] is None or index == pushed[2])
        if same:
            self.journal.count("state_verified")
        else:
            self.journal.count("wrong_price")
            self.journal.event("wrong_price", where="state file", symbol=symbol, eventTime=event_ms,
                               stored=list(stored), pushed=list(pushed))

    def resolve_pending(self) -> None:
        now = time.time()
        for key, (since, stored) in list(self.pending.items()):
            pushed = self.history.lookup(*key)
            if pushed is not None:
                del self.pending[key]
                self.judge(key[0], key[1], stored, pushed)
            elif now - since > PENDING_SECONDS:
                del self.pending[key]
                self.journal.count("state_unverified")

    # --- API ---

    def request(self, path: str) -> Optional[Tuple[int, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.args.api_port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            status, body = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.journal.count("api_unreachable")
            self.journal.event("api_unreachable", path=path, error="%s: %s" % (type(exc).__name__, str(exc)[:100]))
            return None
        finally:
            connection.close()
        self.journal.count("api_answers")
        if b"Traceback" in body:
            self.journal.count("api_traceback")
            self.journal.event("api_traceback", path=path, status=status, body=body[:300].decode("utf-8", "replace"))
        if status >= 500 and status != 503:
            self.journal.count("api_5xx")
            self.journal.event("api_5xx", path=path, status=status, body=body[:300].decode("utf-8", "replace"))
        if path == "/metrics":
            return status, body
        try:
            return status, json.loads(body)
        except ValueError:
            self.journal.count("api_not_json")
            self.journal.event("api_not_json", path=path, status=status, body=body[:200].decode("utf-8", "replace"))
            return None

    def check_api_record(self, path: str, status: int, record: Dict[str, Any], where: str) -> None:
        symbol = record.get("symbol")
        mark = record.get("markPrice")
        if not isinstance(mark, (int, float)) or not math.isfinite(mark) or mark <= 0:
            self.journal.count("wrong_price")
            self.journal.event("wrong_price", where=where, path=path, status=status, record=record)
            return
        updated = record.get("updatedAt") or 0
        first = self.history.first_event_ms
        if first is None or updated * 1000 < first:
            self.journal.count("api_preexisting")
            return
        served = (float(mark), number(record.get("fundingRate")), record.get("nextFundingTime"))
        pushed = [(q[0], q[1], q[3]) for q in self.history.pushed_values(str(symbol))]
        if not pushed:
            # Never on the streams this reader follows (the array): TradFi symbols arrive on per-symbol streams.
            self.journal.count("api_unverified")
            return
        if served in pushed:
            self.journal.count("api_verified")
        elif updated * 1000 > self.history.newest_event_ms - 2000 or self.history.in_gap(updated):
            self.journal.count("api_unverified")  # newer than the recorder has seen, or pushed while it was away
        else:
            self.journal.count("wrong_price")
            self.journal.event("wrong_price", where=where, path=path, status=status, record=record)

    def check_api(self, iteration: int) -> None:
        symbol = self.rng.choice(self.symbols)
        for path in ("/funding/BTCUSDT", "/funding/" + symbol):
            answer = self.request(path)
            if answer is None:
                continue
            status, body = answer
            if status in (200, 503) and isinstance(body, dict) and "markPrice" in body:
                self.check_api_record(path, status, body, "api symbol")
            elif status == 503 and isinstance(body, dict) and body.get("error") == "no_state":
                self.journal.count("api_no_state")
            elif status not in (200, 404):
                self.journal.event("api_unexpected", path=path, status=status, body=str(body)[:200])
        if iteration % 4 == 0:
            names = ",".join(self.rng.sample(self.symbols, min(20, len(self.symbols))))
            answer = self.request("/funding/batch?symbols=" + names)
            if answer is not None and answer[0] == 200 and isinstance(answer[1], dict):
                for record in answer[1].get("data", []):
                    self.check_api_record("/funding/batch", 200, record, "api batch")
        if iteration % 8 == 0:
            self.request("/funding?sort=-fundingRate&limit=50")
            answer = self.request("/metrics")
            if answer is not None and (answer[0] != 200 or b"funding_api_up 1" not in answer[1]):
                self.journal.event("api_unexpected", path="/metrics", status=answer[0])

    def run(self, stop: threading.Event) -> None:
        iteration = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.check_state_file()
                self.resolve_pending()
                self.check_api(iteration)
            except Exception as exc:  # the reader must outlive anything it reads
                self.journal.event("reader_error", error="%s: %s" % (type(exc).__name__, exc))
            iteration += 1
            if iteration % 40 == 0:
                self.history.prune()
            stop.wait(max(0.05, self.args.interval - (time.monotonic() - started)))


AGE_STEPS = (5, 15, 30, 60, 120, 180)


def poll_health(args: argparse.Namespace, journal: Journal, stop: threading.Event) -> None:
    previous: Any = None
    age_step = 0
    while not stop.is_set():
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", args.api_port, timeout=5)
        try:
            connection.request("GET", "/funding/health")
            response = connection.getresponse()
            status, raw = response.status, response.read()
            try:
                body = json.loads(raw)
                reasons = body.get("reasons", [])
                age = body.get("newestDataAgeSeconds")
                step = max([limit for limit in AGE_STEPS if isinstance(age, (int, float)) and age >= limit] or [0])
                if step != age_step:  # the newest data's age crossed a step (up or down)
                    journal.event("data_age", always=True, age=age, step=step)
                    age_step = step
            except ValueError:
                journal.count("api_not_json")
                journal.event("api_not_json", path="/funding/health", status=status, body=raw[:200].decode("latin-1"))
                reasons = ["not json"]
            if status not in (200, 503) or (status == 503) != bool(reasons):
                journal.event("health_inconsistent", status=status, reasons=reasons)
            current: Any = status
        except (OSError, http.client.HTTPException) as exc:
            current, reasons = "unreachable", [type(exc).__name__]
        finally:
            connection.close()
        journal.count("health_polls")
        journal.count("health_%s" % current)
        if current != previous:
            journal.event("health", always=True, status=current, reasons=[r[:160] for r in reasons][:5])
            previous = current
        stop.wait(max(0.02, 0.25 - (time.monotonic() - started)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for events.jsonl and summary.json")
    parser.add_argument("--state-file", default="/var/lib/binance-funding/.funding_state.json")
    parser.add_argument("--api-port", type=int, default=8888)
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args()
    journal = Journal(args.out)
    history = PushHistory()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    checker = Checker(args, history, journal)
    threads = [
        threading.Thread(target=record_pushes, args=(history, journal, stop), daemon=True),
        threading.Thread(target=checker.run, args=(stop,), daemon=True),
        threading.Thread(target=poll_health, args=(args, journal, stop), daemon=True),
    ]
    for thread in threads:
        thread.start()
    journal.event("started", always=True)
    while not stop.wait(1.0):
        journal.write_summary({"pending": len(checker.pending), "historyItems": history.items,
                               "alive": [thread.is_alive() for thread in threads]})
    journal.event("stopped", always=True)
    journal.write_summary({"pending": len(checker.pending), "historyItems": history.items, "stopped": True})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
