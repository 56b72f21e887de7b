"""The daemon's shared state: the records, connection_status, the universe and the delisted map under one lock.

Connections merge frames into it, the refreshers set terms and universes, the writer snapshots it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import funding_feed
import funding_json
import funding_state
import funding_terms
import funding_universe
from funding_daemon_log import log

# A symbol the array delivered once but then left out this long (the array's content changes) gets its own stream.
ARRAY_ABSENCE_SECONDS = 60.0


class FeedState:
    """funding_state, connection_status, the universe and the delisted map, guarded by one lock.

    `changed` wakes the writer.
    """

    def __init__(self, funding: Dict[str, Dict[str, Any]], status: Dict[str, Any],
                 delisted: Optional[Dict[str, float]] = None) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.funding = funding
        self.status = status
        self.funding_terms: Optional[Dict[str, funding_terms.FundingTerms]] = None
        self.items_accepted = 0
        self.contracts: Optional[Dict[str, Dict[str, str]]] = None  # the universe; None while unknown
        self.universe_symbols: Optional[FrozenSet[str]] = None
        self.excluded: Dict[str, str] = {}  # listed symbols outside the universe -> ignore reason
        self.universe_fetched_at: Optional[float] = None
        self.delisted: Dict[str, float] = dict(delisted or {})
        self.listed_at: Dict[str, float] = {}  # monotonic time a symbol entered the universe after the first one
        self.array_seen: Dict[str, float] = {}  # monotonic time the all-market array last delivered each symbol
        self.array_frames = 0  # all-market frames with at least one valid item, on any connection
        self._universe_json: Optional[funding_state.EncodedJson] = None
        # Set when a settlement's T spacing revealed an interval fundingInfo did not say: refresh the terms early.
        self.terms_suspect = threading.Event()

    def update_status(self, **values: Any) -> None:
        with self.lock:
            self.status.update(values)
        self.changed.set()

    def increment_status(self, key: str, by: int = 1) -> None:
        with self.lock:
            self.status[key] = self.status.get(key, 0) + by
        self.changed.set()

    def apply_frame(self, raw: Any) -> Tuple[funding_feed.FrameResult, int]:
        """Parse and merge one frame; return the parse result and how many updates were stored."""
        result = funding_feed.parse_frame(raw)
        if result.control is not None:
            return result, 0
        now = time.time()
        with self.lock:
            status = self.status
            status["last_data_time"] = now
            if result.frame_rejected:
                status["frames_rejected"] += 1
            else:
                status["messages_received"] += 1
            status["items_rejected"] += result.items_rejected
            status["items_skipped_no_funding"] += result.items_skipped_no_funding
            stored = 0
            changes: List[funding_feed.IntervalChange] = []
            updates = result.updates
            if updates and not result.per_symbol:
                self.array_frames += 1
                seen = time.monotonic()
                array_seen = self.array_seen
                for update in updates:
                    array_seen[update.symbol] = seen
            universe = self.universe_symbols
            if universe is not None:
                if updates:
                    updates = [u for u in updates if u.symbol in universe
                               and u.market_marker != funding_universe.COIN_M_MARKER]
                    if len(updates) != len(result.updates):
                        self._count_ignored(result.updates, universe)
                # Rows without funding (dated, SETTLING) are skipped by the parser; say why they are not served.
                for symbol in result.skipped_symbols:
                    if symbol not in universe:
                        key = funding_state.IGNORED_STATUS_PREFIX + funding_universe.ignore_reason(
                            symbol, None, self.excluded)
                        status[key] = status.get(key, 0) + 1
            if updates:
                merge = funding_feed.merge_updates(self.funding, updates, now, self.funding_terms,
                                                   contracts=self.contracts)
                stored = merge.accepted
                status["items_out_of_order"] += merge.out_of_order
                status["items_rejected"] += merge.over_symbol_limit
                status["last_message_time"] = now
                self.items_accepted += stored
                changes = merge.interval_changes
                status["interval_changes"] += len(changes)
                if merge.revealed_intervals and self.funding_terms is not None:
                    self._adopt_revealed(merge.revealed_intervals)
        self.changed.set()
        log_interval_changes(changes)
        return result, stored

    def _count_ignored(self, updates: List[funding_feed.MarkPriceUpdate], universe: FrozenSet[str]) -> None:
        for update in updates:
            if update.symbol in universe and update.market_marker != funding_universe.COIN_M_MARKER:
                continue
            key = funding_state.IGNORED_STATUS_PREFIX + funding_universe.ignore_reason(
                update.symbol, update.market_marker, self.excluded)
            self.status[key] = self.status.get(key, 0) + 1

    def _adopt_revealed(self, revealed: Dict[str, int]) -> None:
        """Later items of a symbol keep the interval its T spacing proved, until fundingInfo says otherwise."""
        assert self.funding_terms is not None
        terms = None
        for symbol, hours in revealed.items():
            known = funding_terms.terms_for(symbol, self.funding_terms)
            if known is not None and known.interval_hours != hours:
                if terms is None:
                    terms = dict(self.funding_terms)  # replaced, never mutated: the refresher may hold the old one
                terms[symbol] = funding_terms.FundingTerms(hours, known.cap, known.floor)
        if terms is not None:
            self.funding_terms = terms
            self.terms_suspect.set()

    def set_funding_terms(self, terms: Dict[str, funding_terms.FundingTerms]) -> int:
        with self.lock:
            self.funding_terms = terms
            changed, changes = funding_feed.apply_funding_terms(self.funding, terms, time.time())
            self.status["interval_changes"] += len(changes)
            self.status["last_funding_info_time"] = time.time()
        self.changed.set()
        log_interval_changes(changes)
        return changed

    def apply_universe(self, universe: funding_universe.Universe, fetched_at: float,
                       initial: bool = False) -> "UniverseChange":
        """Make `universe` the one in use: drop records outside it, note delistings, tag records with their type.

        A symbol is noted as delisted when it leaves a known universe or is listed as no longer trading; a record
        that was never a contract (unknown, dated, COIN-M) is dropped without a note. `initial` is the universe
        loaded from the previous state file at start.
        """
        now = time.time()
        mono = time.monotonic()
        with self.lock:
            previous = self.universe_symbols
            symbols = universe.symbols
            added = symbols - previous if previous is not None else frozenset()
            left = previous - symbols if previous is not None else frozenset()
            self.contracts = universe.contracts
            self._universe_json = None
            self.universe_symbols = symbols
            self.excluded = dict(universe.excluded)
            self.universe_fetched_at = fetched_at
            for symbol in added:
                self.listed_at[symbol] = mono
            for symbol in list(self.listed_at):
                if symbol not in symbols:
                    del self.listed_at[symbol]
            delisted_now = set(left)
            removed = [s for s in self.funding if s not in symbols]
            for symbol in removed:
                del self.funding[symbol]
                if self.excluded.get(symbol) in (funding_universe.IGNORE_SETTLING, funding_universe.IGNORE_NOT_TRADING):
                    delisted_now.add(symbol)
            for symbol in delisted_now:
                self.delisted.setdefault(symbol, now)
            for symbol in symbols:
                self.delisted.pop(symbol, None)
            prune_delisted(self.delisted, now)
            tagged = apply_contracts(self.funding, universe.contracts)
            self.status.update(
                universe_known=True,
                universe_fetched_at=fetched_at,
                expected_symbols=len(symbols),
                universe_bad_entries=universe.bad_entries,
                universe_held_back=False,
            )
            if not initial:
                self.status["universe_refreshes"] = self.status.get("universe_refreshes", 0) + 1
            self.status["symbols_removed"] = self.status.get("symbols_removed", 0) + len(removed)
        self.changed.set()
        return UniverseChange(sorted(added), sorted(left), sorted(removed), tagged)

    def expire_symbols(self, expire_seconds: float, started_at: float) -> List[str]:
        """Without a universe: remove symbols no stream carried for expire_seconds (counted from the start at
        the earliest, so a restart gives loaded symbols that long to reappear)."""
        now = time.time()
        with self.lock:
            if self.universe_symbols is not None:
                return []
            expired = [s for s, r in self.funding.items()
                       if now - max(_number(r.get("updatedAt")), started_at) > expire_seconds]
            for symbol in expired:
                del self.funding[symbol]
                self.delisted.setdefault(symbol, now)
            pruned = prune_delisted(self.delisted, now)
            if expired:
                self.status["symbols_removed"] = self.status.get("symbols_removed", 0) + len(expired)
        if expired or pruned:
            self.changed.set()
        return expired

    def coverage(self, stale_seconds: float) -> Tuple[Optional[int], List[str]]:
        """(expected, missing): universe symbols without data newer than stale_seconds; (None, []) without one."""
        cutoff = time.time() - stale_seconds
        with self.lock:
            universe = self.universe_symbols
            if universe is None:
                return None, []
            funding = self.funding
            missing = sorted(s for s in universe
                             if s not in funding or _number(funding[s].get("updatedAt")) < cutoff)
        return len(universe), missing

    def gap_symbols(self, connected_since: float, grace_seconds: float, now: float) -> Optional[FrozenSet[str]]:
        """Universe symbols the all-market array did not deliver within grace_seconds of `connected_since` (or of
        their listing), or has stopped delivering for ARRAY_ABSENCE_SECONDS: the ones that need their own stream.
        None while it cannot be measured yet."""
        with self.lock:
            universe = self.universe_symbols
            if universe is None:
                return None
            array_seen = self.array_seen
            listed_at = self.listed_at
            gaps = set()
            for symbol in universe:
                since = max(connected_since, listed_at.get(symbol, connected_since))
                if now - since < grace_seconds:
                    continue
                if array_seen.get(symbol, -1.0) < max(since, now - ARRAY_ABSENCE_SECONDS):
                    gaps.add(symbol)
        return frozenset(gaps)

    def universe_for_file(self) -> Optional[funding_state.EncodedJson]:
        """The state file's `universe`, encoded once per universe (it is a third of the file, written every change)."""
        if self.contracts is None:
            return None
        if self._universe_json is None:
            self._universe_json = funding_state.EncodedJson(
                funding_json.dumps({"fetched_at": self.universe_fetched_at, "symbols": self.contracts}))
        return self._universe_json

    def payload(self) -> Dict[str, Any]:
        # Records are replaced, never mutated, so shallow copies are consistent snapshots. The universe dict is
        # replaced as a whole too.
        with self.lock:
            return funding_state.build_payload(dict(self.funding), dict(self.status), time.time(), os.getpid(),
                                               universe=self.universe_for_file(), delisted=dict(self.delisted))

    def counts(self) -> Dict[str, Any]:
        with self.lock:
            return dict(self.status, symbols=len(self.funding), items_accepted=self.items_accepted)


@dataclass
class UniverseChange:
    added: List[str]
    left: List[str]  # left the universe
    removed: List[str]  # records removed from funding_state
    tagged: int  # records whose contractType/underlyingType changed


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def prune_delisted(delisted: Dict[str, float], now: float) -> int:
    old = [s for s, t in delisted.items() if now - t > funding_state.DELISTED_KEEP_SECONDS]
    for symbol in old:
        del delisted[symbol]
    return len(old)


def apply_contracts(funding: Dict[str, Dict[str, Any]], contracts: Dict[str, Dict[str, str]]) -> int:
    """Set contractType/underlyingType on every record from the universe (new dicts); return how many changed."""
    changed = 0
    for symbol, record in list(funding.items()):
        contract = contracts.get(symbol)
        if contract is None:
            continue
        values = {k: contract[k] for k in funding_state.CONTRACT_KEYS if contract.get(k)}
        if any(record.get(k) != v for k, v in values.items()):
            funding[symbol] = dict(record, **values)
            changed += 1
    return changed



def log_interval_changes(changes: List[funding_feed.IntervalChange]) -> None:
    for change in changes:
        log.info("funding interval changed: symbol=%s from_hours=%d to_hours=%d at_ms=%d seen_in=%s",
                 change.symbol, change.old_hours, change.new_hours, change.at_ms, change.how.replace(" ", "_"))
