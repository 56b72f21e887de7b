"""The state writer thread: coalesced atomic state-file writes, a heartbeat write, and the final one at shutdown."""

from __future__ import annotations

import threading

import funding_state
from funding_daemon_feed import FeedState
from funding_daemon_log import log
from funding_log import event

WRITE_RETRY_SECONDS = 1.0


class StateWriter(threading.Thread):
    """Writes the state file after changes (coalesced), periodically, and once more at shutdown."""

    def __init__(self, path: str, feed: FeedState, coalesce: float, heartbeat: float) -> None:
        super().__init__(name="state-writer", daemon=True)
        self.path = path
        self.feed = feed
        self.coalesce = coalesce
        self.heartbeat = heartbeat
        self.writes = 0
        self._stop_requested = threading.Event()
        self._write_lock = threading.Lock()
        self._failing_since_errors = 0
        self._logged_errors: set = set()

    def stop(self) -> None:
        self._stop_requested.set()
        self.feed.changed.set()

    def run(self) -> None:
        pending = True
        while not self._stop_requested.is_set():
            if not pending and self.feed.changed.wait(self.heartbeat) and self.coalesce:
                self._stop_requested.wait(self.coalesce)
            if self._stop_requested.is_set():
                break
            self.feed.changed.clear()
            pending = not self.write_once()
            if pending:
                self._stop_requested.wait(WRITE_RETRY_SECONDS)

    def write_once(self, lock_timeout: float = -1) -> bool:
        """One atomic write of the current state; False (logged, counted) when it failed."""
        if not self._write_lock.acquire(timeout=lock_timeout):
            log.error("state file write still in progress; final write skipped")
            return False
        try:
            payload = self.feed.payload()
            try:
                funding_state.write_state_atomic(self.path, payload)
            except Exception as exc:  # disk errors above all; never fatal, the old file stays intact
                self._record_failure(exc)
                return False
            self.writes += 1
            if self._failing_since_errors:
                log.info("state file %s written again after %d failed attempts", self.path,
                         self._failing_since_errors,
                         extra=event("state_write_recovered", path=self.path, failed=self._failing_since_errors))
                self._failing_since_errors = 0
                self._logged_errors.clear()
                self.feed.update_status(last_state_write_error=None)
            return True
        finally:
            self._write_lock.release()

    def _record_failure(self, exc: Exception) -> None:
        self._failing_since_errors += 1
        description = "%s: %s" % (type(exc).__name__, exc)
        with self.feed.lock:
            self.feed.status["state_write_errors"] += 1
            self.feed.status["last_state_write_error"] = description
        key = (type(exc).__name__, getattr(exc, "errno", None), getattr(exc, "strerror", None) or str(exc))
        if key not in self._logged_errors:
            self._logged_errors.add(key)
            log.error("cannot write state file %s: %s; the previous file stays as it is, retrying "
                      "(repeats of this error are counted in state_write_errors, not logged)",
                      self.path, description, extra=event("state_write_error", path=self.path, error=description))
