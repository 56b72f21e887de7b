"""Case 11 of issue 7: the container restarted (a reboot). Everything comes back enabled and healthy by itself.

The tests run on the controller, so the reboot is `docker restart` of the box; nothing is done inside it afterwards
except looking.
"""

from __future__ import annotations

import time

from conftest import CONTAINER, docker, probe
from funding_box import ALL_UNITS, API, SIMULATOR, get_json, wait_for

BOOT_TIMEOUT = 120


def test_case_11_after_a_reboot_everything_is_enabled_and_healthy_with_no_manual_step(host, box_tools, case_row):
    with case_row("11 reboot (docker restart)", "everything enabled, running and healthy, no manual step") as row:
        rebooted_at = time.time()
        docker("restart", "-t", "30", CONTAINER, timeout=120)

        def booted():
            result = docker("exec", CONTAINER, "systemctl", "is-system-running", check=False, timeout=30)
            state = result.stdout.strip()
            return state if state in ("running", "degraded") else None

        system_state = wait_for(booted, timeout=BOOT_TIMEOUT, interval=1, what="systemd in the box to finish booting")
        back = probe(host, "api", "--since", "%.3f" % rebooted_at, "--timeout", "120", timeout=130)
        expected = get_json(host, SIMULATOR + "/_sim/status")[1]["perpetualCount"]

        def serving_everything():
            status, body = get_json(host, API + "/funding/health")
            return status == 200 and body["symbolCount"] == expected and body

        health = wait_for(serving_everything, timeout=60, interval=1, what="health 200 with every perpetual")
        recovered = time.time() - rebooted_at

        def same_as_simulator():
            simulated = get_json(host, SIMULATOR + "/_sim/symbols?symbols=BTCUSDT")[1]["BTCUSDT"]
            status, served = get_json(host, API + "/funding/BTCUSDT")
            return status == 200 and served["markPrice"] == simulated["markPrice"]

        wait_for(same_as_simulator, timeout=30, interval=0.5, what="BTCUSDT to equal the simulator's")
        # The monitor's and the recorder's services are oneshots their timers start: neither runs between runs.
        units = {unit: (host.service(unit).is_enabled, host.service(unit).is_running) for unit in ALL_UNITS
                 if not unit.endswith(("check.service", "recorder.service"))}
        failed = host.check_output("systemctl list-units --failed --plain --no-legend").strip()
        row.recovered_in = back["elapsed"]
        row.observed = "systemd %s; health 200 after %.1f s, %d symbols after %.1f s; BTCUSDT = simulator; " \
            "enabled+running: %s; failed units: %s" % (
                system_state, back["elapsed"], health["symbolCount"], recovered,
                ", ".join(unit.split(".")[0] for unit, (enabled, running) in units.items() if enabled and running),
                failed or "none")
        assert back["ok"], back
        assert all(enabled and running for enabled, running in units.values()), units
        assert failed == "", failed
