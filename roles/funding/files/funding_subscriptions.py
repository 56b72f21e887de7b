"""Per-symbol `<symbol>@markPrice@1s` streams on an open WebSocket: which to (un)subscribe, when, and what is live.

Pure bookkeeping, no I/O: the connection's own thread asks `next_message` for
the next control message to send (a dict to send as a JSON *text* frame) and
hands every `{"result"/"error", "id"}` answer to `on_reply`. The supervisor
only swaps the wanted set (`set_wanted`, an atomic reference swap).

Binance's rules (binance-protocol.md section 3) and how they are kept:
- at most 10 incoming messages per second per connection, control messages
  included: at most one message every CONTROL_MESSAGE_INTERVAL_SECONDS (4 per
  second), each carrying up to STREAMS_PER_MESSAGE streams;
- at most 1024 streams per connection: `assign_slots` spreads symbols over
  connections (the first one also carries the all-market array stream);
- an error answer (or no answer within ACK_TIMEOUT_SECONDS) puts the streams
  back to be retried after an exponential backoff; unsubscribes go first.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Set, Tuple

MAX_STREAMS_PER_CONNECTION = 1024
STREAMS_PER_MESSAGE = 200
CONTROL_MESSAGE_INTERVAL_SECONDS = 0.25
ACK_TIMEOUT_SECONDS = 10.0
RETRY_INITIAL_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
SYMBOL_STREAM_SUFFIX = "@markPrice@1s"
SUBSCRIBE = "SUBSCRIBE"
UNSUBSCRIBE = "UNSUBSCRIBE"


def stream_name(symbol: str) -> str:
    """The per-symbol mark price stream (stream names are lowercase, the event name is not)."""
    return symbol.lower() + SYMBOL_STREAM_SUFFIX


@dataclass(frozen=True)
class Request:
    method: str
    streams: Tuple[str, ...]
    sent_at: float


@dataclass(frozen=True)
class ReplyOutcome:
    """What an answer meant: the request it answered (None when unknown) and its error, if any."""

    request: Optional[Request]
    error: Optional[str] = None


class Subscriptions:
    """The per-symbol streams of one connection: wanted (by the supervisor), in flight, and acknowledged."""

    def __init__(self, wanted: FrozenSet[str] = frozenset(), first_id: int = 1) -> None:
        self.wanted: FrozenSet[str] = wanted
        self.acked: Set[str] = set()
        self.pending: Dict[int, Request] = {}
        self._ids = itertools.count(first_id)
        self.next_send_at = 0.0
        self.retry_at = 0.0
        self.retry_delay = RETRY_INITIAL_SECONDS
        self.messages_sent = 0
        self.errors = 0

    def set_wanted(self, streams: FrozenSet[str]) -> None:
        self.wanted = streams

    @property
    def complete(self) -> bool:
        """Every wanted stream is acknowledged (and nothing is waiting to be unsubscribed)."""
        wanted = self.wanted
        return wanted <= self.acked

    @property
    def live(self) -> int:
        return len(self.wanted & self.acked)

    def _in_flight(self, method: str) -> Set[str]:
        return {s for r in self.pending.values() if r.method == method for s in r.streams}

    def expire(self, now: float) -> List[Request]:
        """Drop requests unanswered for ACK_TIMEOUT_SECONDS; their streams will be retried after a backoff."""
        expired = [i for i, r in self.pending.items() if now - r.sent_at > ACK_TIMEOUT_SECONDS]
        requests = [self.pending.pop(i) for i in expired]
        if requests:
            self.errors += len(requests)
            self._back_off(now)
        return requests

    def next_message(self, now: float) -> Optional[Dict[str, Any]]:
        """The next control message to send now, or None (nothing to do, or pacing/backoff says wait)."""
        if now < self.next_send_at:
            return None
        wanted = self.wanted
        method = UNSUBSCRIBE
        todo = sorted(self.acked - wanted - self._in_flight(UNSUBSCRIBE))
        if not todo:
            if now < self.retry_at:
                return None
            method = SUBSCRIBE
            todo = sorted(wanted - self.acked - self._in_flight(SUBSCRIBE))
        if not todo:
            return None
        streams = tuple(todo[:STREAMS_PER_MESSAGE])
        request_id = next(self._ids)
        self.pending[request_id] = Request(method, streams, now)
        self.next_send_at = now + CONTROL_MESSAGE_INTERVAL_SECONDS
        self.messages_sent += 1
        return {"method": method, "params": list(streams), "id": request_id}

    def on_reply(self, request_id: Any, error: Optional[str], now: float) -> ReplyOutcome:
        request = self.pending.pop(request_id, None) if isinstance(request_id, int) else None
        if request is None:
            return ReplyOutcome(None, error)
        if error is not None:
            self.errors += 1
            self._back_off(now)
            return ReplyOutcome(request, error)
        if request.method == SUBSCRIBE:
            self.acked.update(request.streams)
        else:
            self.acked.difference_update(request.streams)
        self.retry_delay = RETRY_INITIAL_SECONDS
        return ReplyOutcome(request)

    def _back_off(self, now: float) -> None:
        self.retry_at = now + self.retry_delay
        self.retry_delay = min(RETRY_MAX_SECONDS, self.retry_delay * 2)


def slot_capacity(slot: int) -> int:
    """Per-symbol streams a connection takes: the first also carries the all-market array stream."""
    return MAX_STREAMS_PER_CONNECTION - 1 if slot == 0 else MAX_STREAMS_PER_CONNECTION


def assign_slots(current: Mapping[str, int], symbols: Iterable[str]) -> Dict[str, int]:
    """symbol -> connection slot: symbols keep their slot; new ones fill the lowest slot with room."""
    wanted = set(symbols)
    assigned = {s: slot for s, slot in current.items() if s in wanted}
    used: Dict[int, int] = {}
    for slot in assigned.values():
        used[slot] = used.get(slot, 0) + 1
    slot = 0
    for symbol in sorted(wanted - set(assigned)):
        while used.get(slot, 0) >= slot_capacity(slot):
            slot += 1
        assigned[symbol] = slot
        used[slot] = used.get(slot, 0) + 1
    return assigned
