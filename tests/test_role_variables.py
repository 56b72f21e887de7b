"""Every role variable is in exactly the places it must be: defaults, argument specs and the README table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parent.parent
ROLE = REPO / "roles" / "funding"


def _defaults():
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def _specs():
    return yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]


def test_every_default_is_prefixed_funding():
    assert all(name.startswith("funding_") for name in _defaults())


def test_argument_specs_cover_exactly_the_defaults():
    assert sorted(_specs()) == sorted(_defaults())


def test_argument_spec_defaults_equal_the_role_defaults():
    defaults = _defaults()
    mismatched = {name: (spec.get("default"), defaults[name]) for name, spec in _specs().items()
                  if spec.get("default") != defaults[name]}
    assert mismatched == {}


def test_every_variable_is_described_in_the_argument_specs():
    assert [name for name, spec in _specs().items() if not spec.get("description")] == []


def test_readme_variable_table_lists_every_variable():
    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| `(funding_[a-z0-9_]+)` \|", readme, flags=re.M))
    assert listed == set(_defaults())


def test_every_default_has_a_comment_above_it():
    lines = (ROLE / "defaults" / "main.yml").read_text().splitlines()
    uncommented = []
    for index, line in enumerate(lines):
        if re.match(r"^funding_[a-z0-9_]+:", line):
            above = index - 1
            while above >= 0 and re.match(r"^funding_[a-z0-9_]+:", lines[above]):
                above -= 1  # a group of related variables shares one comment
            if above < 0 or not lines[above].startswith("#"):
                uncommented.append(line)
    assert uncommented == []


def test_every_program_file_is_installed_by_exactly_one_group_of_the_role():
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    groups = ("funding_shared_programs", "funding_daemon_programs", "funding_api_programs", "funding_monitor_programs")
    installed = [name for group in groups for name in role_vars[group]]
    on_disk = sorted(path.name for path in (ROLE / "files").glob("*.py"))
    assert sorted(installed) == on_disk
