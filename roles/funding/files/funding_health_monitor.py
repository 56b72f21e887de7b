#!/usr/bin/env python3
"""Funding data health check: the seed's 8 checks, its report, and bounded auto-recovery.

Run once per minute by funding-health-check.timer as the service user (not
root). Prints the report (INFO / WARNINGS / ERRORS / STATUS) to stdout, which
lands in `journalctl -u funding-health-check`; exits 0 when healthy, 1 when not.

Checks, in the seed's order:
  1. binance-funding-ws.service is active
  2. the daemon is connected (connection_status.connected)
  3. at least FUNDING_MIN_SYMBOLS symbols
  4. symbols older than FUNDING_STALE_SECONDS (warning)
  5. NULL funding rate or mark price (error)
  6. last market data older than FUNDING_MAX_MESSAGE_AGE_SECONDS (error)
  7. binance-funding-api.service is active and /funding/health answers
  8. spot check of one symbol (BTCUSDT) against Binance REST premiumIndex, and of one TradFi perpetual of the
     universe (XAUUSDT when listed): those reach the daemon on their own per-symbol streams
Besides, against the daemon's contract universe (exchangeInfo): "N of M perpetuals (K TradFi)", a warning
naming the perpetuals without fresh data, and funding_health's "coverage:" error when coverage stays under
99 % past FUNDING_COVERAGE_GRACE_SECONDS; FUNDING_MIN_SYMBOLS is only a sanity floor.

Checks 2 and 6 (and an error when even the newest symbol is stale) are funding_health's verdict on the state
file, the one the API's /funding/health gives on the same state at the same moment; the spot check's rules are
funding_compare's. With FUNDING_REST_URL=off the spot check is skipped and an outage cannot be told apart from a
stuck daemon, so the restart rule below applies without the REST ping.

Recovery rules (never with --no-restart):
  - a unit that is inactive or failed is restarted;
  - an active daemon without fresh data: ping Binance REST first. If REST is
    unreachable too, this is an upstream outage: reported, daemon left alone.
    If REST answers and the daemon has gone FUNDING_DAEMON_STUCK_SECONDS without
    data AND without a connection attempt (longer than its own reconnect backoff
    cap, so it gets to heal itself first), it is restarted;
  - a disconnect younger than FUNDING_DISCONNECT_GRACE_SECONDS is a reconnect in
    progress: a warning, not an error;
  - an active API whose /funding/health does not answer at all is restarted
    (a 503 is the API reporting the daemon's state, not a reason);
  - a connected daemon with fresh data is never restarted;
  - at most FUNDING_MAX_RESTARTS restarts per unit in FUNDING_RESTART_WINDOW_MINUTES,
    counted in FUNDING_MONITOR_STATE_FILE; past that it reports and stops trying.
Restarts run `<FUNDING_SUDO> -n <FUNDING_SYSTEMCTL> restart <unit>`, exactly what
the sudoers drop-in grants, then wait up to FUNDING_RESTART_WAIT_SECONDS for
`is-active` to say active.

After the checks and the restarts (never before: a slow receiver must not delay
them), the verdict is saved in FUNDING_MONITOR_STATUS_FILE and, when
FUNDING_ALERT_WEBHOOK_URL is set, a webhook is sent on a status change or a
restart, at most once per FUNDING_ALERT_MIN_INTERVAL_MINUTES per kind, bounded
by FUNDING_ALERT_TIMEOUT_SECONDS (funding_alerts). --no-restart only looks: no
restart, no status saved, no webhook.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import funding_alerts
import funding_health
import funding_json
import funding_settings
import funding_terms
from funding_compare import compare_price, judge_funding_rate, local_event_ms
from funding_history import HistoryError, HistoryReader
from funding_log import log_event
from funding_monitor_state import MonitorFileError, MonitorStatus, RestartHistory
from funding_rest import BinanceRest, JsonHttpClient, PremiumIndex, RestError
from funding_state import (
    StateFileError,
    age_seconds,
    finite_number,
    is_whole_number,
    read_state,
    settlement_ok,
    universe_of,
)
from funding_universe import TRADIFI_CONTRACT_TYPE

PROG = "funding_health_monitor"
BANNER = "=" * 100
RESTART_POLL_SECONDS = 0.5

S = funding_settings
SETTINGS = (
    S.LOG_LEVEL, S.STATE_FILE, S.DISCONNECT_GRACE, S.API_URL, S.REST_URL, S.STALE_SECONDS, S.MIN_SYMBOLS,
    S.MAX_MESSAGE_AGE, S.COVERAGE_GRACE_SECONDS, S.HTTP_TIMEOUT, S.SPOT_CHECK_SYMBOL, S.PRICE_WARN_PERCENT,
    S.PRICE_ERROR_PERCENT,
    S.SPOT_SAME_MOMENT, S.SPOT_TIME_GAP, S.DAEMON_STUCK, S.MAX_RESTARTS, S.RESTART_WINDOW, S.RESTART_WAIT,
    S.SYSTEMCTL_TIMEOUT, S.SYSTEMCTL, S.SUDO, S.MONITOR_STATE_FILE, S.WS_UNIT, S.API_UNIT, S.MONITOR_STATUS_FILE,
    S.ALERT_WEBHOOK_URL, S.ALERT_MIN_INTERVAL, S.ALERT_TIMEOUT, S.HISTORY_DB,
)
# funding_health's reasons this report states in its own (the seed's) words; any other reason is reported as is.
REPORTED_REASONS = ("state_file", "disconnected", "no_symbols", "no_data")
PREFERRED_TRADFI_SPOT_SYMBOL = "XAUUSDT"


def tradfi_spot_symbol(
    universe: Optional[Mapping[str, Mapping[str, Any]]], symbols: Mapping[str, Any]
) -> Optional[str]:
    """The TradFi perpetual to spot-check: XAUUSDT (gold) when the universe lists it, else the first served one."""
    if not universe:
        return None
    served = sorted(s for s, contract in universe.items()
                    if contract.get("contractType") == TRADIFI_CONTRACT_TYPE and isinstance(symbols.get(s), dict))
    if not served:
        return None
    return PREFERRED_TRADFI_SPOT_SYMBOL if PREFERRED_TRADFI_SPOT_SYMBOL in served else served[0]


def _clock(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds).strftime("%H:%M:%S")


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    started_at: float
    info: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    checks: Dict[str, Any] = field(default_factory=dict)
    restarts: List[Dict[str, Any]] = field(default_factory=list)
    upstream_outage: bool = False
    alert: Optional[Dict[str, Any]] = None  # the webhook this run sent: kinds, delivered, detail

    def add_info(self, line: str) -> None:
        self.info.append(line)

    def warn(self, line: str) -> None:
        self.warnings.append(line)

    def error(self, line: str) -> None:
        self.errors.append(line)

    @property
    def healthy(self) -> bool:
        return not self.errors

    @property
    def timestamp(self) -> str:
        return datetime.fromtimestamp(self.started_at).strftime("%Y-%m-%d %H:%M:%S")

    def render_text(self) -> str:
        lines = [BANNER, "Funding Data Health Check - %s" % self.timestamp, BANNER, ""]
        for header, entries in (("✅ INFO:", self.info), ("⚠️  WARNINGS:", self.warnings), ("❌ ERRORS:", self.errors)):
            if entries:
                lines.append(header)
                lines.extend("  " + entry for entry in entries)
                lines.append("")
        lines.append("✅ STATUS: HEALTHY" if self.healthy else "❌ STATUS: UNHEALTHY - ACTION REQUIRED")
        lines.append(BANNER)
        return "\n".join(lines)

    def to_json(self) -> Dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "checked_at": self.started_at,
            "healthy": self.healthy,
            "status": "HEALTHY" if self.healthy else "UNHEALTHY",
            "info": list(self.info),
            "warnings": list(self.warnings),
            "errors": list(self.errors),
            "upstream_outage": self.upstream_outage,
            "restarts": list(self.restarts),
            "alert": self.alert,
            "checks": dict(self.checks),
        }


# --------------------------------------------------------------------------- systemctl


@dataclass(frozen=True)
class UnitState:
    state: Optional[str]  # is-active's answer ("active", "inactive", "failed", ...); None if unknown
    error: Optional[str] = None  # why the state could not be read

    @property
    def active(self) -> bool:
        return self.state in ("active", "reloading")

    @property
    def stopped(self) -> bool:
        """Known not running and not being started by systemd itself."""
        return self.state in ("inactive", "failed")


class Systemctl:
    def __init__(self, systemctl: str, sudo: str, timeout: float) -> None:
        self.systemctl = systemctl
        self.sudo = sudo
        self.timeout = timeout

    def _run(self, argv: Sequence[str]) -> "Tuple[Optional[subprocess.CompletedProcess[str]], Optional[str]]":
        try:
            done = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL, check=False
            )
        except FileNotFoundError:
            return None, "%s not found" % argv[0]
        except PermissionError:
            return None, "%s is not executable" % argv[0]
        except subprocess.TimeoutExpired:
            return None, "%s did not finish within %gs" % (" ".join(argv), self.timeout)
        except OSError as exc:
            return None, "cannot run %s: %s" % (argv[0], exc.strerror or exc)
        return done, None

    def is_active(self, unit: str) -> UnitState:
        done, error = self._run([self.systemctl, "is-active", unit])
        if done is None:
            return UnitState(None, error)
        words = done.stdout.split()
        if not words:
            detail = _last_line(done.stderr) or "exit status %d" % done.returncode
            return UnitState(None, "systemctl is-active %s gave no state (%s)" % (unit, detail))
        return UnitState(words[0])

    def restart(self, unit: str) -> Optional[str]:
        """None if the restart command succeeded, else why it failed."""
        done, error = self._run([self.sudo, "-n", self.systemctl, "restart", unit])
        if done is None:
            return error
        if done.returncode != 0:
            return _last_line(done.stderr) or _last_line(done.stdout) or "exit status %d" % done.returncode
        return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _short(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]


# --------------------------------------------------------------------------- the checks


@dataclass
class FeedFacts:
    """What the state file says about the daemon, for the recovery decision."""

    connected: Optional[bool] = None
    data_age: Optional[float] = None  # seconds since the last market data
    no_data_for: Optional[float] = None  # seconds the daemon has gone without data (since data or its start)
    record: Optional[Dict[str, Any]] = None  # the spot-check symbol's record
    tradfi_symbol: Optional[str] = None  # a TradFi perpetual of the universe, spot-checked too
    tradfi_record: Optional[Dict[str, Any]] = None
    funding_state: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # every symbol's record

    def fresh(self, max_age: float) -> bool:
        return bool(self.connected) and self.data_age is not None and self.data_age <= max_age


class HealthMonitor:
    def __init__(self, config: Mapping[str, Any], no_restart: bool, now: Optional[float] = None) -> None:
        self.config = config
        self.no_restart = no_restart
        self.now = time.time() if now is None else now
        self.report = Report(self.now)
        timeout = config["FUNDING_HTTP_TIMEOUT_SECONDS"]
        self.systemctl = Systemctl(
            config["FUNDING_SYSTEMCTL"], config["FUNDING_SUDO"], config["FUNDING_SYSTEMCTL_TIMEOUT_SECONDS"]
        )
        rest_url = config["FUNDING_REST_URL"]
        self.rest = BinanceRest(rest_url, timeout) if rest_url is not None else None
        self.api = JsonHttpClient(config["FUNDING_API_URL"], timeout)
        self.history = RestartHistory(
            config["FUNDING_MONITOR_STATE_FILE"], config["FUNDING_RESTART_WINDOW_MINUTES"] * 60
        )
        self._history_loaded = False
        self._rest_ping_error: Optional[str] = None

    def close(self) -> None:
        if self.rest is not None:
            self.rest.close()
        self.api.close()

    def run(self) -> Report:
        c = self.config
        ws_unit, api_unit = c["FUNDING_WS_UNIT"], c["FUNDING_API_UNIT"]
        ws = self.check_service(ws_unit, "ws_service", "WebSocket daemon service")
        facts = self.check_state()
        self.check_history(facts)
        ws_restart_reason = self.daemon_restart_reason(ws, facts)
        api = self.check_service(api_unit, "api_service", "API server service")
        api_answers = self.check_api_health()
        api_restart_reason = None
        if api.stopped:
            api_restart_reason = "unit is %s" % api.state
        elif api.active and not api_answers:
            api_restart_reason = "API does not answer"
        self.check_spot(facts)
        if ws_restart_reason:
            self.restart(ws_unit, ws_restart_reason)
        if api_restart_reason:
            self.restart(api_unit, api_restart_reason)
        return self.report

    # 1 and 7: the units
    def check_service(self, unit: str, key: str, label: str) -> UnitState:
        state = self.systemctl.is_active(unit)
        self.report.checks[key] = {"unit": unit, "state": state.state, "error": state.error}
        if state.error:
            self.report.error("Cannot check %s (%s): %s" % (label, unit, state.error))
        elif state.active:
            self.report.add_info("%s is running" % label)
        elif state.stopped:
            self.report.error("%s is NOT running (%s is %s)" % (label, unit, state.state))
        else:
            self.report.warn("%s is %s; systemd is handling it, not restarting" % (label, state.state))
        return state

    # 2-6: the state file
    def check_state(self) -> FeedFacts:
        c = self.config
        path = c["FUNDING_STATE_FILE"]
        facts = FeedFacts()
        try:
            payload = read_state(path)
        except StateFileError as exc:
            self.report.checks["state_file"] = {"path": path, "ok": False, "error": str(exc)}
            self.report.error("Cannot read state file: %s" % exc)
            facts.no_data_for = age_seconds(_mtime(path), self.now)
            return facts
        self.report.checks["state_file"] = {"path": path, "ok": True, "error": None}
        status = payload["connection_status"]
        symbols = payload["funding_state"]
        now = self.now

        verdict = funding_health.judge(
            funding_health.FeedSnapshot.from_payload(payload), None, now, funding_health.HealthRules.from_settings(c)
        )
        down_for = verdict.disconnected_for
        # A reconnect (a start, a drop, Binance's 24 h close) takes a second or two: not an error while it lasts.
        facts.connected = down_for is None or verdict.reconnecting
        if down_for is None:
            self.report.add_info("WebSocket is connected to Binance")
        elif facts.connected:
            self.report.warn("WebSocket is reconnecting (disconnected %.0f seconds ago)" % down_for)
        else:
            self.report.error("WebSocket is NOT connected to Binance")
            if down_for != math.inf:
                self.report.error("Disconnected for %.0f seconds" % down_for)

        count = len(symbols)
        if count >= c["FUNDING_MIN_SYMBOLS"]:
            self.report.add_info("%d symbols tracked" % count)
        else:
            self.report.error("Only %d symbols tracked (expected at least %d)" % (count, c["FUNDING_MIN_SYMBOLS"]))
        universe = universe_of(payload)
        self.check_coverage(universe, symbols, verdict)
        facts.tradfi_symbol = tradfi_spot_symbol(universe, symbols)
        if facts.tradfi_symbol is not None:
            facts.tradfi_record = symbols[facts.tradfi_symbol]

        messages = status.get("messages_received")
        if finite_number(messages) is not None:
            self.report.add_info("%d messages processed" % messages)

        # Liveness is accepted market data (last_message_time, or the newest record a just-restarted daemon loaded),
        # not frames (last_data_time): the retired endpoint sends acks and nothing else, and a poisoned feed sends
        # frames without a usable markPriceUpdate.
        facts.data_age = verdict.data_age
        frame_age = age_seconds(status.get("last_data_time"), now)
        max_age = c["FUNDING_MAX_MESSAGE_AGE_SECONDS"]
        if facts.data_age is None:
            self.report.error("No messages received yet")
        elif facts.data_age <= max_age:
            self.report.add_info("Last message %.0fs ago" % facts.data_age)
        else:
            line = "No messages received for %.0f seconds" % facts.data_age
            if frame_age is not None and frame_age <= max_age:
                line += " (the connection still gets other messages, but no market data)"
            self.report.error(line)
        for reason in verdict.reasons:
            if reason.split(":", 1)[0] not in REPORTED_REASONS:
                self.report.error("Feed is unhealthy: %s" % reason)
        # A daemon that is still connecting and reconnecting is healing itself (an outage, a dead endpoint): the
        # clock towards a restart runs from its last data, its start or its last connection attempt, whichever is
        # latest, so a daemon waiting out its backoff when Binance returns is not restarted for the outage.
        started_age = age_seconds(status.get("daemon_started_at"), now)
        attempt_age = age_seconds(status.get("last_disconnect_time"), now)
        candidates = [a for a in (facts.data_age, started_age, attempt_age) if a is not None]
        facts.no_data_for = min(candidates) if candidates else None

        stale = null_rate = null_price = 0
        for record in symbols.values():
            age = age_seconds(record.get("updatedAt"), now)
            if age is not None and age > c["FUNDING_STALE_SECONDS"]:
                stale += 1
            if record.get("fundingRate") is None:
                null_rate += 1
            if record.get("markPrice") is None:
                null_price += 1
        if stale:
            self.report.warn("%d symbols have stale data (>%.0fs old)" % (stale, c["FUNDING_STALE_SECONDS"]))
        if null_rate:
            self.report.error("%d symbols have NULL funding rate" % null_rate)
        if null_price:
            self.report.error("%d symbols have NULL mark price" % null_price)

        record = symbols.get(c["FUNDING_SPOT_CHECK_SYMBOL"])
        facts.record = record if isinstance(record, dict) else None
        facts.funding_state = symbols
        self.report.checks.update(
            connected=facts.connected,
            symbol_count=count,
            messages_received=messages if finite_number(messages) is not None else None,
            last_data_age_seconds=_round(facts.data_age),
            feed_health=verdict.status,
            feed_health_reasons=list(verdict.reasons),
            stale_symbols=stale,
            null_funding_rate=null_rate,
            null_mark_price=null_price,
        )
        return facts

    def check_coverage(self, universe: Optional[Mapping[str, Mapping[str, Any]]], symbols: Mapping[str, Any],
                       verdict: funding_health.HealthVerdict) -> None:
        """"N of M perpetuals (K TradFi)" against the daemon's universe; the missing ones by name."""
        expected = verdict.expected_count
        if universe is None or expected is None:
            self.report.checks["coverage"] = {"universe_known": False}
            for warning in verdict.warnings:
                if warning.startswith("universe_unknown:"):
                    self.report.warn("Coverage unknown: " + warning.split(":", 1)[1].strip())
            return
        missing = list(verdict.missing)
        tradfi = sum(1 for s, contract in universe.items()
                     if contract.get("contractType") == TRADIFI_CONTRACT_TYPE and s in symbols and s not in missing)
        served = expected - len(missing)
        self.report.add_info("%d of %d perpetuals (%d TradFi)" % (served, expected, tradfi))
        if missing:
            shown = missing[:funding_health.MISSING_NAMES_SHOWN]
            self.report.warn("%d perpetuals without fresh data: %s%s" % (
                len(missing), ", ".join(shown), ", ..." if len(missing) > len(shown) else ""))
        self.report.checks["coverage"] = {
            "universe_known": True, "expected": expected, "served": served, "tradfi_served": tradfi,
            "missing_count": len(missing), "missing": missing[:funding_health.MISSING_NAMES_SHOWN],
        }

    # the settlement history: a warning when it lags by more than two intervals (funding_health.judge_history_lag)
    def check_history(self, facts: FeedFacts) -> None:
        path = self.config["FUNDING_HISTORY_DB"]
        entry: Dict[str, Any] = {"path": path, "last_settlement_ms": None, "lag_seconds": None, "lagging": False,
                                 "error": None}
        self.report.checks["history"] = entry
        if not os.path.exists(path):
            entry["error"] = "not created yet"  # a deployment without the recorder, or before its first run
            return
        reader = HistoryReader(path)
        try:
            stored = reader.facts()
        except HistoryError as exc:
            entry["error"] = str(exc)
            self.report.warn("Settlement history unreadable: %s" % exc)
            return
        finally:
            reader.reset()
        records = []
        for record in facts.funding_state.values():
            settled = record.get("lastSettlement")
            next_ms = record.get("nextFundingTime")
            records.append((next_ms if is_whole_number(next_ms) else None, funding_terms.interval_or_default(record),
                            settled["fundingTime"] if settlement_ok(settled) else None))
        expected = funding_health.latest_expected_settlement(records, int(self.now * 1000))
        lag = funding_health.judge_history_lag(expected, stored.last_settlement_ms)
        entry.update(last_settlement_ms=stored.last_settlement_ms, lag_seconds=lag.lag_seconds, lagging=lag.lagging)
        newest = _clock(stored.last_settlement_ms / 1000.0) if stored.last_settlement_ms else "none yet"
        if lag.lagging:
            self.report.warn("Settlement history lags: newest settlement %s is %.0f s behind the latest one (%s), "
                             "more than two funding intervals (%.0f s); see journalctl -u funding-history-recorder"
                             % (newest, lag.lag_seconds or 0, _clock((lag.expected_ms or 0) / 1000.0),
                                lag.threshold_seconds or 0))
        else:
            self.report.add_info("Settlement history: newest settlement %s%s" % (
                newest, "" if lag.lag_seconds is None else ", %.0f s behind the latest" % lag.lag_seconds))

    def daemon_restart_reason(self, ws: UnitState, facts: FeedFacts) -> Optional[str]:
        if ws.stopped:
            return "unit is %s" % ws.state
        if not ws.active or facts.fresh(self.config["FUNDING_MAX_MESSAGE_AGE_SECONDS"]):
            return None  # unknown state, systemd busy with it, or healthy: never restart a healthy daemon
        if self.rest is None:
            self.report.add_info("FUNDING_REST_URL is off: an upstream outage cannot be told apart from a stuck daemon")
        elif not self.rest_reachable():
            self.report.upstream_outage = True
            self.report.error(
                "UPSTREAM OUTAGE: Binance REST is unreachable too (%s); not restarting the daemon, "
                "it reconnects by itself" % self._rest_ping_error
            )
            return None
        stuck_after = self.config["FUNDING_DAEMON_STUCK_SECONDS"]
        rest_answers = " while Binance REST answers" if self.rest is not None else ""
        if facts.no_data_for is None:
            self.report.warn("Cannot tell how long the daemon has been without data; not restarting it")
            return None
        if facts.no_data_for <= stuck_after:
            self.report.warn(
                "Daemon has had no data for %.0fs%s; it has until %.0fs to "
                "recover by itself before a restart" % (facts.no_data_for, rest_answers, stuck_after)
            )
            return None
        return "no market data for %.0fs%s" % (facts.no_data_for, rest_answers)

    def rest_reachable(self) -> bool:
        assert self.rest is not None
        try:
            elapsed = self.rest.ping()
        except RestError as exc:
            self._rest_ping_error = str(exc)
            self.report.checks["rest_ping"] = {"ok": False, "error": str(exc)}
            return False
        self.report.checks["rest_ping"] = {"ok": True, "error": None, "elapsed_ms": round(elapsed * 1000, 1)}
        return True

    # 7: the API answers
    def check_api_health(self) -> bool:
        """Report /funding/health; return False only if it did not answer at all."""
        entry: Dict[str, Any] = {"http_status": None, "status": None, "symbol_count": None, "error": None}
        self.report.checks["api_health"] = entry
        try:
            response = self.api.get("/funding/health", ok_statuses=(200, 503))
        except RestError as exc:
            entry["error"] = str(exc)
            self.report.error("API health check failed: %s" % exc)
            return exc.kind != RestError.UNREACHABLE
        entry["http_status"] = response.status
        body = response.body if isinstance(response.body, dict) else {}
        status = body.get("status") if isinstance(body.get("status"), str) else None
        entry["status"] = status
        if response.status == 200:
            self.report.add_info("API health check: %s" % (status or "ok"))
        else:
            reasons = body.get("reasons")
            detail = "; ".join(r for r in reasons if isinstance(r, str)) if isinstance(reasons, list) else ""
            self.report.error(
                "API health check: %s (HTTP %d%s)"
                % (status or "unhealthy", response.status, (": " + detail) if detail else "")
            )
        count = body.get("symbolCount")
        if finite_number(count) is not None:
            entry["symbol_count"] = count
            self.report.add_info("API reports %d symbols" % count)
        return True

    # 8: the spot check
    def check_spot(self, facts: FeedFacts) -> None:
        """The configured symbol, then a TradFi perpetual (they reach the daemon on their own streams)."""
        self.spot_check(self.config["FUNDING_SPOT_CHECK_SYMBOL"], facts.record, "spot_check")
        if facts.tradfi_symbol is not None and facts.tradfi_symbol != self.config["FUNDING_SPOT_CHECK_SYMBOL"]:
            self.spot_check(facts.tradfi_symbol, facts.tradfi_record, "spot_check_tradfi")

    def spot_check(self, symbol: str, record: Optional[Dict[str, Any]], key: str) -> None:
        result: Dict[str, Any] = {"symbol": symbol}
        self.report.checks[key] = result
        if self.rest is None:
            result["error"] = "FUNDING_REST_URL is off"
            self.report.add_info("Data quality check skipped: FUNDING_REST_URL is off")
            return
        if self.report.upstream_outage:
            result["error"] = "Binance REST unreachable"
            self.report.warn("Data quality check skipped: Binance REST is unreachable")
            return
        try:
            rest = self.rest.premium_index(symbol)
        except RestError as exc:
            result["error"] = str(exc)
            self.report.error("Data quality check failed: cannot get %s from Binance REST: %s" % (symbol, exc))
            return
        local, source = self.local_record(symbol, record)
        result["source"] = source
        if local is None:
            result["error"] = source
            self.report.error("Data quality check: %s not available locally (%s)" % (symbol, source))
            return
        self.compare(symbol, rest, local, result)

    def local_record(self, symbol: str, record: Optional[Dict[str, Any]]) -> "Tuple[Optional[Dict[str, Any]], str]":
        try:
            response = self.api.get("/funding/%s" % symbol)
            body = response.body
            if isinstance(body, dict) and finite_number(body.get("markPrice")) is not None:
                merged = dict(record or {})
                merged.update({k: v for k, v in body.items() if v is not None or k == "fundingRate"})
                return merged, "api"
            problem = "API answer has no markPrice"
        except RestError as exc:
            problem = "API: %s" % exc
        if record is not None:
            self.report.add_info("Data quality check: using the state file for %s (%s)" % (symbol, problem))
            return record, "state_file"
        return None, "%s; not in the state file either" % problem

    def compare(self, symbol: str, rest: PremiumIndex, local: Mapping[str, Any], result: Dict[str, Any]) -> None:
        c = self.config
        local_rate = local.get("fundingRate")
        local_price = local.get("markPrice")
        event_ms = local_event_ms(local)
        gap = abs(rest.time_ms - event_ms) / 1000.0 if event_ms is not None else None
        result.update(
            rest_funding_rate=rest.funding_rate,
            local_funding_rate=local_rate,
            rest_mark_price=rest.mark_price,
            local_mark_price=local_price,
            rest_time_ms=rest.time_ms,
            local_event_time_ms=event_ms,
            time_gap_seconds=_round(gap),
        )
        gap_note = ""
        if gap is None:
            gap_note = "; local data has no timestamp"
        elif gap > c["FUNDING_SPOT_TIME_GAP_SECONDS"]:
            gap_note = "; REST time and local eventTime are %.0fs apart" % gap

        verdict = judge_funding_rate(rest.funding_rate, local_rate, gap, c["FUNDING_SPOT_SAME_MOMENT_SECONDS"])
        result["funding_rate_verdict"] = verdict
        if verdict == "missing":
            self.report.error(
                "Data quality: %s funding rate missing (REST %s, local %s)" % (symbol, rest.funding_rate, local_rate)
            )
        elif verdict == "match":
            self.report.add_info("Data quality check: %s funding rate matches REST API" % symbol)
        else:
            diff = abs(rest.funding_rate - local_rate)
            result["funding_rate_diff"] = diff
            detail = "REST %.8f at %s, local %.8f at %s" % (
                rest.funding_rate, _clock(rest.time_ms / 1000.0), local_rate,
                _clock(event_ms / 1000.0) if event_ms is not None else "unknown time",
            )
            if verdict == "moved":
                self.report.warn(
                    "Data quality: %s funding rate moved between the two reads (%s, %.1fs apart)"
                    % (symbol, detail, gap)
                )
            elif verdict == "wrong":
                self.report.error(
                    "Data quality: %s funding rate differs from REST API by %.8f, far more than a live rate "
                    "moves between two reads (%s)" % (symbol, diff, detail)
                )
            else:
                self.report.error(
                    "Data quality: %s funding rate differs from REST API at the same moment (%s)" % (symbol, detail)
                )

        price = compare_price(
            rest.mark_price, local_price, c["FUNDING_PRICE_WARN_PERCENT"], c["FUNDING_PRICE_ERROR_PERCENT"]
        )
        if price.diff is None or price.percent is None:
            result["price_verdict"] = "missing"
            self.report.error("Data quality: %s has no local mark price" % symbol)
            return
        price_diff, percent, verdict = price.diff, price.percent, price.verdict
        result.update(price_diff=price_diff, price_diff_percent=percent, price_verdict=verdict)
        if verdict == "ok":
            self.report.add_info(
                "Data quality check: %s price diff $%.2f (%.3f%%)%s" % (symbol, price_diff, percent, gap_note)
            )
        elif verdict == "warning":
            self.report.warn(
                "Data quality: %s price differs by $%.2f (%.3f%%)%s" % (symbol, price_diff, percent, gap_note)
            )
        else:
            self.report.error(
                "Data quality: %s price differs by $%.2f (%.3f%%), more than %g%%%s"
                % (symbol, price_diff, percent, c["FUNDING_PRICE_ERROR_PERCENT"], gap_note)
            )

    # recovery
    def restart(self, unit: str, reason: str) -> None:
        action: Dict[str, Any] = {"unit": unit, "reason": reason, "result": None, "detail": None}
        self.report.restarts.append(action)
        if self.no_restart:
            action["result"] = "disabled"
            self.report.warn("Would restart %s (%s); auto-restart is off (--no-restart)" % (unit, reason))
            return
        if not self._history_loaded:
            self._history_loaded = True
            problem = self.history.load()
            if problem:
                self.report.warn(problem)
        now = time.time()
        recent = self.history.recent(unit, now)
        limit = self.config["FUNDING_MAX_RESTARTS"]
        if len(recent) >= limit:
            action["result"] = "limit_reached"
            self.report.error(
                "Restart limit reached for %s: %d restarts in the last %g minutes; not restarting it again "
                "(manual action required)" % (unit, len(recent), self.config["FUNDING_RESTART_WINDOW_MINUTES"])
            )
            return
        try:
            self.history.record(unit, now)
        except (OSError, ValueError) as exc:
            action["result"] = "history_error"
            action["detail"] = _short(exc)
            self.report.error(
                "Cannot record the restart in %s (%s); not restarting %s without a restart limit"
                % (self.history.path, _short(exc), unit)
            )
            return
        self.report.add_info("Attempting to restart %s (%s)..." % (unit, reason))
        error = self.systemctl.restart(unit)
        if error is None:
            state = self.wait_until_active(unit)
            if state.active:
                action["result"] = "restarted"
                self.report.add_info("✅ Successfully restarted %s" % unit)
                return
            error = "still %s after %gs" % (
                state.state or state.error, self.config["FUNDING_RESTART_WAIT_SECONDS"]
            )
        action["result"] = "failed"
        action["detail"] = error
        self.report.error("❌ Failed to restart %s: %s" % (unit, error))

    def wait_until_active(self, unit: str) -> UnitState:
        deadline = time.monotonic() + self.config["FUNDING_RESTART_WAIT_SECONDS"]
        while True:
            state = self.systemctl.is_active(unit)
            if state.active or state.error or time.monotonic() >= deadline:
                return state
            time.sleep(RESTART_POLL_SECONDS)


# --------------------------------------------------------------------------- after the checks: status and webhook


def announce(config: Mapping[str, Any], report: Report, log: Any, host: Optional[str] = None) -> None:
    """Save this check's verdict; send the webhook it owes, if any. Never raises, never waits past the timeout."""
    path = config["FUNDING_MONITOR_STATUS_FILE"]
    try:
        saved = MonitorStatus.load(path)
    except MonitorFileError as exc:
        report.warn("Monitor status %s; starting a new one" % exc)
        saved = MonitorStatus()
    status = "HEALTHY" if report.healthy else "UNHEALTHY"
    url = config["FUNDING_ALERT_WEBHOOK_URL"]
    alert = None
    if url is not None:
        alert = funding_alerts.due_alert(
            saved, status=status, reasons=report.errors, actions=report.restarts, now=report.started_at,
            min_interval_seconds=config["FUNDING_ALERT_MIN_INTERVAL_MINUTES"] * 60,
            host=host or socket.gethostname(),
        )
    if alert is not None:
        for kind in alert.kinds:
            saved.attempts[kind] = report.started_at
        delivery = funding_alerts.post_json(url, alert.payload, config["FUNDING_ALERT_TIMEOUT_SECONDS"])
        report.alert = {"kinds": list(alert.kinds), "delivered": delivery.delivered, "detail": delivery.detail}
        kinds = ",".join(alert.kinds)
        if delivery.delivered:
            saved.announced = status
            report.add_info("Webhook alert sent (%s): %s" % (kinds, delivery.detail))
            log_event(log, logging.INFO, "alert_sent", kinds=kinds, status=status, answer=delivery.detail)
        else:
            retry_min = config["FUNDING_ALERT_MIN_INTERVAL_MINUTES"]
            report.warn("Webhook alert (%s) not delivered: %s; next attempt after %g minutes"
                        % (kinds, delivery.detail, retry_min))
            log_event(log, logging.WARNING, "alert_failed", kinds=kinds, status=status, error=delivery.detail,
                      next_attempt_min=retry_min)
    saved.status, saved.checked_at, saved.reasons = status, report.started_at, list(report.errors)
    try:
        saved.save(path)
    except (OSError, ValueError) as exc:
        report.warn("Cannot save the monitor status in %s (%s)" % (path, _short(exc)))


def _mtime(path: str) -> Optional[float]:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of the report")
    parser.add_argument("--no-restart", action="store_true", help="only look: never restart a unit")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, config = funding_settings.load(
        PROG, "Check the funding data services, report, and restart what is broken (bounded).", SETTINGS, argv,
        add_arguments,
    )
    log = funding_settings.setup_logging(config["FUNDING_LOG_LEVEL"], PROG)
    monitor = HealthMonitor(config, no_restart=args.no_restart)
    try:
        report = monitor.run()
    except Exception as exc:  # a monitor must report, never die with a traceback
        log.debug("internal error", exc_info=True)
        log_event(log, logging.ERROR, "internal_error", error=str(exc))
        report = monitor.report
        report.error("Health check could not finish: internal error: %s" % exc)
    finally:
        monitor.close()
    # Each restart before the webhook's outcome: the order things happened in.
    for action in report.restarts:
        level = logging.INFO if action["result"] in ("restarted", "disabled") else logging.WARNING
        log_event(log, level, "restart", unit=action["unit"], reason=action["reason"], result=action["result"],
                  detail=action["detail"])
    if not args.no_restart:
        announce(config, report, log)
    log_event(log, logging.INFO if report.healthy else logging.WARNING, "check",
              status="HEALTHY" if report.healthy else "UNHEALTHY", errors=len(report.errors),
              warnings=len(report.warnings), restarts=len(report.restarts),
              upstream_outage=report.upstream_outage)
    if args.json:
        print(funding_json.dumps(report.to_json(), pretty=True).decode("utf-8"))
    else:
        print(report.render_text())
    sys.stdout.flush()
    return 0 if report.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
