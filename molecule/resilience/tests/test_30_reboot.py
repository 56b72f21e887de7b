"""Case 11 of issue 7: the container restarted (a reboot). Everything comes back enabled and healthy by itself.

The tests run on the controller, so the reboot is `docker restart` of the box; nothing is done inside it afterwards
except looking. On a box whose state directory persists (inventory `resilience_state_persistent`: the Debian 13 box
keeps it on the container's own filesystem, which `docker restart` keeps), the daemon must load the pre-reboot state
before it connects, and the box must be healthy (200, status healthy) within 30 s of the container's start. On the
Debian 12 box the state directory is a tmpfs (for the disk-full case), so it starts empty, and says so.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from conftest import container, docker, probe
from funding_box import ALL_UNITS, API, SIMULATOR, get_json, wait_for

BOOT_TIMEOUT = 120
STATE_DIR = "/var/lib/binance-funding"
# From the container's start (docker's State.StartedAt) to /funding/health 200 with status healthy.
HEALTHY_AFTER_BOOT_BOUND = 30
WS_UNIT = "binance-funding-ws.service"


def started_at(name: str) -> float:
    """docker's State.StartedAt of a container, epoch seconds (nanoseconds cut to microseconds)."""
    text = docker("inspect", "-f", "{{.State.StartedAt}}", name).stdout.strip()
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", text)
    assert match, text
    stamp = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return stamp + float("0." + (match.group(2) or "0")[:6])


def test_case_11_after_a_reboot_everything_is_enabled_and_healthy_with_no_manual_step(host, box_tools, case_row):
    persistent = bool(host.ansible.get_variables().get("resilience_state_persistent", False))
    with case_row("11 reboot (docker restart)", "everything enabled, running and healthy, no manual step" + (
            "; the pre-reboot state loaded before connecting; healthy <= %d s after the container starts"
            % HEALTHY_AFTER_BOOT_BOUND if persistent else "")) as row:
        fstype = host.check_output("findmnt -n -o FSTYPE --target %s" % STATE_DIR).strip()
        assert (fstype != "tmpfs") == persistent, "state directory on %s, inventory says persistent=%s" % (
            fstype, persistent)
        before = probe(host, "snapshot")
        assert before["ok"], before
        symbols_before = len(before["funding_state"])
        rebooted_at = time.time()
        docker("restart", "-t", "30", container(host), timeout=120)
        booted_at = started_at(container(host))
        assert booted_at >= rebooted_at - 1, (booted_at, rebooted_at)

        def booted():
            result = docker("exec", container(host), "systemctl", "is-system-running", check=False, timeout=30)
            state = result.stdout.strip()
            return state if state in ("running", "degraded") else None

        system_state = wait_for(booted, timeout=BOOT_TIMEOUT, interval=1, what="systemd in the box to finish booting")
        # The probe starts once systemd has booted: its elapsed time is an upper bound of the time to healthy.
        healthy = probe(host, "api", "--since", "%.3f" % booted_at, "--timeout", "120", "--healthy", timeout=130)
        expected = get_json(host, SIMULATOR + "/_sim/status")[1]["perpetualCount"]

        def serving_everything():
            status, body = get_json(host, API + "/funding/health")
            return status == 200 and body["symbolCount"] == expected and body

        health = wait_for(serving_everything, timeout=60, interval=1, what="health 200 with every perpetual")
        recovered = time.time() - booted_at

        def same_as_simulator():
            simulated = get_json(host, SIMULATOR + "/_sim/symbols?symbols=BTCUSDT")[1]["BTCUSDT"]
            status, served = get_json(host, API + "/funding/BTCUSDT")
            return status == 200 and served["markPrice"] == simulated["markPrice"]

        wait_for(same_as_simulator, timeout=30, interval=0.5, what="BTCUSDT to equal the simulator's")
        # The daemon's lines since the container started: what it loaded, then its first connection.
        lines = host.check_output("journalctl -u %s --no-pager -o cat --since @%d" % (WS_UNIT, int(booted_at)))
        lines = lines.splitlines()
        loaded = [(index, int(m.group(1))) for index, text in enumerate(lines)
                  for m in [re.search(r"loaded (\d+) symbols from the previous state file", text)] if m]
        started_empty = [index for index, text in enumerate(lines) if "no previous state file" in text]
        connected = [index for index, text in enumerate(lines) if "event=connected " in text]
        # The monitor's and the recorder's services are oneshots their timers start: neither runs between runs.
        units = {unit: (host.service(unit).is_enabled, host.service(unit).is_running) for unit in ALL_UNITS
                 if not unit.endswith(("check.service", "recorder.service"))}
        failed = host.check_output("systemctl list-units --failed --plain --no-legend").strip()
        row.recovered_in = healthy["elapsed"]
        row.observed = "state dir on %s; %s; systemd %s; healthy %.1f s after the container started, %d symbols " \
            "after %.1f s; BTCUSDT = simulator; enabled+running: %s; failed units: %s" % (
                fstype, ("loaded %d of the %d pre-reboot symbols before connecting" % (loaded[0][1], symbols_before)
                         if loaded else "started empty" if started_empty else "no load line"),
                system_state, healthy["elapsed"], health["symbolCount"], recovered,
                ", ".join(unit.split(".")[0] for unit, (enabled, running) in units.items() if enabled and running),
                failed or "none")
        assert healthy["ok"], healthy
        assert all(enabled and running for enabled, running in units.values()), units
        assert failed == "", failed
        assert connected, lines[-20:]
        if persistent:
            assert loaded and loaded[0][0] < connected[0], lines[:20]
            # The simulator may list or delist a symbol between the snapshot and the daemon's last write.
            assert symbols_before > 100 and abs(loaded[0][1] - symbols_before) <= 2, (loaded, symbols_before)
            assert healthy["elapsed"] <= HEALTHY_AFTER_BOOT_BOUND, "healthy %.1f s after boot" % healthy["elapsed"]
        else:
            assert started_empty and started_empty[0] < connected[0], lines[:20]
