"""Shared helpers on sys.path, the results table, and the box-side tools of the resilience scenario.

Every case records one row (case, expected, observed, time to recover, verdict) with the `case_row` fixture; the
rows are written to resilience-results.json next to Molecule's ephemeral files and printed as a table at the end of
the run (pytest_terminal_summary), so the table appears in `molecule test` output.

The scenario has two boxes (molecule.yml): Debian 12 runs every case; a box in the inventory group
`resilience_core` (Debian 13) runs the core cases (CORE_CASES) only, the others are deselected for it at collection
(pytest reports them as deselected, not as passed or skipped).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
if str(SHARED) not in sys.path:
    sys.path.insert(0, str(SHARED))

HERE = Path(__file__).resolve().parent
BOX_TOOLS = "/opt/resilience"
TOOLS = ("box_probe.py", "resilience_reader.py", "resilience_injector.py")
RESULTS_FILE = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp")) / "resilience-results.json"

ROWS: List[Dict[str, Any]] = []

# The inventory group whose boxes run only the core cases: kill -9 of each service, the stall, the outage, the full
# disk, the reboot with a persistent state directory, and the reader's verdict over them.
CORE_GROUP = "resilience_core"
CORE_CASES = (
    "test_case_01_daemon_killed_is_restarted_by_systemd_and_fresh_within_10_s",
    "test_case_02_api_killed_is_back_within_10_s",
    "test_case_04_stalled_socket_is_replaced_within_no_data_seconds_plus_backoff",
    "test_case_05_exchange_down_3_minutes",
    "test_case_10_disk_full_keeps_the_old_file_and_recovers",
    "test_case_r_no_reader_ever_saw_a_torn_file_a_wrong_price_or_a_traceback",
    "test_case_11_after_a_reboot_everything_is_enabled_and_healthy_with_no_manual_step",
)


def container(host) -> str:
    """The box's container name: Molecule's inventory names each host after its container."""
    return host.backend.host


def platform(host) -> str:
    """`debian 12`, `debian 13`: the box's os-release, for the results table."""
    info = host.system_info
    return "%s %s" % (info.distribution, info.release)


def pytest_collection_modifyitems(config, items):
    """A core box gets the core cases only; every other box gets everything."""
    keep, drop = [], []
    core_of: Dict[str, bool] = {}
    for item in items:
        testinfra_host = getattr(item, "callspec", None) and item.callspec.params.get("_testinfra_host")
        if getattr(testinfra_host, "backend", None) is None:
            keep.append(item)
            continue
        name = testinfra_host.backend.host
        if name not in core_of:
            core_of[name] = CORE_GROUP in testinfra_host.backend.get_variables().get("group_names", [])
        (drop if core_of[name] and item.originalname not in CORE_CASES else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class Row:
    def __init__(self, case: str, expected: str) -> None:
        self.case = case
        self.expected = expected
        self.observed = ""
        self.recovered_in: Optional[float] = None
        self.verdict = "PASS"

    def as_dict(self) -> Dict[str, Any]:
        return {"case": self.case, "expected": self.expected, "observed": self.observed,
                "recover": None if self.recovered_in is None else round(self.recovered_in, 1), "verdict": self.verdict}


def _save_rows() -> None:
    with contextlib.suppress(OSError):
        RESULTS_FILE.write_text(json.dumps(ROWS, indent=1))


@pytest.fixture
def case_row(host):
    """`with case_row("1 kill -9 daemon", "restarted, fresh <= 10 s") as row:` ... set row.observed/recovered_in.
    The row's case names the box's platform."""

    @contextlib.contextmanager
    def open_row(case: str, expected: str) -> Iterator[Row]:
        row = Row("%s (%s)" % (case, platform(host)), expected)
        try:
            yield row
        except BaseException as exc:
            row.verdict = "FAIL"
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            row.observed = (row.observed + "; " if row.observed else "") + first_line[:200]
            raise
        finally:
            ROWS.append(row.as_dict())
            _save_rows()
            print("\n[resilience] %s: %s" % (row.case, row.verdict))

    return open_row


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ARG001
    outcome = yield
    report = outcome.get_result()
    setattr(item, "report_" + report.when, report)


DIAGNOSED_UNITS = ("binance-funding-ws", "binance-funding-api", "funding-health-check", "binance-simulator")


@pytest.fixture(autouse=True)
def journals_on_failure(request, host):
    """When a case fails, the units' state and the end of their journals go into the report (the box is destroyed
    at the end of `molecule test`)."""
    started = time.time()
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed:
        return
    lines = [host.run("systemctl --no-pager list-units --all 'binance-*' 'funding-*' | head -12").stdout]
    for unit in DIAGNOSED_UNITS:
        lines.append("--- journalctl -u %s (during the test, last 25 lines)" % unit)
        lines.append(host.run("journalctl -u %s --no-pager -o short-unix --since @%d | tail -25 | cut -c1-230"
                              % (unit, started - 5)).stdout)
    print("\n".join(lines))


def _order(row: Dict[str, Any]) -> tuple:
    """Fault cases 1-12 by number, then the reader's verdict, then the security checks."""
    case = row["case"].split()[0]
    if case.isdigit():
        return (0, int(case), row["case"])
    if case.startswith("S") and case[1:].isdigit():
        return (2, int(case[1:]), row["case"])
    return (1, 0, row["case"])


def _wrap(text: str, width: int) -> List[str]:
    words, lines, line = text.split(), [], ""
    for whole in words:
        word = whole
        while len(word) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:width])
            word = word[width:]
        if len(line) + len(word) + (1 if line else 0) > width:
            lines.append(line)
            line = word
        else:
            line = (line + " " + word).strip()
    if line or not lines:
        lines.append(line)
    return lines


def render_table(rows: List[Dict[str, Any]]) -> str:
    """At most 76 columns wide: Molecule wraps its output at 80, and a wrapped table is unreadable."""
    widths = (16, 43, 7)
    separator = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [separator, "| %s | %s | %s |" % ("case".ljust(widths[0]), "expected / observed".ljust(widths[1]),
                                            "recover".ljust(widths[2])), separator]
    for row in rows:
        recover = "-" if row["recover"] is None else "%.1f s" % row["recover"]
        case = _wrap(row["case"], widths[0]) + _wrap(row["verdict"], widths[0])
        text = ["exp: " + line if index == 0 else "     " + line
                for index, line in enumerate(_wrap(row["expected"], widths[1] - 5))]
        text += ["obs: " + line if index == 0 else "     " + line
                 for index, line in enumerate(_wrap(row["observed"] or "-", widths[1] - 5))]
        cells = [case, text, [recover]]
        for index in range(max(len(c) for c in cells)):
            out.append("| " + " | ".join((c[index] if index < len(c) else "").ljust(w)
                                         for c, w in zip(cells, widths)) + " |")
        out.append(separator)
    return "\n".join(out)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if not ROWS:
        return
    terminalreporter.section("resilience: fault matrix and security checks")
    terminalreporter.write_line(render_table(sorted(ROWS, key=_order)))
    terminalreporter.write_line("(rows also in $MOLECULE_EPHEMERAL_DIRECTORY/%s)" % RESULTS_FILE.name)


# --- the box ------------------------------------------------------------------------------------------------------


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], check=False, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError("docker %s failed (%d): %s" % (" ".join(args), result.returncode, result.stderr.strip()))
    return result


@pytest.fixture(scope="module")
def box_tools(host):
    """The probe, reader and injector scripts, copied into the box (once per test module)."""
    host.run("mkdir -p %s" % BOX_TOOLS)
    for name in TOOLS:
        docker("cp", str(HERE / name), "%s:%s/%s" % (container(host), BOX_TOOLS, name))
    host.run("chmod 0755 %s && chmod 0644 %s/*.py && chown -R root:root %s" % (BOX_TOOLS, BOX_TOOLS, BOX_TOOLS))
    return BOX_TOOLS


def probe(host, *args: str, timeout: float = 120) -> Dict[str, Any]:
    """Run box_probe.py in the box and return its JSON answer."""
    arguments = " ".join(shlex.quote(argument) for argument in args)
    command = "timeout %d python3 %s/box_probe.py %s" % (timeout + 10, BOX_TOOLS, arguments)
    result = host.run(command)
    assert result.rc == 0, "%s: rc %d %s %s" % (command, result.rc, result.stdout[-500:], result.stderr[-1000:])
    return json.loads(result.stdout)


def unit_property(host, unit: str, name: str) -> str:
    return host.check_output("systemctl show -p %s --value %s" % (name, unit)).strip()


def main_pid(host, unit: str) -> int:
    return int(unit_property(host, unit, "MainPID") or 0)


def restarts(host, unit: str) -> int:
    return int(unit_property(host, unit, "NRestarts") or 0)


def sim_fault(host, name: str, **params: Any) -> Dict[str, Any]:
    body = json.dumps({"fault": name, **params})
    result = host.run("curl -s -X POST -H 'Content-Type: application/json' --data-raw '%s' "
                      "http://127.0.0.1:9000/_sim/fault" % body)
    answer = json.loads(result.stdout)
    assert answer.get("ok"), answer
    return answer


def sim_clear(host) -> None:
    result = host.run("curl -s -X POST http://127.0.0.1:9000/_sim/clear")
    assert json.loads(result.stdout).get("ok"), result.stdout


def now() -> float:
    return time.time()
