"""The universe refresher thread: REST /fapi/v1/exchangeInfo into the feed, behind the removal gate."""

from __future__ import annotations

import random
import threading
import time
from typing import Optional

import funding_rest
import funding_universe
from funding_daemon_feed import FeedState
from funding_daemon_log import log

UNIVERSE_RETRY_INITIAL_SECONDS = 15.0
EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"


class UniverseRefresher(threading.Thread):
    """Fetches the contract universe (REST exchangeInfo) at start and then every refresh_seconds (jittered).

    Never in the way of the stream: the supervisor connects at once whatever happens here. A failed or unusable
    answer keeps the last good universe; the problem is logged once per episode (a warning when it starts, a line
    when it ends) and retried sooner, with a doubling delay capped at the refresh interval.
    """

    def __init__(self, rest_url: str, refresh_seconds: float, timeout: float, feed: FeedState,
                 rng: Optional[random.Random] = None) -> None:
        super().__init__(name="exchange-info", daemon=True)
        self.client = funding_rest.JsonHttpClient(rest_url, timeout)
        self.refresh_seconds = refresh_seconds
        self.feed = feed
        self.gate = funding_universe.UniverseGate()
        self.stop_requested = threading.Event()
        self.failures = 0
        self._rng = rng or random.Random()

    def run(self) -> None:
        while not self.stop_requested.is_set():
            try:
                ok = self.refresh_once()
            except Exception:  # a bug here must never take the stream down with it
                log.exception("exchangeInfo refresh failed unexpectedly")
                ok = False
            if ok:
                wait = self.refresh_seconds * self._rng.uniform(0.9, 1.1)
            else:
                wait = min(self.refresh_seconds, UNIVERSE_RETRY_INITIAL_SECONDS * 2 ** min(self.failures - 1, 10))
            self.stop_requested.wait(wait)
        self.client.close()

    def refresh_once(self) -> bool:
        url = self.client.url_for(EXCHANGE_INFO_PATH)
        try:
            response = self.client.get(EXCHANGE_INFO_PATH)
            universe = funding_universe.parse_exchange_info(response.body)
        except (funding_rest.RestError, funding_universe.UniverseError) as exc:
            self._failed("%s" % exc if isinstance(exc, funding_rest.RestError) else "%s: %s" % (url, exc))
            return False
        fetched_at = time.time()
        if universe.bad_entries:
            log.warning("exchangeInfo: skipped %d malformed entries (first: %s)", universe.bad_entries,
                        universe.bad_entry_example)
        decision = self.gate.decide(self.feed.universe_symbols, universe.symbols)
        if not decision.apply:
            self.feed.update_status(universe_held_back=True)
            log.warning("exchangeInfo would remove %d of %d known symbols at once: kept the current universe until "
                        "the next refresh agrees (first: %s)", len(decision.removed),
                        len(self.feed.universe_symbols or ()), ", ".join(sorted(decision.removed)[:10]))
            self._recovered()
            return True
        change = self.feed.apply_universe(universe, fetched_at)
        self._recovered()
        log.info("universe: %d perpetuals TRADING (%d TradFi), %d other listed symbols excluded; +%d -%d, "
                 "%d records removed%s", len(universe.contracts), universe.tradifi_count(), len(universe.excluded),
                 len(change.added), len(change.left), len(change.removed),
                 "; left: %s" % ", ".join(change.left[:20]) if change.left else "")
        return True

    def _failed(self, description: str) -> None:
        self.failures += 1
        self.feed.update_status(universe_last_error=description)
        self.feed.increment_status("universe_errors")
        known = "keeping the last good universe" if self.feed.universe_symbols is not None else (
            "no universe known yet: serving what the streams bring")
        if self.failures == 1:
            log.warning("exchangeInfo failed: %s; %s (retrying; repeats are counted in universe_errors, not "
                        "logged)", description, known)
        else:
            log.debug("exchangeInfo failed again (%d): %s", self.failures, description)

    def _recovered(self) -> None:
        if self.failures:
            log.info("exchangeInfo answers again after %d failed attempts", self.failures)
            self.failures = 0
            self.feed.update_status(universe_last_error=None)
