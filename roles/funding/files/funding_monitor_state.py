"""What the health monitor keeps between its runs: the restart history and the last check's status.

The monitor runs as a oneshot every minute, so everything it must remember lives in two small JSON files in the
state directory, each written atomically (write_state_atomic): a crash mid-write leaves the previous file.
The API reads both (read-only) to expose the monitor's restarts and verdicts on /metrics.

  restart history (FUNDING_MONITOR_STATE_FILE):
    {"restarts": {unit: [epoch, ...]},   restarts within the window (the restart budget)
     "totals": {unit: n}}                every restart ever recorded (a Prometheus counter)
  status (FUNDING_MONITOR_STATUS_FILE):
    {"status": "HEALTHY"|"UNHEALTHY", "checked_at": epoch, "reasons": [...],
     "announced": status the webhook last delivered, "attempts": {alert kind: epoch of the last POST attempt}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import funding_json
from funding_state import finite_number, write_state_atomic

HEALTHY = "HEALTHY"
UNHEALTHY = "UNHEALTHY"
STATUSES = (HEALTHY, UNHEALTHY)
# A restart stamped up to this far in the future (a clock step back) still counts against the budget.
CLOCK_SKEW_SECONDS = 60.0


class MonitorFileError(ValueError):
    """A monitor file that exists but cannot be used; the caller starts afresh and says so."""


def _load_json(path: str) -> Optional[Any]:
    """The parsed file, None when it does not exist; MonitorFileError when unreadable or not JSON."""
    try:
        with open(path, "rb") as handle:
            return funding_json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
        raise MonitorFileError("%s was unreadable (%s)" % (path, detail)) from None


def _count(value: Any) -> Optional[int]:
    number = finite_number(value)
    return int(number) if number is not None and number >= 0 and number == int(number) else None


class RestartHistory:
    """When each unit was restarted, within the window, and how often ever."""

    def __init__(self, path: str, window_seconds: float) -> None:
        self.path = path
        self.window_seconds = window_seconds
        self.restarts: Dict[str, List[float]] = {}
        self.totals: Dict[str, int] = {}

    def load(self) -> Optional[str]:
        """Read the file; return a warning if it was unusable and has been reset."""
        try:
            payload = _load_json(self.path)
        except MonitorFileError as exc:
            return "Restart history %s; starting a new one" % exc
        if payload is None:
            return None
        restarts = payload.get("restarts") if isinstance(payload, dict) else None
        if not isinstance(restarts, dict) or not all(
            isinstance(times, list) and all(finite_number(t) is not None for t in times) for times in restarts.values()
        ):
            return "Restart history %s was not in the expected format; starting a new one" % self.path
        self.restarts = {str(unit): [float(t) for t in times] for unit, times in restarts.items()}
        totals = payload.get("totals")
        counted = {str(u): _count(n) for u, n in totals.items()} if isinstance(totals, dict) else {}
        # A file from before the totals existed: what it holds is the least that happened.
        self.totals = {u: max(counted.get(u) or 0, len(times)) for u, times in self.restarts.items()}
        self.totals.update({u: n for u, n in counted.items() if n is not None and u not in self.totals})
        return None

    def recent(self, unit: str, now: float) -> List[float]:
        return [t for t in self.restarts.get(unit, []) if now - self.window_seconds < t <= now + CLOCK_SKEW_SECONDS]

    def record(self, unit: str, now: float) -> None:
        """Add a restart and save; raise OSError if it cannot be saved."""
        pruned = {u: self.recent(u, now) for u in self.restarts}
        pruned[unit] = [*pruned.get(unit, []), now]
        totals = dict(self.totals)
        totals[unit] = totals.get(unit, 0) + 1
        write_state_atomic(
            self.path, {"restarts": {u: times for u, times in pruned.items() if times}, "totals": totals}
        )
        self.restarts = pruned
        self.totals = totals


@dataclass
class MonitorStatus:
    """The last check's verdict and the webhook's bookkeeping."""

    status: Optional[str] = None
    checked_at: Optional[float] = None
    reasons: List[str] = field(default_factory=list)
    announced: Optional[str] = None
    attempts: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> "MonitorStatus":
        """The saved status; an empty one when the file does not exist; MonitorFileError when unusable."""
        payload = _load_json(path)
        if payload is None:
            return cls()
        if not isinstance(payload, dict):
            raise MonitorFileError("%s is not a JSON object" % path)
        status = payload.get("status") if payload.get("status") in STATUSES else None
        announced = payload.get("announced") if payload.get("announced") in STATUSES else None
        reasons = [r for r in payload.get("reasons") or [] if isinstance(r, str)] if isinstance(
            payload.get("reasons"), list) else []
        attempts_raw = payload.get("attempts")
        attempts = {
            str(kind): float(t) for kind, t in attempts_raw.items() if finite_number(t) is not None
        } if isinstance(attempts_raw, dict) else {}
        return cls(status, finite_number(payload.get("checked_at")), reasons, announced, attempts)

    def save(self, path: str) -> None:
        """Write atomically; raise OSError/ValueError when it cannot be written."""
        write_state_atomic(
            path,
            {
                "status": self.status,
                "checked_at": self.checked_at,
                "reasons": list(self.reasons),
                "announced": self.announced,
                "attempts": dict(self.attempts),
            },
        )


@dataclass(frozen=True)
class MonitorFiles:
    """Where a reader (the API's /metrics) finds the monitor's files, and the budget they are judged by."""

    restart_file: str
    status_file: str
    window_seconds: float
    max_restarts: int
    units: Tuple[str, ...]
