"""Freshness: from the exchange's event time `E` of a value to the first API response that shows it.

A WebSocket subscriber records every (symbol, E, markPrice) the simulator pushes on
the stream the daemon reads; a poller asks the API for a batch of symbols every few
milliseconds and records when each answer arrived, pausing now and then (updates
whose wait overlaps a pause are left out) so that the seed's on-demand 1 s cache is
not phase-locked to the pushes by the poller's own steady requests. Afterwards each pushed value
that differs from the symbol's previous one (an unchanged price cannot be seen to
arrive) is matched to the first answer carrying it: freshness = answer time - E.
Same machine, same clock. The poll interval bounds the sampling error.
"""

from __future__ import annotations

import bisect
import http.client
import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import websocket

Update = Tuple[int, float, float]  # (E in ms, markPrice, when a bystander subscriber received it)
# Pauses longer than the seed's 1 s TTL with a spread of 1 s: after each one the cache is refreshed at a
# random phase relative to the 1 s pushes, as it would be for consumers asking at random moments.
PAUSE_EVERY_SECONDS = (2.5, 4.0)
PAUSE_SECONDS = (0.5, 1.5)


class PushRecorder(threading.Thread):
    """Keeps the raw frames of one WebSocket stream with their receive times."""

    def __init__(self, url: str) -> None:
        super().__init__(name="push-recorder", daemon=True)
        self.url = url
        self.frames: List[Tuple[float, str]] = []
        self.error: Optional[str] = None
        self._halt = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        try:
            ws = websocket.create_connection(self.url, timeout=10, skip_utf8_validation=True)
        except Exception as exc:
            self.error = "cannot subscribe to %s: %s" % (self.url, exc)
            self.connected.set()
            return
        self.connected.set()
        ws.settimeout(0.5)
        try:
            while not self._halt.is_set():
                try:
                    opcode, data = ws.recv_data()
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.frames.append((time.time(), data.decode("utf-8")))
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.error = "the simulator closed the subscriber"
                    return
        except Exception as exc:
            self.error = "subscriber failed: %s" % exc
        finally:
            ws.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def updates(self, symbols: Sequence[str]) -> Dict[str, List[Update]]:
        wanted = set(symbols)
        result: Dict[str, List[Update]] = {symbol: [] for symbol in symbols}
        for received, text in self.frames:
            frame = json.loads(text)
            items = frame["data"] if isinstance(frame, dict) else frame
            for item in items:
                symbol = item.get("s")
                if symbol in wanted:
                    result[symbol].append((int(item["E"]), float(item["p"]), received))
        return result


class ApiPoller(threading.Thread):
    """GET `path` on one keep-alive connection every `interval` s; keeps (answer time, markPrices)."""

    def __init__(self, port: int, path: str, symbols: Sequence[str], interval: float, seed: int = 8) -> None:
        super().__init__(name="api-poller", daemon=True)
        self.port = port
        self.path = path
        self.symbols = list(symbols)
        self.interval = interval
        self.answers: List[Tuple[float, Tuple[Optional[float], ...]]] = []
        self.pauses: List[Tuple[float, float]] = []  # (start, end), epoch seconds
        self.failures = 0
        self.non_200 = 0
        self._random = random.Random(seed)
        self._halt = threading.Event()

    def _pause_if_due(self, due: float) -> float:
        """Pause now and then, so a cache refreshed on demand (the seed's 1 s TTL) is not phase-locked to the
        pushes by this poller's own steady requests; returns when the next pause is due."""
        if time.monotonic() < due:
            return due
        started = time.time()
        self._halt.wait(self._random.uniform(*PAUSE_SECONDS))
        self.pauses.append((started, time.time()))
        return time.monotonic() + self._random.uniform(*PAUSE_EVERY_SECONDS)

    def run(self) -> None:
        connection: Optional[http.client.HTTPConnection] = None
        next_at = time.monotonic()
        pause_due = next_at + self._random.uniform(*PAUSE_EVERY_SECONDS)
        while not self._halt.is_set():
            pause_due = self._pause_if_due(pause_due)
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.request("GET", self.path)
                response = connection.getresponse()
                body = response.read()
                answered = time.time()
            except (OSError, http.client.HTTPException):
                self.failures += 1
                connection.close()
                connection = None
                self._halt.wait(0.05)
                continue
            if response.status != 200:
                self.non_200 += 1
            else:
                prices = {entry["symbol"]: entry.get("markPrice") for entry in json.loads(body)["data"]}
                self.answers.append((answered, tuple(prices.get(symbol) for symbol in self.symbols)))
            next_at = max(next_at + self.interval, time.monotonic() - self.interval)
            delay = next_at - time.monotonic()
            if delay > 0:
                self._halt.wait(delay)
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


@dataclass
class FreshnessResult:
    samples_ms: List[float]  # answer time - E
    from_receipt_ms: List[float]  # answer time - when the bystander subscriber received the frame
    missed: int  # updates in the window that no answer showed (superseded before a poll saw them)
    excluded: int  # updates whose wait overlapped one of the poller's pauses
    polls: int
    poll_failures: int

    @property
    def count(self) -> int:
        return len(self.samples_ms)


def distinct_updates(pushes: List[Update]) -> List[Update]:
    """The pushes that changed the price (an unchanged price cannot be seen to arrive)."""
    result: List[Update] = []
    for update in pushes:
        if not result or update[1] != result[-1][1]:
            result.append(update)
    return result


def match_symbol(updates: List[Update], answers: List[Tuple[float, Optional[float]]]) -> Dict[int, float]:
    """{index of update: time of the first answer showing it}; answers in time order."""
    by_price: Dict[float, List[int]] = {}
    for index, update in enumerate(updates):
        by_price.setdefault(update[1], []).append(index)
    event_ms = [update[0] for update in updates]
    shown: Dict[int, float] = {}
    last = -1
    for answered, price in answers:
        if price is None:
            continue
        candidates = by_price.get(price)
        if not candidates:
            continue  # a value from before the subscriber started
        newest_possible = bisect.bisect_right(event_ms, answered * 1000.0 + 1.0) - 1
        position = bisect.bisect_right(candidates, newest_possible) - 1
        if position < 0 or candidates[position] < last:
            continue
        index = candidates[position]
        shown.setdefault(index, answered)
        last = index
    return shown


def analyse(recorder: PushRecorder, poller: ApiPoller, window_start: float, window_end: float,
            settle: float = 3.0) -> FreshnessResult:
    """Freshness of every update with E in [window_start, window_end - settle] (epoch seconds)."""
    pushes = recorder.updates(poller.symbols)
    samples: List[float] = []
    from_receipt: List[float] = []
    missed = 0
    excluded = 0
    for column, symbol in enumerate(poller.symbols):
        updates = distinct_updates(pushes[symbol])
        answers = [(answered, prices[column]) for answered, prices in poller.answers]
        shown = match_symbol(updates, answers)
        for index, (event_ms, _price, received) in enumerate(updates):
            if not window_start * 1000.0 <= event_ms <= (window_end - settle) * 1000.0:
                continue
            event = event_ms / 1000.0
            until = shown.get(index, event + settle)
            if any(start < until and event < end for start, end in poller.pauses):
                excluded += 1
            elif index in shown:
                samples.append(shown[index] * 1000.0 - event_ms)
                from_receipt.append((shown[index] - received) * 1000.0)
            else:
                missed += 1
    return FreshnessResult(samples, from_receipt, missed, excluded, len(poller.answers),
                           poller.failures + poller.non_200)
