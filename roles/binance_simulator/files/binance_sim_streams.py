"""Stream names, Binance's per-connection rules and the counters that show how a client kept to them.

Rules (Binance USDⓈ-M market streams):
- at most 10 incoming messages per second per connection (text or binary frames; pings and pongs are answered by
  the WebSocket layer and not counted here): the 11th within any 1 s window closes the connection with 1008;
- control messages must be text frames: a binary frame closes the connection with 1008;
- at most 1024 streams per connection: a SUBSCRIBE that would go beyond is refused with an error, nothing added.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterable, List, Optional, Set, Tuple

MAX_STREAMS_PER_CONNECTION = 1024
MAX_MESSAGES_PER_SECOND = 10
RATE_WINDOW_SECONDS = 1.0
POLICY_VIOLATION = 1008

ARRAY_STREAMS = {"!markPrice@arr": "slow", "!markPrice@arr@1s": "fast"}
ARRAY_STREAM_NAMES = {speed: name for name, speed in ARRAY_STREAMS.items()}
SPEEDS = ("slow", "fast")
SYMBOL_STREAM = re.compile(r"^([a-z0-9_]{1,40})@markPrice(@1s)?$")


@dataclass(frozen=True)
class StreamName:
    """What one stream name asks for: an all-market array, one symbol's mark price, or something not simulated."""

    name: str
    speed: Optional[str]  # slow | fast, None for a stream the simulator does not serve
    symbol: Optional[str]  # upper case, for per-symbol streams

    @property
    def is_array(self) -> bool:
        return self.speed is not None and self.symbol is None


def parse_stream_name(name: str) -> StreamName:
    if name in ARRAY_STREAMS:
        return StreamName(name, ARRAY_STREAMS[name], None)
    match = SYMBOL_STREAM.match(name)
    if match:
        return StreamName(name, "fast" if match.group(2) else "slow", match.group(1).upper())
    return StreamName(name, None, None)  # acknowledged like Binance does, never delivers


class SlidingWindow:
    """Events within the last second; remembers the largest count ever seen at once."""

    __slots__ = ("times", "peak")

    def __init__(self) -> None:
        self.times: Deque[float] = deque()
        self.peak = 0

    def add(self, now: float) -> int:
        self.times.append(now)
        while self.times and self.times[0] <= now - RATE_WINDOW_SECONDS:
            self.times.popleft()
        count = len(self.times)
        self.peak = max(self.peak, count)
        return count

    def reset(self) -> None:
        self.times.clear()
        self.peak = 0


@dataclass
class Subscriptions:
    """One connection's streams: names in order of subscription, and per speed the symbols to deliver."""

    names: Dict[str, StreamName] = field(default_factory=dict)
    symbols: Dict[str, Set[str]] = field(default_factory=lambda: {speed: set() for speed in SPEEDS})

    def __len__(self) -> int:
        return len(self.names)

    @property
    def array_speeds(self) -> Set[str]:
        return {stream.speed for stream in self.names.values() if stream.is_array and stream.speed}

    def would_exceed(self, names: Iterable[str]) -> bool:
        new = {name for name in names if name not in self.names}
        return len(self.names) + len(new) > MAX_STREAMS_PER_CONNECTION

    def add(self, names: Iterable[str]) -> List[StreamName]:
        added = []
        for name in names:
            if name in self.names:
                continue
            stream = parse_stream_name(name)
            self.names[name] = stream
            if stream.symbol is not None and stream.speed is not None:
                self.symbols[stream.speed].add(stream.symbol)
            added.append(stream)
        return added

    def remove(self, names: Iterable[str]) -> List[StreamName]:
        removed = []
        for name in names:
            stream = self.names.pop(name, None)
            if stream is None:
                continue
            if stream.symbol is not None and stream.speed is not None:
                self.symbols[stream.speed].discard(stream.symbol)
            removed.append(stream)
        return removed


@dataclass
class ConnectionCounters:
    """What one connection sent us, for /_sim/connections and the global peaks of /_sim/status."""

    messages: int = 0
    subscribe_messages: int = 0
    unsubscribe_messages: int = 0
    other_messages: int = 0
    binary_messages: int = 0
    subscribe_errors: int = 0
    streams_peak: int = 0
    message_window: SlidingWindow = field(default_factory=SlidingWindow)
    control_window: SlidingWindow = field(default_factory=SlidingWindow)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "messagesReceived": self.messages,
            "subscribeMessages": self.subscribe_messages,
            "unsubscribeMessages": self.unsubscribe_messages,
            "otherMessages": self.other_messages,
            "binaryMessages": self.binary_messages,
            "subscribeErrors": self.subscribe_errors,
            "peakMessagesPerSecond": self.message_window.peak,
            "peakSubscribeMessagesPerSecond": self.control_window.peak,
            "peakStreams": self.streams_peak,
        }


@dataclass
class LimitCounters:
    """Across every connection since start (or the last POST /_sim/counters/reset)."""

    messages: int = 0
    subscribe_messages: int = 0
    unsubscribe_messages: int = 0
    subscribe_errors: Dict[str, int] = field(default_factory=dict)  # code -> answers
    streams_refused: int = 0  # SUBSCRIBEs refused for the 1024-stream limit
    policy_closes: Dict[str, int] = field(default_factory=dict)  # reason -> 1008 closes
    peak_messages_per_connection: int = 0
    peak_subscribe_per_connection: int = 0
    peak_streams_per_connection: int = 0
    all_messages: SlidingWindow = field(default_factory=SlidingWindow)
    all_subscribes: SlidingWindow = field(default_factory=SlidingWindow)

    def note_error(self, code: Any) -> None:
        key = str(code)
        self.subscribe_errors[key] = self.subscribe_errors.get(key, 0) + 1

    def note_close(self, reason: str) -> None:
        self.policy_closes[reason] = self.policy_closes.get(reason, 0) + 1

    def as_dict(self) -> Dict[str, Any]:
        return {
            "maxMessagesPerSecond": MAX_MESSAGES_PER_SECOND,
            "maxStreamsPerConnection": MAX_STREAMS_PER_CONNECTION,
            "messagesReceived": self.messages,
            "subscribeMessages": self.subscribe_messages,
            "unsubscribeMessages": self.unsubscribe_messages,
            "subscribeErrors": dict(self.subscribe_errors),
            "subscribesRefusedTooManyStreams": self.streams_refused,
            "policyCloses": dict(self.policy_closes),
            "policyClosesTotal": sum(self.policy_closes.values()),
            "peakMessagesPerSecondPerConnection": self.peak_messages_per_connection,
            "peakSubscribeMessagesPerSecondPerConnection": self.peak_subscribe_per_connection,
            "peakMessagesPerSecondAllConnections": self.all_messages.peak,
            "peakSubscribeMessagesPerSecondAllConnections": self.all_subscribes.peak,
            "peakStreamsPerConnection": self.peak_streams_per_connection,
        }


def error_reply(code: int, message: str, request_id: Any) -> Dict[str, Any]:
    return {"error": {"code": code, "msg": message}, "id": request_id}


def valid_request_id(value: Any) -> bool:
    """Binance takes an unsigned integer (or null); we also let a short string through, as the spot API does."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 2**64
    return isinstance(value, str) and len(value) <= 36


def check_params(params: Any) -> Tuple[Optional[List[str]], Optional[str]]:
    """(stream names, None) or (None, why not)."""
    if params is None:
        return [], None
    if not isinstance(params, list):
        return None, "Invalid request: params must be an array of stream names"
    names = []
    for value in params:
        if not isinstance(value, str) or not value or len(value) > 200:
            return None, "Invalid request: every stream name must be a non-empty string"
        names.append(value)
    return names, None
