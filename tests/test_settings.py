"""One definition of every FUNDING_* setting (funding_settings), read the same way by every program."""

from __future__ import annotations

import json
import subprocess
import sys

import binance_funding_ws_daemon
import funding_api_server
import funding_health_monitor
import funding_history_recorder
import funding_rest
import funding_rest_comparison
import funding_settings
import pytest
from funding_api_app import ApiConfig, build_app
from funding_api_metrics import RequestCounter
from funding_api_view import StateViews
from funding_settings import REGISTRY, Setting, resolve
from funding_state import StateReader
from funding_version import VERSION
from role_templates import parse_env_file, render
from test_api_support import call

PROGRAMS = {
    "binance_funding_ws_daemon.py": binance_funding_ws_daemon,
    "funding_api_server.py": funding_api_server,
    "funding_health_monitor.py": funding_health_monitor,
    "funding_rest_comparison.py": funding_rest_comparison,
    "funding_history_recorder.py": funding_history_recorder,
}


@pytest.fixture(scope="module")
def rendered_env():
    """funding.env as the role writes it with its defaults."""
    return parse_env_file(render("funding.env.j2"))


def test_every_program_reads_only_settings_defined_in_the_registry():
    for name, module in PROGRAMS.items():
        for setting in module.SETTINGS:
            assert REGISTRY.get(setting.env) is setting, (name, setting.env)


def test_every_registered_setting_is_read_by_some_program():
    read = {s.env for module in PROGRAMS.values() for s in module.SETTINGS}
    assert sorted(set(REGISTRY) - read) == []


@pytest.mark.parametrize("setting", list(REGISTRY.values()), ids=lambda s: s.env)
def test_every_default_parses(setting: Setting):
    resolve([setting], {})


def test_every_value_of_the_rendered_env_file_parses_in_every_program_and_equals_its_default(rendered_env):
    unread = set(rendered_env)
    for name, module in PROGRAMS.items():
        mine = [s for s in module.SETTINGS if s.env in rendered_env]
        unread -= {s.env for s in mine}
        from_file = resolve(mine, rendered_env)
        defaults = resolve(mine, {})
        differing = {env: (from_file[env], defaults[env]) for env in from_file if from_file[env] != defaults[env]}
        assert differing == {}, name
    assert unread == set(), "funding.env sets variables no program reads"


def test_rest_url_off_parses_the_same_in_every_program_that_reads_it():
    readers = [name for name, module in PROGRAMS.items()
               if any(s.env == "FUNDING_REST_URL" for s in module.SETTINGS)]
    assert len(readers) == 4
    for name in readers:
        values = resolve(PROGRAMS[name].SETTINGS, {"FUNDING_REST_URL": "off"})
        assert values["FUNDING_REST_URL"] is None, name


def test_a_name_has_one_default_in_every_program():
    # FUNDING_HTTP_TIMEOUT_SECONDS used to be 5 in the monitor and 10 in the comparison tool.
    for env in ("FUNDING_HTTP_TIMEOUT_SECONDS", "FUNDING_REST_URL", "FUNDING_STALE_SECONDS"):
        values = {name: resolve([s for s in m.SETTINGS if s.env == env], {}).get(env) for name, m in PROGRAMS.items()}
        assert len({repr(v) for v in values.values() if v is not None}) == 1, values


def test_the_comparison_tools_behind_rest_threshold_has_its_own_name():
    names = {s.env for s in funding_rest_comparison.SETTINGS}
    assert "FUNDING_COMPARE_BEHIND_SECONDS" in names and "FUNDING_STALE_SECONDS" not in names


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_help_shows_each_setting_with_the_registrys_default_and_meaning(program):
    done = subprocess.run([sys.executable, str(funding_settings.__file__).replace("funding_settings.py", program),
                           "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())
    for setting in PROGRAMS[program].SETTINGS:
        shown = "secret, not shown" if setting.secret else setting.default
        assert "%s %s [%s]" % (setting.env, " ".join(setting.help.split()), shown) in flat, setting.env


SECRET_URL = "https://hooks.example.invalid/services/T000/B000/s3cr3t-token"


def test_help_and_a_configuration_error_never_show_a_secret_setting_value():
    monitor = str(funding_settings.__file__).replace("funding_settings.py", "funding_health_monitor.py")
    env = {"PATH": "/usr/bin:/bin", "FUNDING_ALERT_WEBHOOK_URL": SECRET_URL}
    shown = subprocess.run([sys.executable, monitor, "--help"], capture_output=True, text=True, timeout=60,
                           check=False, env=env)
    assert shown.returncode == 0 and "FUNDING_ALERT_WEBHOOK_URL" in shown.stdout
    assert "s3cr3t" not in shown.stdout + shown.stderr
    bad = {**env, "FUNDING_ALERT_WEBHOOK_URL": "ftp://user:s3cr3t@example.invalid/hook"}
    refused = subprocess.run([sys.executable, monitor, "--no-restart"], capture_output=True, text=True, timeout=60,
                             check=False, env=bad)
    assert refused.returncode == 2
    assert "FUNDING_ALERT_WEBHOOK_URL=(secret, not shown): must be an http:// or https:// URL" in refused.stderr
    assert "s3cr3t" not in refused.stdout + refused.stderr


def test_only_the_webhook_url_is_a_secret():
    assert [s.env for s in REGISTRY.values() if s.secret] == ["FUNDING_ALERT_WEBHOOK_URL"]


def test_a_setting_defined_twice_is_refused():
    twin = Setting("FUNDING_LOG_LEVEL", "DEBUG", "another meaning")
    namespace = {"A": funding_settings.LOG_LEVEL, "B": twin}
    with pytest.raises(RuntimeError, match="FUNDING_LOG_LEVEL is defined twice"):
        funding_settings.collect_registry(namespace.values())


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_program_reports_the_one_project_version(program):
    done = subprocess.run([sys.executable, str(funding_settings.__file__).replace("funding_settings.py", program),
                           "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.split()[-1] == VERSION, done.stdout + done.stderr


def test_the_api_index_and_the_rest_user_agent_carry_the_same_version(tmp_path):
    app = build_app(StateViews(StateReader(str(tmp_path / "none.json"))), ApiConfig(), RequestCounter())
    status, _, body = call(app, "/")
    assert status == 200 and json.loads(body)["version"] == VERSION
    assert funding_rest.USER_AGENT == "binance-funding/" + VERSION


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"ansible_facts": {"processor_vcpus": 8}}, "4"),
        ({"ansible_facts": {"processor_vcpus": 2}}, "2"),
        ({"ansible_facts": {"processor_vcpus": 8}, "funding_api_workers": 6}, "6"),
        ({}, "0"),  # no facts: the program counts the cores itself, by the same rule
    ],
)
def test_the_role_gives_one_worker_per_core_capped_at_4_unless_told(overrides, expected):
    assert parse_env_file(render("funding.env.j2", overrides))["FUNDING_API_WORKERS"] == expected
