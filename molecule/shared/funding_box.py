"""Helpers for the testinfra suites: talk to the deployed box through the testinfra host."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import yaml
from prometheus_client.parser import text_string_to_metric_families

API = "http://127.0.0.1:8888"
SIMULATOR = "http://127.0.0.1:9000"
UNITS = ("binance-funding-ws.service", "binance-funding-api.service")
ALL_UNITS = UNITS + ("binance-funding-api.socket", "funding-health-check.service", "funding-health-check.timer",
                     "funding-history-recorder.service", "funding-history-recorder.timer")


ROLE_DEFAULTS = Path(__file__).resolve().parents[2] / "roles" / "funding" / "defaults" / "main.yml"


def deployment(host: Any) -> Dict[str, Any]:
    """The role's variables for this host: its inventory's values over the role defaults."""
    values = yaml.safe_load(ROLE_DEFAULTS.read_text())
    values.update({k: v for k, v in host.ansible.get_variables().items() if k in values})
    values["state_file"] = "%s/%s" % (values["funding_state_dir"], values["funding_state_file_name"])
    return values


def http(host: Any, url: str, method: str = "GET", data: str = "") -> Tuple[int, str]:
    """(status, body) of a request made inside the box with curl."""
    cmd = "curl -s -o /tmp/.funding-body -w '%%{http_code}' -X %s %s '%s'; echo; cat /tmp/.funding-body" % (
        method,
        ("--data-raw '%s' -H 'Content-Type: application/json'" % data) if data else "",
        url,
    )
    out = host.run(cmd).stdout
    status, _, body = out.partition("\n")
    return int(status or 0), body


def get_json(host: Any, url: str) -> Tuple[int, Dict[str, Any]]:
    status, body = http(host, url)
    try:
        return status, json.loads(body)
    except ValueError:
        raise AssertionError("%s answered %s with a body that is not JSON: %r" % (url, status, body[:500])) from None


def metric(host: Any, name: str, **labels: str) -> Optional[float]:
    """One sample of the API's /metrics in the box, parsed by Prometheus' own parser; None when it is not there."""
    status, body = http(host, API + "/metrics")
    assert status == 200, body[:300]
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def journal(host: Any, unit: str, lines: int = 60) -> str:
    return host.run("journalctl -u %s -n %d --no-pager -o cat" % (unit, lines)).stdout


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 1.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %.0f s waiting for %s (last: %r)" % (timeout, what, last))


def exposure(host: Any, unit: str) -> float:
    """systemd-analyze security's overall exposure score of a unit."""
    out = host.run("systemd-analyze security --no-pager %s" % unit).stdout
    # "→ Overall exposure level for x.service: 1.6 OK :-)"
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert match, out
    return float(match.group(1))
