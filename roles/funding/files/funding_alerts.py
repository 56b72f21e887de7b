"""The health monitor's webhook: when to tell the chat channel, what to say, and saying it without waiting long.

When: the status a receiver last got (`announced`) differs from this check's (HEALTHY -> UNHEALTHY -> HEALTHY),
or the monitor restarted (or refused to restart) a unit. At most one POST attempt per alert kind (HEALTHY,
UNHEALTHY, restart) per FUNDING_ALERT_MIN_INTERVAL_MINUTES: a flapping box or a failing receiver costs one
attempt per interval, not one per minute. A status whose alert was held back is announced at the first check
after the interval if it still holds, so the receiver never stays on a status the box left.

What: a Slack/Mattermost-compatible `text` plus structured fields (host, status, previous_status, reasons,
actions, checked_at, version).

How: one POST with FUNDING_ALERT_TIMEOUT_SECONDS as a hard bound on the whole exchange (a receiver that accepts
and never answers, or trickles bytes, costs at most that), no redirects followed (a 3xx is a failure), no retry.
The URL is a secret: nothing here ever puts it, or an exception text that might carry it, in a message.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional, Sequence

import funding_json
import requests
from funding_monitor_state import HEALTHY, MonitorStatus
from funding_rest import is_loopback_url
from funding_version import VERSION

RESTART = "restart"
# Restart outcomes worth a message: a unit was restarted, could not be, or the budget refused it.
ANNOUNCED_ACTIONS = ("restarted", "failed", "limit_reached", "history_error")
ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] [A-Za-z ]+")


@dataclass(frozen=True)
class Alert:
    kinds: Sequence[str]  # the alert kinds this one POST announces (HEALTHY/UNHEALTHY and/or restart)
    payload: Dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    detail: str  # "HTTP 200", "no answer within 5 s", ... never the URL


def due_alert(
    saved: MonitorStatus,
    *,
    status: str,
    reasons: Sequence[str],
    actions: Sequence[Mapping[str, Any]],
    now: float,
    min_interval_seconds: float,
    host: str,
) -> Optional[Alert]:
    """The alert this check owes the receiver, or None."""
    kinds: List[str] = []
    previous = saved.announced or HEALTHY  # a fresh install is presumed healthy: its first healthy check is quiet

    def allowed(kind: str) -> bool:
        last = saved.attempts.get(kind)
        return last is None or not (now - min_interval_seconds < last <= now)

    if status != previous and allowed(status):
        kinds.append(status)
    notable = [dict(a) for a in actions if a.get("result") in ANNOUNCED_ACTIONS]
    if notable and allowed(RESTART):
        kinds.append(RESTART)
    if not kinds:
        return None
    payload = build_payload(host, status=status, previous=previous, reasons=reasons, actions=notable, now=now)
    return Alert(kinds, payload)


def build_payload(
    host: str,
    *,
    status: str,
    previous: str,
    reasons: Sequence[str],
    actions: Sequence[Mapping[str, Any]],
    now: float,
) -> Dict[str, Any]:
    icon = ":white_check_mark:" if status == HEALTHY else ":rotating_light:"
    change = "%s (was %s)" % (status, previous) if status != previous else status
    lines = ["%s binance-funding on %s: %s" % (icon, host, change)]
    lines += ["- %s" % reason for reason in reasons[:10]]
    if len(reasons) > 10:
        lines.append("- ... and %d more" % (len(reasons) - 10))
    for action in actions:
        lines.append("- action: restart %s (%s): %s%s" % (
            action.get("unit"), action.get("reason"), action.get("result"),
            (": %s" % action["detail"]) if action.get("detail") else ""))
    return {
        "text": "\n".join(lines),
        "host": host,
        "status": status,
        "previous_status": previous,
        "reasons": list(reasons),
        "actions": [
            {k: action.get(k) for k in ("unit", "reason", "result", "detail")} for action in actions
        ],
        "checked_at": now,
        "timestamp": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": "binance-funding health monitor",
        "version": VERSION,
    }


def describe_failure(exc: BaseException, timeout: float) -> str:
    """Why a POST failed, in words that never carry the URL (requests puts it in most of its messages)."""
    if isinstance(exc, requests.Timeout):
        return "no answer within %g s" % timeout
    if isinstance(exc, requests.ConnectionError):
        match = ERRNO_TEXT.search(str(exc))
        if match:
            return "cannot connect (%s)" % match.group(0).strip()
        if "BadStatusLine" in str(exc) or "RemoteDisconnected" in str(exc):
            return "the receiver's answer is not HTTP"
        return "cannot connect (%s)" % type(exc).__name__
    return "request failed (%s)" % type(exc).__name__


def post_json(url: str, payload: Mapping[str, Any], timeout: float) -> Delivery:
    """POST payload as JSON; the whole exchange, from connecting to reading the answer, bounded by `timeout`."""
    outcome: List[Delivery] = []
    body = funding_json.dumps(dict(payload))

    def send() -> None:
        try:
            with requests.Session() as session:
                # A proxy from the environment must never see loopback traffic.
                session.trust_env = not is_loopback_url(url)
                response = session.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json", "User-Agent": "binance-funding/%s" % VERSION},
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                )
                response.close()  # the answer's body is never needed
            status = response.status_code
            if 200 <= status < 300:
                outcome.append(Delivery(True, "HTTP %d" % status))
            elif 300 <= status < 400:
                outcome.append(Delivery(False, "HTTP %d redirect, not followed" % status))
            else:
                outcome.append(Delivery(False, "HTTP %d" % status))
        except (OSError, requests.RequestException, ValueError) as exc:
            outcome.append(Delivery(False, describe_failure(exc, timeout)))
        except Exception as exc:  # a webhook must never take the monitor down
            outcome.append(Delivery(False, "request failed (%s)" % type(exc).__name__))

    worker = threading.Thread(target=send, name="webhook", daemon=True)
    worker.start()
    worker.join(timeout)
    if outcome:
        return outcome[0]
    # Still waiting (a receiver that accepted and trickles, or requests' own timeout is about to fire: the same
    # outcome either way): the thread is a daemon and dies with this oneshot process.
    return Delivery(False, "no answer within %g s" % timeout)
