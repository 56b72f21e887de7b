"""After the rollout stopped at the second host: the first serves, the second failed its verify, the third is as the
check-mode pass and the rollout left it: without a trace of binance-funding."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import testinfra
from funding_box import ALL_UNITS, API, SIMULATOR, UNITS, get_json, http, journal

FIRST, SECOND, THIRD = "funding-fleet-1", "funding-fleet-2", "funding-fleet-3"
ROLLOUT_LOG = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "rollout.log"


@pytest.fixture(scope="module")
def fleet(request):
    """The three hosts by name (each test is about one of them, so none is parametrized over all three)."""
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host("ansible://" + name, ansible_inventory=inventory) for name in (FIRST, SECOND, THIRD)
    }


def test_the_first_host_keeps_serving(fleet):
    host = fleet[FIRST]
    for unit in UNITS:
        assert host.service(unit).is_running, journal(host, unit)
    status, body = get_json(host, API + "/funding/health")
    assert status == 200 and body["status"] in ("healthy", "degraded"), body
    assert get_json(host, API + "/funding/BTCUSDT")[0] == 200


def test_the_second_host_was_deployed_and_failed_its_own_verify(fleet):
    host = fleet[SECOND]
    assert host.file("/etc/binance-funding/funding.env").contains('FUNDING_MIN_SYMBOLS="100000"')
    log = ROLLOUT_LOG.read_text()
    # The monitor's report (stdout) and the failed assertion (stderr) of the second host's verify.
    assert re.search(r"Only \d+ symbols tracked \(expected at least 100000\)", log), log[-3000:]
    assert "binance-funding is not healthy" in log, log[-3000:]


def test_the_third_host_was_never_touched_by_the_check_pass_or_the_rollout(fleet):
    host = fleet[THIRD]
    for path in ("/opt/binance-funding", "/etc/binance-funding", "/var/lib/binance-funding",
                 "/etc/sudoers.d/funding-health-monitor"):
        assert not host.file(path).exists, path
    for unit in ALL_UNITS:
        assert not host.file("/etc/systemd/system/" + unit).exists, unit
    assert not host.user("funding").exists
    # The host itself is fine: the simulated exchange prepared on it is up.
    assert http(host, SIMULATOR + "/fapi/v1/ping")[0] == 200


def test_the_rollout_went_host_by_host_and_stopped_at_the_failure():
    log = ROLLOUT_LOG.read_text()
    first, second = log.find("[%s]" % FIRST), log.find("[%s]" % SECOND)
    assert 0 <= first < second, "hosts not rolled out one after the other"
    assert "[%s]" % THIRD not in log


def test_the_rollout_ran_with_the_ansible_core_it_was_given():
    """make test gives the oldest supported ansible-core (requirements-ansible-oldest.txt); rollout.log's first line
    is that controller's `ansible-playbook --version`."""
    expected = os.environ.get("FUNDING_FLEET_ANSIBLE_CORE")
    first_line = ROLLOUT_LOG.read_text().splitlines()[0]
    assert first_line.startswith("ansible-playbook [core "), first_line
    if expected:
        assert "[core %s]" % expected in first_line, first_line
