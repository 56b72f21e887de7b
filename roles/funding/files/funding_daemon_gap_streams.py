"""Per-symbol streams for the universe symbols the all-market array leaves out, and the slot each one is on."""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple

import funding_subscriptions
from funding_daemon_connection import Connection
from funding_daemon_feed import FeedState
from funding_daemon_log import log
from funding_daemon_slots import Backoff, Slot, overflow_url

# The array's pushes may be shards (binance-protocol.md section 2): measure over at least two of them.
ARRAY_PUSHES_MEASURED = 2


class GapStreams:
    """Measures the array's gaps while slot 0 delivers, and spreads their streams over the slots (adding
    overflow slots as needed, closing the ones left without streams)."""

    def __init__(self, feed: FeedState, url: str, grace_seconds: float, new_backoff: Callable[[], Backoff]) -> None:
        self.feed = feed
        self.url = url
        self.grace_seconds = grace_seconds
        self.new_backoff = new_backoff
        self.stream_slot: Dict[str, int] = {}  # symbol -> slot of its per-symbol stream
        self._spell: Optional[Tuple[float, int]] = None

    def array_spell(self, slot: Slot) -> Optional[Tuple[float, int]]:
        """(since when, feed.array_frames then) of the current spell of all-market data without a break on `slot`.

        A rotation does not break it (the old connection delivers until the new one does); a reconnect does.
        """
        delivering = [c for c in (slot.primary, slot.candidate, *slot.retired)
                      if c is not None and c.state == Connection.OPEN and c.first_data_at is not None]
        if not delivering:
            self._spell = None
        elif self._spell is None:
            first = min(delivering, key=lambda c: c.opened_at or 0.0)
            self._spell = (first.opened_at or time.monotonic(), self.feed.array_frames - first.array_frames)
        return self._spell

    def reconcile(self, slots: List[Slot], now: float) -> None:
        """Update which symbols have a stream and on which slot; `slots` (slot 0 carries the array) grows in place."""
        spell = self.array_spell(slots[0])
        if spell is None or self.feed.array_frames - spell[1] < ARRAY_PUSHES_MEASURED:
            return
        universe = self.feed.universe_symbols
        if universe is None:
            return
        # Symbols keep their stream once they have one (measuring again after every reconnect would open gaps);
        # only a symbol that leaves the universe loses it.
        gaps = self.feed.gap_symbols(spell[0], self.grace_seconds, now)
        if gaps is None:
            return
        wanted = {s for s in self.stream_slot if s in universe} | gaps
        if wanted == set(self.stream_slot):
            return
        added = sorted(wanted - set(self.stream_slot))
        removed = sorted(set(self.stream_slot) - wanted)
        self.stream_slot = funding_subscriptions.assign_slots(self.stream_slot, wanted)
        if added:
            log.info("%d universe symbols not delivered by the all-market array: per-symbol streams for %s%s",
                     len(added), ", ".join(added[:20]), ", ..." if len(added) > 20 else "")
        if removed:
            log.info("%d symbols left the universe: unsubscribing %s", len(removed), ", ".join(removed[:20]))
        slot_count = max(self.stream_slot.values(), default=0) + 1
        while len(slots) < slot_count:
            slots.append(Slot(len(slots), overflow_url(self.url), self.new_backoff()))
        for slot in slots:
            slot.set_streams(frozenset(funding_subscriptions.stream_name(s)
                                       for s, index in self.stream_slot.items() if index == slot.index))
        for slot in slots[1:]:
            if not slot.streams and slot.primary is not None and not slot.primary.closing:
                slot.primary.request_close("no per-symbol streams left")
