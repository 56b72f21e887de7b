"""The Prometheus rules and the Grafana dashboard the role ships: promtool's checks and unit tests, an importable
dashboard, and every metric either names appearing in a real /metrics scrape.

The scrape is the whole chain on loopback: the simulated exchange, the daemon writing the state file, the API serving
it, and one health-monitor run (with the fake systemd) writing the files whose restarts and verdict the API exposes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Set

import promql_parser
import pytest
import yaml
from fakes.support import API_UNIT, WS_UNIT, FakeSystemd, run_program
from prometheus_client.parser import text_string_to_metric_families
from sim_client import FAST_ARGS, start_simulator
from test_api_support import start_api, wait_until

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "roles" / "funding" / "files" / "prometheus" / "funding.rules.yml"
RULE_TESTS = REPO / "tests" / "prometheus" / "funding.rules.test.yml"
DASHBOARD = REPO / "roles" / "funding" / "files" / "grafana" / "binance-funding.json"
DAEMON = REPO / "roles" / "funding" / "files" / "binance_funding_ws_daemon.py"
# Series Prometheus makes itself for every target, not the API.
SCRAPE_SERIES = {"up"}
# Grafana's interval variables, replaced by a duration so the expression parses as PromQL.
GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: scripts/test.sh installs Debian's prometheus package (apt-get install "
                    "prometheus) when it runs as root; install it, or run make test")
    return path


def test_promtool_accepts_the_rules_file():
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_every_rule_pass():
    done = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                          timeout=120, check=False, cwd=str(RULE_TESTS.parent))
    assert done.returncode == 0, done.stdout + done.stderr


def _rules() -> List[Dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_every_alert_is_tested_both_firing_and_quiet():
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in _rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        firing = [case for case in mine if case.get("exp_alerts")]
        assert firing, "%s never fires in a test" % rule["alert"]
        # Quiet: an evaluation that expects nothing, or a firing case whose input has a series ("good") left out.
        tests = [t for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
                 if any(c["alertname"] == rule["alert"] for c in t["alert_rule_test"])]
        quiet = any(not case.get("exp_alerts") for case in mine) or any(
            'instance="good"' in series["series"] for t in tests for series in t["input_series"])
        assert quiet, "%s is never shown staying quiet" % rule["alert"]


def test_every_alert_has_a_severity_and_a_summary():
    for rule in _rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


# --------------------------------------------------------------------------- the dashboard


def _dashboard() -> Dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: Dict) -> Iterable[Dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_the_dashboard_is_importable_with_the_data_source_as_a_variable():
    dashboard = _dashboard()
    inputs = dashboard["__inputs"]
    assert [(i["name"], i["type"], i["pluginId"]) for i in inputs] == [("DS_PROMETHEUS", "datasource", "prometheus")]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert dashboard["uid"] and dashboard["title"] and "id" not in dashboard
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_the_dashboard_shows_what_the_issue_asks_for():
    titles = " | ".join(panel["title"] for panel in _panels(_dashboard())).lower()
    for wanted in ("data age", "coverage", "reconnects", "disconnect reasons", "request rate by route",
                   "latency by route", "rejects by reason", "monitor restarts"):
        assert wanted in titles, wanted


def _dashboard_expressions() -> List[str]:
    dashboard = _dashboard()
    expressions = [t["expr"] for p in _panels(dashboard) if p["type"] != "row" for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), \w+\)", variable.get("definition", ""))
        if match:
            expressions.append(match.group(1))
    return expressions


def metric_names(expression: str) -> Set[str]:
    """Every metric an expression selects, from PromQL's own syntax tree (functions, labels and keywords are not)."""
    for variable, duration in GRAFANA_DURATIONS.items():
        expression = expression.replace(variable, duration)
    names: Set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next((m.value for m in node.matchers.matchers if m.name == "__name__"), None)
            assert name, "a selector without a metric name: %s" % expression
            names.add(name)

    promql_parser.walk(promql_parser.parse(expression), visit)
    return names


def test_the_metric_name_extraction_sees_selectors_only():
    assert metric_names(
        'histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{job="$job", route!="sum"}[$__rate_interval])))'
        " / on(instance) group_left b_total offset 5m + time() - c"
    ) == {"a_bucket", "b_total", "c"}


@pytest.fixture(scope="module")
def scraped_names(simulator_factory_module, tmp_path_factory) -> Set[str]:
    workdir = tmp_path_factory.mktemp("scrape")
    state_file = workdir / "state" / ".funding_state.json"
    sim = simulator_factory_module
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNDING_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update(FUNDING_WS_URL=sim.ws_url("stream"), FUNDING_REST_URL=sim.rest_url, FUNDING_STATE_FILE=str(state_file),
               FUNDING_WRITE_HEARTBEAT_SECONDS="0.5", PYTHONUNBUFFERED="1")
    with open(workdir / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([sys.executable, str(DAEMON)], env=env, stdout=log, stderr=subprocess.STDOUT)
    monitor_files = {"FUNDING_MONITOR_STATE_FILE": str(workdir / "monitor-restarts.json"),
                     "FUNDING_MONITOR_STATUS_FILE": str(workdir / "monitor-status.json")}
    api = None
    try:
        assert wait_until(lambda: state_file.exists() and len(json.loads(state_file.read_text())["funding_state"])
                          > 500, deadline=60), (workdir / "daemon.log").read_text()
        api = start_api(state_file, env=monitor_files)
        systemd = FakeSystemd(workdir / "systemd")
        systemd.set_state(WS_UNIT, "active")
        systemd.set_state(API_UNIT, "active")
        checked = run_program("funding_health_monitor.py", {
            **monitor_files, **systemd.env(), "FUNDING_STATE_FILE": str(state_file),
            "FUNDING_API_URL": api.url(""), "FUNDING_REST_URL": sim.rest_url})
        assert Path(monitor_files["FUNDING_MONITOR_STATUS_FILE"]).exists(), checked.stdout + checked.stderr
        for target in ("/funding/health", "/funding/BTCUSDT", "/funding/NOSUCHUSDT", "/funding"):
            api.get(target)
        reply = api.get("/metrics")
        assert reply.status == 200
        return {sample.name for family in text_string_to_metric_families(reply.body.decode("utf-8"))
                for sample in family.samples}
    finally:
        if api is not None:
            api.close()
        daemon.terminate()
        daemon.wait(15)


@pytest.fixture(scope="module")
def simulator_factory_module(tmp_path_factory):
    running = start_simulator(FAST_ARGS, log_dir=tmp_path_factory.mktemp("simulator"))
    yield running.client
    running.stop()


def test_every_metric_the_dashboard_queries_is_in_a_real_scrape(scraped_names):
    wanted = set().union(*(metric_names(e) for e in _dashboard_expressions()))
    assert sorted(wanted - scraped_names - SCRAPE_SERIES) == []


def test_every_metric_the_alert_rules_use_is_in_a_real_scrape(scraped_names):
    wanted = set().union(*(metric_names(rule["expr"]) for rule in _rules()))
    assert sorted(wanted - scraped_names - SCRAPE_SERIES) == []


def test_the_scrape_carries_the_monitors_restart_budget_and_verdict(scraped_names):
    assert {"funding_monitor_restarts_total", "funding_monitor_restart_budget_remaining",
            "funding_monitor_last_check_timestamp_seconds", "funding_monitor_healthy"} <= scraped_names
