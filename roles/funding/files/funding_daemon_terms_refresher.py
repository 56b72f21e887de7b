"""The funding-terms refresher thread: REST /fapi/v1/fundingInfo (intervals, caps, floors) into the feed."""

from __future__ import annotations

import threading
import time
from typing import Dict

import funding_terms
import requests
from funding_daemon_feed import FeedState
from funding_daemon_log import describe_error, log

FUNDING_INFO_PATH = "/fapi/v1/fundingInfo"
FUNDING_INFO_RETRY_SECONDS = 300.0


class FundingIntervalRefresher(threading.Thread):
    """Fetches /fapi/v1/fundingInfo (intervals, caps, floors) at start and then periodically.

    REST budget: one request per FUNDING_INTERVALS_REFRESH_SECONDS; after a failure, or when a settlement's T
    spacing contradicted the terms (feed.terms_suspect), one more no sooner than FUNDING_INFO_RETRY_SECONDS after
    the last: at most one request per 5 minutes in the bucket fundingInfo shares with fundingRate (README).
    A garbage or partial answer keeps the last good terms; it is counted (funding_info_errors) and logged once
    per episode.
    """

    def __init__(self, rest_url: str, refresh_seconds: float, timeout: float, feed: FeedState) -> None:
        super().__init__(name="funding-info", daemon=True)
        self.url = rest_url + FUNDING_INFO_PATH
        self.refresh_seconds = refresh_seconds
        self.timeout = timeout
        self.feed = feed
        self.stop_requested = threading.Event()
        self._failing = False
        self._partial = False

    def run(self) -> None:
        while not self.stop_requested.is_set():
            ok = self.refresh_once()
            wait = self.refresh_seconds if ok else min(self.refresh_seconds, FUNDING_INFO_RETRY_SECONDS)
            deadline = time.monotonic() + wait
            earliest = time.monotonic() + min(wait, FUNDING_INFO_RETRY_SECONDS)
            while not self.stop_requested.is_set() and time.monotonic() < deadline:
                if self.feed.terms_suspect.is_set() and time.monotonic() >= earliest:
                    break
                self.stop_requested.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            self.feed.terms_suspect.clear()

    def refresh_once(self) -> bool:
        try:
            response = requests.get(self.url, timeout=self.timeout)
            response.raise_for_status()
            terms, bad = funding_terms.parse_funding_info(response.json())
        except (requests.RequestException, ValueError) as exc:
            self.feed.increment_status("funding_info_errors")
            if not self._failing:
                log.warning("fundingInfo from %s failed: %s; the last good funding terms are kept (repeats are "
                            "counted in funding_info_errors until it answers again)", self.url, describe_error(exc))
            self._failing = True
            return False
        if bad:
            self.feed.increment_status("funding_info_errors")
            if not self._partial:
                log.warning("fundingInfo: %d unusable entries left out (those symbols keep the default terms; "
                            "repeats are counted in funding_info_errors)", bad)
        self._partial = bool(bad)
        if self._failing:
            log.info("fundingInfo from %s answers again", self.url)
            self._failing = False
        changed = self.feed.set_funding_terms(terms)
        by_hours: Dict[int, int] = {}
        for entry in terms.values():
            by_hours[entry.interval_hours] = by_hours.get(entry.interval_hours, 0) + 1
        log.info("fundingInfo: %d symbols with adjusted terms %s (others 8 h, no cap); %d records changed",
                 len(terms), dict(sorted(by_hours.items())), changed)
        return True
