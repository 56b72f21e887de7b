#!/usr/bin/env python3
"""Records settled funding rates into the history database; one run per timer tick (funding-history-recorder.timer).

Each run, as the only writer (an exclusive lock; a second run exits at once):
  1. stream fallbacks: every symbol's `lastSettlement` from the daemon's state file is
     inserted as `source: stream` where no row exists yet (never over a REST row);
  2. REST: GET /fapi/v1/fundingRate without `symbol`, from the sweep cursor (the first run:
     FUNDING_HISTORY_BACKFILL_DAYS ago), ascending pages of 1000 rows, until a short page.
     One call holds a whole settlement of every symbol (about 750 rows). REST rows replace
     stream rows (`source: rest`). A settlement is asked for FUNDING_HISTORY_CONFIRM_DELAY_SECONDS
     after its funding time; between settlements a run asks nothing. The cursor only moves past
     what REST returned, so an outage (REST, the recorder, the box) leaves a gap that the next
     successful run fills;
  3. per symbol (`symbol=`), within what is left of the budget: stream rows the sweep did not
     confirm, and a whole settlement when a page of 1000 rows holds one funding time only or the
     answer without `symbol` is unusable (not a list, not ascending, rows before startTime);
  4. daily: rows older than FUNDING_HISTORY_RETENTION_DAYS are deleted.
Every request takes a token of the persisted REST budget first (funding_rest_budget); a 429 or 418
stops REST until its Retry-After has passed, in this run and the next ones.

Exit status: 0 done (also when REST was skipped, throttled or failing: the next run continues),
1 when the database cannot be written (full disk, permissions; nothing is corrupted), 2 bad settings.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import funding_history
import funding_settings as S
import funding_state
from funding_history import HistoryBusy, HistoryError, HistoryWriter, Settlement, settlement_slot
from funding_rest import FundingRateRow, JsonHttpClient, RestError, funding_rates
from funding_rest_budget import RestBudget, default_budget_path

PROG = "funding_history_recorder"
log = logging.getLogger(PROG)

PAGE_LIMIT = 1000
DAY_MS = 86_400_000
PRUNE_EVERY_MS = DAY_MS
IDLE_RECHECK_MS = 300_000  # without a state file to say when the next settlement is, look every 5 minutes
STRAGGLERS_PER_RUN = 20
CHECKPOINT_AFTER_ROWS = 5000

SETTINGS = (
    S.STATE_FILE,
    S.REST_URL,
    S.HTTP_TIMEOUT,
    S.HISTORY_DB,
    S.HISTORY_BACKFILL_DAYS,
    S.HISTORY_RETENTION_DAYS,
    S.HISTORY_REST_BUDGET,
    S.HISTORY_REST_WINDOW,
    S.HISTORY_CONFIRM_DELAY,
    S.HISTORY_RUN_SECONDS,
    S.LOG_LEVEL,
)


class StopRest(Exception):
    """No more REST in this run (budget spent, throttled, failing); the reason is logged."""


@dataclass
class RunReport:
    stream_rows: int = 0
    rest_rows: int = 0
    requests: int = 0
    pruned: int = 0
    rest_stopped: Optional[str] = None
    notes: List[str] = field(default_factory=list)


class Recorder:
    def __init__(self, config: Mapping[str, Any], writer: HistoryWriter, budget: RestBudget,
                 client: Optional[JsonHttpClient], clock: Any = time.time) -> None:
        self.config = config
        self.writer = writer
        self.budget = budget
        self.client = client
        self.clock = clock
        self.started = time.monotonic()
        self.report = RunReport()
        self.meta: Dict[str, str] = {}
        self.settled_before = 0  # rows before this (now - the confirm delay) move the sweep cursor
        self.cursor = 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- the run ---------------------------------------------------------------------------------------------------

    def run(self) -> RunReport:
        self.meta = self.writer.meta()
        state = self.read_state()
        self.record_stream(state)
        if self.client is not None:
            try:
                self.record_rest(state)
            except StopRest as stop:
                self.report.rest_stopped = str(stop)
        self.prune()
        if self.report.rest_rows + self.report.stream_rows >= CHECKPOINT_AFTER_ROWS:
            self.writer.checkpoint()
        return self.report

    def read_state(self) -> Dict[str, Dict[str, Any]]:
        try:
            payload = funding_state.read_state(self.config["FUNDING_STATE_FILE"])
        except funding_state.StateFileError as exc:
            self.report.notes.append("no stream fallbacks: %s" % exc)
            return {}
        return payload["funding_state"]

    def record_stream(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        oldest = self.now_ms() - int(self.config["FUNDING_HISTORY_RETENTION_DAYS"] * DAY_MS)
        rows = []
        for symbol, record in state.items():
            last = record.get("lastSettlement")
            if not funding_state.settlement_ok(last) or last["fundingTime"] < oldest:
                continue
            rows.append(Settlement(symbol, settlement_slot(last["fundingTime"]), float(last["fundingRate"]),
                                   funding_state.finite_number(last.get("markPrice")), funding_history.SOURCE_STREAM,
                                   last["fundingTime"]))
        if rows:
            self.report.stream_rows = self.writer.add_stream(rows, self.now_ms())

    # --- REST ------------------------------------------------------------------------------------------------------

    def record_rest(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        now = self.now_ms()
        delay_ms = int(self.config["FUNDING_HISTORY_CONFIRM_DELAY_SECONDS"] * 1000)
        cursor = _int(self.meta.get("rest_cursor_ms"))
        first_run = cursor is None
        # Stream rows not yet asked about (each is asked per symbol once; REST may never have some, e.g. a row of
        # a contract REST does not list).
        unconfirmed = self.writer.unconfirmed(self.stragglers_checked(now), now - delay_ms)
        due = first_run or now >= (_int(self.meta.get("next_check_ms")) or 0) or bool(unconfirmed)
        if not due:
            return
        if first_run:
            cursor = now - int(self.config["FUNDING_HISTORY_BACKFILL_DAYS"] * DAY_MS)
            log.info("first run: backfilling settlements since %d (%g days)", cursor,
                     self.config["FUNDING_HISTORY_BACKFILL_DAYS"])
        assert cursor is not None
        complete, cursor = self.sweep(cursor, now - delay_ms, state)
        self.meta_update(rest_cursor_ms=cursor)
        if complete:
            self.meta_update(next_check_ms=self.next_check(state, now, delay_ms))
            self.confirm_stragglers(cursor)

    def sweep(self, start: int, settled_before: int, state: Mapping[str, Any]) -> Tuple[bool, int]:
        """Pages without `symbol` from start; (reached the end, the new cursor)."""
        self.settled_before = settled_before
        self.cursor = start
        while True:
            rows = self.fetch(symbol=None, start=start, end=None)
            if not _ascending_from(rows, start):
                self.note_bad_answer("fundingRate without symbol is not an ascending list from startTime")
                self.per_symbol_settlements(state, start, settled_before)
                return True, self.cursor
            self.store_rest(rows)
            if len(rows) < PAGE_LIMIT:
                return True, self.cursor
            last = rows[-1].funding_time
            if last <= start:  # a full page of one funding time: the rest of it needs per-symbol calls
                self.per_symbol_settlements(state, last, last + 1000)
                start = last + 1
            else:
                start = last  # inclusive: the page may have cut that funding time in two; upserts make repeats free

    def per_symbol_settlements(self, state: Mapping[str, Any], start: int, end: int) -> None:
        """Every known symbol's rows in [start, end) one by one (a fallback), resuming where a stopped run left."""
        resume_after = self.meta.get("fallback_after_symbol", "") if self.meta.get("fallback_from_ms") == str(start) \
            else ""
        for symbol in sorted(state):
            if resume_after and symbol <= resume_after:
                continue
            rows = self.fetch(symbol=symbol, start=start, end=end - 1)
            self.store_rest([r for r in rows if r.symbol == symbol])
            self.meta_update(fallback_from_ms=start, fallback_after_symbol=symbol)
        self.meta_update(fallback_from_ms=-1, fallback_after_symbol="")

    def confirm_stragglers(self, cursor: int) -> None:
        """Stream rows the sweep passed without a REST row: ask for each symbol (a few per run)."""
        pending = self.writer.unconfirmed(self.stragglers_checked(self.now_ms()), cursor)[:STRAGGLERS_PER_RUN]
        for symbol, funding_time in pending:
            rows = self.fetch(symbol=symbol, start=funding_time - 1000, end=funding_time + 1000)
            self.store_rest([r for r in rows if r.symbol == symbol])
            self.meta_update(stragglers_checked_ms=funding_time)

    def stragglers_checked(self, now: int) -> int:
        """Stream rows up to here were asked about already. A stream row is the latest settlement the daemon saw when
        the recorder ran, so it is never older than one interval (8 h) plus the recorder's pause: a day back covers
        it, and keeps this a short range of the time index."""
        floor = now - DAY_MS
        return max(floor, _int(self.meta.get("stragglers_checked_ms")) or 0)

    def fetch(self, *, symbol: Optional[str], start: int, end: Optional[int]) -> List[FundingRateRow]:
        assert self.client is not None
        if time.monotonic() - self.started > self.config["FUNDING_HISTORY_RUN_SECONDS"]:
            raise StopRest("run time used up; the next run continues")
        wait = self.budget.wait_seconds()
        if wait > 0:
            raise StopRest("REST budget: next request allowed in %.0f s" % wait)
        if not self.budget.take():
            raise StopRest("REST budget spent")
        self.report.requests += 1
        try:
            rows, problems = funding_rates(self.client, symbol=symbol, start_ms=start, end_ms=end, limit=PAGE_LIMIT)
        except RestError as exc:
            if exc.status == 400 and symbol is not None:
                log.debug("fundingRate does not know %s (%s): its stream rows stay unconfirmed", symbol, exc)
                return []
            if exc.status in (418, 429):
                wait = self.budget.refused(exc.status, exc.retry_after)
                log.warning("fundingRate answered HTTP %d: no REST for %.0f s (Retry-After %r); status=%d",
                            exc.status, wait, exc.retry_after, exc.status)
                raise StopRest("HTTP %d" % exc.status) from None
            self.note_failure(str(exc))
            raise StopRest(str(exc)) from None
        self.budget.answered(200)
        if problems:
            self.note_bad_answer("%d unusable rows (first: %s)" % (len(problems), problems[0]))
        elif self.meta.get("rest_failing") == "1":
            log.info("fundingRate answers again")
            self.meta_update(rest_failing="0")
        return rows

    def store_rest(self, rows: Sequence[FundingRateRow]) -> None:
        now = self.now_ms()
        usable = [Settlement(r.symbol, settlement_slot(r.funding_time), r.funding_rate, r.mark_price,
                             funding_history.SOURCE_REST, r.funding_time) for r in rows if r.funding_time <= now]
        if usable:
            self.report.rest_rows += self.writer.add_rest(usable, now)
            settled = [r.funding_time for r in usable if r.reported_time < self.settled_before]
            if settled and max(settled) > self.cursor:
                # Saved as it moves, so a run stopped by the budget (or killed) is continued, not started over.
                self.cursor = max(settled)
                self.meta_update(rest_cursor_ms=self.cursor)
            confirmed = max(r.funding_time for r in usable)
            if confirmed > (_int(self.meta.get("last_confirmed_ms")) or 0):
                self.meta_update(last_confirmed_ms=confirmed)

    def next_check(self, state: Mapping[str, Mapping[str, Any]], now: int, delay_ms: int) -> int:
        upcoming = [r.get("nextFundingTime") for r in state.values()]
        times = [t for t in upcoming if funding_state.is_whole_number(t) and t > now - delay_ms]
        return (min(times) + delay_ms) if times else now + IDLE_RECHECK_MS

    def note_failure(self, message: str) -> None:
        if self.meta.get("rest_failing") != "1":
            log.warning("fundingRate failed: %s; the next runs retry (logged once until it answers)", message)
            self.meta_update(rest_failing="1")
        else:
            log.debug("fundingRate still failing: %s", message)

    def note_bad_answer(self, message: str) -> None:
        self.meta_update(rest_bad_answers=(_int(self.meta.get("rest_bad_answers")) or 0) + 1)
        if self.meta.get("rest_failing") != "1":
            log.warning("fundingRate: %s (counted in rest_bad_answers; logged once until it answers well)", message)
            self.meta_update(rest_failing="1")

    def meta_update(self, **values: Any) -> None:
        self.writer.set_meta(values)
        self.meta.update({k: str(v) for k, v in values.items()})

    # --- retention -------------------------------------------------------------------------------------------------

    def prune(self) -> None:
        now = self.now_ms()
        if now - (_int(self.meta.get("last_prune_ms")) or 0) < PRUNE_EVERY_MS:
            return
        before = now - int(self.config["FUNDING_HISTORY_RETENTION_DAYS"] * DAY_MS)
        self.report.pruned = self.writer.prune(before)
        self.meta_update(last_prune_ms=now)
        if self.report.pruned:
            log.info("pruned %d settlements older than %g days", self.report.pruned,
                     self.config["FUNDING_HISTORY_RETENTION_DAYS"])


def _int(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _ascending_from(rows: Sequence[FundingRateRow], start: int) -> bool:
    times = [r.funding_time for r in rows]
    return all(t >= start - 1000 for t in times) and all(a <= b for a, b in zip(times, times[1:]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    _args, config = S.load(PROG, "Record settled funding rates (REST fundingRate, stream fallback) into SQLite.",
                           SETTINGS, argv)
    S.setup_logging(config["FUNDING_LOG_LEVEL"], PROG)
    path = config["FUNDING_HISTORY_DB"]
    budget = RestBudget(default_budget_path(path), config["FUNDING_HISTORY_REST_BUDGET"],
                        config["FUNDING_HISTORY_REST_WINDOW_SECONDS"])
    client = JsonHttpClient(config["FUNDING_REST_URL"], config["FUNDING_HTTP_TIMEOUT_SECONDS"]) \
        if config["FUNDING_REST_URL"] else None
    try:
        with HistoryWriter(path) as writer:
            budget.load()
            if budget.load_problem:
                log.warning("%s", budget.load_problem)
            report = Recorder(config, writer, budget, client).run()
    except HistoryBusy as exc:
        log.info("%s: another run is in progress; nothing to do", exc)
        return 0
    except (HistoryError, sqlite3.Error, OSError) as exc:
        log.error("history database %s not written: %s (the last committed data is intact)", path, exc)
        return 1
    finally:
        if client is not None:
            client.close()
    log.info("run done: stream_rows=%d rest_rows=%d requests=%d pruned=%d rest=%s%s", report.stream_rows,
             report.rest_rows, report.requests, report.pruned,
             (report.rest_stopped or "complete").replace(" ", "_")[:80],
             "".join(" note=%r" % n for n in report.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
