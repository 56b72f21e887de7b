"""Security checks of issue 7: loopback only, unprivileged programs, nothing writable but the state directory,
a sudo rule that grants two restarts and nothing else, hostile input answered 4xx, systemd exposure."""

from __future__ import annotations

import json
import re
import shlex
import time
from urllib.parse import quote

import pytest
from conftest import main_pid, probe, unit_property
from funding_box import API, UNITS, exposure, http, wait_for

WS_UNIT, API_UNIT = UNITS
MONITOR_UNIT = "funding-health-check.service"
SERVICES = (WS_UNIT, API_UNIT, MONITOR_UNIT)
STATE_DIR = "/var/lib/binance-funding"
# Unit settings that are not part of the sandbox; everything else is copied into the probe's transient unit.
NOT_SANDBOX = re.compile(
    r"^(Description|Documentation|After|Before|Wants|Requires|StartLimit\w*|Type|NotifyAccess|EnvironmentFile|"
    r"Environment|Exec\w+|Restart|RestartSec|Timeout\w*|SuccessExitStatus|WatchdogSec|Standard\w+|SyslogIdentifier|"
    r"WantedBy|MemoryHigh|MemoryMax|OnBootSec|OnUnitActiveSec|AccuracySec|Unit)="
)


def sandbox_properties(host, unit: str) -> list:
    settings = []
    for text in host.check_output("systemctl cat %s" % unit).splitlines():
        line = text.strip()
        if re.match(r"^[A-Za-z]+=", line) and not NOT_SANDBOX.match(line):
            settings += ["-p", line]
    return settings


def run_in_sandbox_of(host, unit: str, script: str):
    """Run `script` as a transient service with the unit's own user and sandbox settings."""
    command = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", *sandbox_properties(host, unit),
               "/bin/sh", "-c", script]
    return host.run(" ".join(shlex.quote(part) for part in command))


def test_s1_api_answers_on_loopback_only(host, case_row):
    with case_row("S1 API on loopback only", "listens on 127.0.0.1:8888 only; unit allows localhost only") as row:
        listeners = host.check_output("ss -Htln 'sport = :8888'").splitlines()
        assert listeners and all(line.split()[3] == "127.0.0.1:8888" for line in listeners), listeners
        addresses = [line.split()[3].split("/")[0] for line in host.check_output("ip -o addr show").splitlines()]
        others = [a for a in addresses if a != "127.0.0.1"]
        answered = []
        for address in others:
            url = "http://%s:8888/funding/health" % ("[%s]" % address if ":" in address else address)
            result = host.run("curl -s -m 2 -o /dev/null -w '%%{http_code}' '%s'" % url)
            if result.stdout.strip() not in ("", "000"):
                answered.append(address)
        assert not answered, "API answers on %s" % answered
        assert unit_property(host, API_UNIT, "IPAddressDeny").strip() != ""
        row.observed = "listening: %s; %s; unit has IPAddressDeny=any" % (
            ", ".join(line.split()[3] for line in listeners),
            "not answering on " + ", ".join(others) if others else "the box has no other address")


def test_s2_all_three_programs_run_as_the_unprivileged_user(host, case_row):
    with case_row("S2 programs run as `funding`", "User=funding for all 3 units; processes owned by funding") as row:
        users = {unit: unit_property(host, unit, "User") for unit in SERVICES}
        assert set(users.values()) == {"funding"}, users
        passwd = host.user("funding")
        assert passwd.uid != 0 and passwd.shell in ("/usr/sbin/nologin", "/sbin/nologin")
        owners = {unit: host.check_output("ps -o user= -p %d" % main_pid(host, unit)).strip() for unit in UNITS}
        assert set(owners.values()) == {"funding"}, owners
        # The monitor is a oneshot: run it and read the uid journald recorded for its own output.
        started = time.time() - 1
        assert host.run("systemctl start %s" % MONITOR_UNIT).rc == 0

        def uids_of_monitor_output():
            entries = host.run("journalctl -u %s --since @%d -o json --no-pager SYSLOG_IDENTIFIER=%s" % (
                MONITOR_UNIT, started, "funding-health-check")).stdout.splitlines()
            return {json.loads(line).get("_UID") for line in entries if line.strip()} - {None}

        uids = wait_for(uids_of_monitor_output, timeout=20, what="the monitor's report in the journal")
        assert uids == {str(passwd.uid)}, uids
        row.observed = "User= %s; ws/api processes %s; monitor run logged as uid %s (funding, nologin)" % (
            "/".join(sorted(set(users.values()))), "/".join(sorted(set(owners.values()))), ",".join(sorted(uids)))


WRITE_PROBE = r"""
for dir in / /etc /etc/binance-funding /etc/sudoers.d /etc/systemd/system /opt /opt/binance-funding \
           /opt/binance-funding/bin /opt/binance-funding/venv /opt/binance-funding/venv/bin /usr/local/bin \
           /var/lib /var/log /var/cache /root /home /run /run/lock /dev/shm /dev/mqueue %(state)s; do
  if ( : > "$dir/.resilience-probe" ) 2>/dev/null; then rm -f "$dir/.resilience-probe"; echo "wrote $dir"; fi
done
find / \( -path /proc -o -path /sys \) -prune -o ! -type l ! -type c ! -type s -writable -print 2>/dev/null \
  | sed 's|^|writable |'
""" % {"state": STATE_DIR}
# Private per-service directories (PrivateTmp=): writable, but nobody else sees them and they go with the service.
PRIVATE = ("/tmp", "/var/tmp")


def writable_outside_state(output: str) -> list:
    paths = {line.split(" ", 1)[1] for line in output.splitlines() if line.startswith(("wrote ", "writable "))}
    return sorted(p for p in paths if p not in PRIVATE and p != STATE_DIR and not p.startswith(STATE_DIR + "/"))


@pytest.mark.parametrize("unit", SERVICES)
def test_s3_nothing_is_writable_for_the_service_outside_the_state_directory(host, unit, case_row):
    with case_row("S3 writable paths: %s" % unit.split(".")[0],
                  "%s, besides its private /tmp and /var/tmp" % (
                      "nothing" if unit == API_UNIT else "only " + STATE_DIR)) as row:
        result = run_in_sandbox_of(host, unit, WRITE_PROBE)
        assert result.rc == 0, result.stderr
        outside = writable_outside_state(result.stdout)
        state_writable = "wrote %s" % STATE_DIR in result.stdout
        assert not outside, "writable outside %s in the sandbox of %s: %s" % (STATE_DIR, unit, outside)
        assert state_writable == (unit != API_UNIT), "state directory writable: %s" % state_writable
        # And without the sandbox, as the plain user: the programs and their configuration stay root's.
        plain = host.run("runuser -u funding -- sh -c %s" % shlex.quote(
            "for f in /opt/binance-funding/bin/x /opt/binance-funding/venv/bin/x /etc/binance-funding/x "
            "/etc/sudoers.d/x /etc/systemd/system/x; do touch $f 2>/dev/null && echo wrote $f; done; true"))
        assert plain.stdout.strip() == "", plain.stdout
        row.observed = "sandbox writes: %s; plain user writes to programs/config: none" % (
            "state dir, private tmp" if state_writable else "private tmp only (state dir read-only)")


def test_s4_daemon_root_is_read_only_except_the_state_directory(host, case_row):
    with case_row("S4 daemon mount table", "every read-write mount is the state dir, a private tmp or API fs") as row:
        pid = main_pid(host, WS_UNIT)
        mounts = host.check_output("cat /proc/%d/mountinfo" % pid).splitlines()
        writable = []
        for line in mounts:
            fields = line.split()
            point, options = fields[4], fields[5].split(",")
            if "rw" in options and not point.startswith(("/proc", "/sys")):
                writable.append(point)
        allowed = {"/tmp", "/var/tmp", STATE_DIR, "/dev/pts", "/dev/hugepages"}
        assert set(writable) <= allowed, "read-write mounts of the daemon: %s" % writable
        assert STATE_DIR in writable
        row.observed = "read-write mounts: %s" % ", ".join(sorted(set(writable)))


def sudo_as_funding(host, command: str):
    return host.run("runuser -u funding -- sudo -n %s" % command)


@pytest.mark.parametrize("unit", UNITS)
def test_s5_service_user_can_restart_the_unit_through_sudo(host, unit, case_row):
    with case_row("S5 sudo restart %s" % unit.split(".")[0], "allowed; unit active again") as row:
        before = main_pid(host, unit)
        result = sudo_as_funding(host, "/usr/bin/systemctl restart %s" % unit)
        assert result.rc == 0, result.stderr
        wait_for(lambda: host.service(unit).is_running and main_pid(host, unit) not in (0, before), timeout=40,
                 what="%s running again" % unit)
        row.observed = "rc 0; new pid"


REFUSED = [
    "/usr/bin/systemctl restart ssh",
    "/usr/bin/systemctl restart ssh.service",
    "/usr/bin/systemctl edit binance-funding-ws.service",
    "/usr/bin/systemctl start binance-simulator.service",
    "/usr/bin/systemctl start funding-health-check.service",
    "/usr/bin/systemctl stop binance-funding-api.service",
    "/usr/bin/systemctl restart binance-funding-ws.service binance-simulator.service",
    "/usr/bin/systemctl restart binance-funding-*.service",
    "/usr/bin/systemctl --no-pager restart binance-funding-ws.service",
    "/usr/bin/systemctl daemon-reload",
    "/bin/sh -c id",
    "-s",
    "-i",
    "-e /etc/sudoers.d/funding-health-monitor",
    "SYSTEMD_PAGER=/bin/sh /usr/bin/systemctl status binance-funding-ws.service",
    "SYSTEMD_EDITOR=/bin/sh /usr/bin/systemctl restart binance-funding-ws.service",
    "LD_PRELOAD=/tmp/x.so /usr/bin/systemctl restart binance-funding-ws.service",
]


def test_s6_sudo_refuses_everything_else(host, case_row):
    with case_row("S6 sudo refuses the rest", "%d commands incl. restart ssh, edit, start other unit, shells, "
                  "env injection: all refused" % len(REFUSED)) as row:
        allowed = [command for command in REFUSED if sudo_as_funding(host, command).rc == 0]
        assert not allowed, "sudo allowed: %s" % allowed
        listing = host.check_output("sudo -l -U funding")
        rules = [line.strip() for line in listing.splitlines() if "NOPASSWD:" in line]
        assert all(re.fullmatch(r"\(root\) NOPASSWD: /usr/bin/systemctl (restart|status|is-active) "
                                r"binance-funding-(ws|api)\.service", rule) for rule in rules), rules
        assert "env_reset" in listing, listing
        row.observed = "all %d refused; rules: %d exact (restart|status|is-active) x 2 units; env_reset on" % (
            len(REFUSED), len(rules))


def test_s7_systemctl_status_pager_gives_no_shell(host, box_tools, case_row):
    """`status` is granted, and systemctl pages its output: the pager's `!cmd` must not run anything as root."""
    marker = "/root/.resilience-pager-escape"
    pager = "less" if host.exists("less") else "more"
    with case_row("S7 pager escape via sudo status", "no shell through the pager (`!cmd`, SYSTEMD_PAGER, PAGER, "
                  "SYSTEMD_PAGERSECURE=0); the same probe escapes without sudo") as row:
        # Control: on a terminal, without sudo and with the pager not in secure mode, the probe does get a shell.
        control = probe(host, "pager-escape", "--marker", marker, "--env", "SYSTEMD_PAGERSECURE=0", "--env",
                        "SYSTEMD_PAGER=" + pager, "--", "/usr/bin/systemctl", "status", WS_UNIT, timeout=30)
        assert control["markerCreated"], "the probe could not escape even without sudo: %s" % control["output"]
        attempts = {
            "default pager": [],
            "SYSTEMD_PAGER=" + pager: ["--env", "SYSTEMD_PAGER=" + pager],
            "PAGER=" + pager: ["--env", "PAGER=" + pager],
            "SYSTEMD_PAGERSECURE=0": ["--env", "SYSTEMD_PAGERSECURE=0", "--env", "SYSTEMD_PAGER=" + pager],
            "SYSTEMD_PAGER=sh -c": ["--env", "SYSTEMD_PAGER=/bin/sh -c 'touch %s'" % marker],
            "LESSSECURE=0": ["--env", "LESSSECURE=0", "--env", "SYSTEMD_PAGER=less"],
        }
        escaped, paged = [], []
        for name, env in attempts.items():
            result = probe(host, "pager-escape", "--marker", marker, *env, "--", "runuser", "-u", "funding", "--",
                           "sudo", "-n", "/usr/bin/systemctl", "status", WS_UNIT, timeout=30)
            if result["markerCreated"]:
                escaped.append(name)
            if result["paged"]:
                paged.append(name)
        host.run("rm -f %s" % marker)
        assert not escaped, "shell escape through sudo systemctl status: %s" % escaped
        row.observed = "control (no sudo, %s) escaped; through sudo: %d attempts, 0 escapes, paged in %d " \
            "(sudo's env_reset + systemd's secure pager)" % (pager, len(attempts), len(paged))


HOSTILE_SYMBOLS = [
    "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%5C..%5Cwindows", "BTCUSDT%00",
    "BTCUSDT%00.json", "%00", "BTC%27%20OR%20%271%27=%271", "BTCUSDT%3Bcat%20%2Fetc%2Fpasswd", "%24(id)", "%60id%60",
    "%7B%7B7*7%7D%7D", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "BTCUSDT%0D%0AX-Injected:%201", "%C3%9F",
    "%C0%AE%C0%AE", "%E2%80%AE", "%FF%FE", "BTC%FFUSDT", "A" * 41, "B" * 5000, "BTC-USDT", "BTC%20USDT", "%25",
    "*", "%2A",
]
HOSTILE_QUERIES = [
    "/funding/batch?symbols=" + quote("../../etc/passwd", safe=""),
    "/funding/batch?symbols=BTCUSDT," + quote("' OR 1=1 --", safe=""),
    "/funding/batch?symbols=BTCUSDT%0D%0ASet-Cookie:%20x=1",
    "/funding/batch?symbols=" + ",".join("S%d" % n for n in range(1001)),
    "/funding/batch?symbols=" + "A" * 70000,
    "/funding/batch?symbols=",
    "/funding/batch?symbols=%00",
    "/funding/batch?symbols=" + quote("<script>", safe=""),
    "/funding?sort=" + quote(";rm -rf /", safe=""),
    "/funding?sort=__class__",
    "/funding?quote=" + quote("../../", safe=""),
    "/funding?quote=USDT%00",
    "/funding?limit=-1",
    "/funding?limit=0",
    "/funding?limit=99999999999999999999",
    "/funding?limit=1e3",
    "/funding?limit=" + quote("1 OR 1=1", safe=""),
    "/funding?quote=" + "Q" * 10000,
]


def test_s8_hostile_symbols_and_queries_are_400_never_5xx(host, case_row):
    with case_row("S8 traversal/injection/oversize", "400 JSON error for every symbol and query; never 5xx; "
                  "no file content") as row:
        statuses = {}
        wrong = []
        for path in ["/funding/" + symbol for symbol in HOSTILE_SYMBOLS] + HOSTILE_QUERIES:
            status, body = http(host, API + path)
            statuses[status] = statuses.get(status, 0) + 1
            ok_body = body.startswith("{") and '"error"' in body and "root:" not in body and "Traceback" not in body
            # An encoded slash leaves the one-segment /funding/{symbol} route: an unknown endpoint, 404.
            expected = (400, 404) if "%2f" in path.lower() else (400, 414)
            # A request target of 64 KiB or more never reaches the application: Granian answers its own bare 414
            # (README, "The API server").
            refused_by_server = status == 414 and len(path) >= 64 * 1024
            if status not in expected or not (ok_body or refused_by_server):
                wrong.append((path[:70], status, body[:100]))
        # Traversal that leaves /funding/{symbol} (curl keeps the dots): an unknown route, still a JSON 4xx.
        for raw in ("/funding/../../etc/passwd", "/funding/./../funding/BTCUSDT/../../etc/shadow", "/..%2f..%2fetc"):
            result = host.run("curl -s --path-as-is -o /tmp/.r -w '%%{http_code}' '%s%s'; echo; cat /tmp/.r"
                              % (API, raw))
            status_text, _, body = result.stdout.partition("\n")
            status = int(status_text or 0)
            statuses[status] = statuses.get(status, 0) + 1
            if not 400 <= status < 500 or "root:" in body or not body.startswith("{"):
                wrong.append((raw, status, body[:100]))
        # A request head beyond Granian's limit (~256 KiB): Granian's own bare 431, still a 4xx (README).
        host.run("python3 -c \"open('/tmp/.big-header', 'w').write('X-Big: ' + 'x' * 300000)\"")
        big = host.run("curl -s -o /tmp/.r -w '%%{http_code}' -H @/tmp/.big-header %s/funding/BTCUSDT; echo; "
                       "cat /tmp/.r" % API)
        big_status = int(big.stdout.partition("\n")[0] or 0)
        statuses[big_status] = statuses.get(big_status, 0) + 1
        if not 400 <= big_status < 500:
            wrong.append(("300 KB header", big_status, big.stdout[:100]))
        assert not wrong, wrong
        assert not any(status >= 500 for status in statuses), statuses
        row.observed = "%d hostile requests: %s" % (sum(statuses.values()), ", ".join(
            "%s x%d" % (status, count) for status, count in sorted(statuses.items())))


def test_s9_systemd_exposure_of_every_unit(host, case_row):
    scores = {unit: exposure(host, unit) for unit in SERVICES + ("binance-simulator.service",)}
    with case_row("S9 systemd-analyze security", "printed for every unit; ws and api <= 2.0") as row:
        for unit, score in scores.items():
            print("systemd-analyze security %s: %.1f" % (unit, score))
        row.observed = ", ".join("%s %.1f" % (unit.split(".")[0], score) for unit, score in scores.items())
        assert scores[WS_UNIT] <= 2.0 and scores[API_UNIT] <= 2.0, scores
