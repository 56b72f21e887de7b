"""Every role variable is in exactly the places it must be: defaults, argument specs and the README table;
internal variables are named as internal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
ROLES = {"funding": "funding_", "binance_simulator": "binance_simulator_"}
ROLE = REPO / "roles" / "funding"


def _defaults(role):
    return yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())


def _specs(role):
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_default_is_prefixed_with_the_role_name(role):
    assert [name for name in _defaults(role) if not name.startswith(ROLES[role])] == []


@pytest.mark.parametrize("role", sorted(ROLES))
def test_argument_specs_cover_exactly_the_defaults(role):
    assert sorted(_specs(role)) == sorted(_defaults(role))


@pytest.mark.parametrize("role", sorted(ROLES))
def test_argument_spec_defaults_equal_the_role_defaults(role):
    defaults = _defaults(role)
    mismatched = {name: (spec.get("default"), defaults[name]) for name, spec in _specs(role).items()
                  if spec.get("default") != defaults[name]}
    assert mismatched == {}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_variable_is_described_in_the_argument_specs(role):
    assert [name for name, spec in _specs(role).items() if not spec.get("description")] == []


@pytest.mark.parametrize("role", sorted(ROLES))
def test_readme_variable_table_lists_every_variable(role):
    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| `(%s[a-z0-9_]+)` \|" % ROLES[role], readme, flags=re.M))
    assert listed == set(_defaults(role))


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_default_has_a_comment_above_it(role):
    lines = (REPO / "roles" / role / "defaults" / "main.yml").read_text().splitlines()
    variable = re.compile(r"^%s[a-z0-9_]+:" % ROLES[role])
    uncommented = []
    for index, line in enumerate(lines):
        if variable.match(line):
            above = index - 1
            while above >= 0 and variable.match(lines[above]):
                above -= 1  # a group of related variables shares one comment
            if above < 0 or not lines[above].startswith("#"):
                uncommented.append(line)
    assert uncommented == []


def test_role_internal_variables_are_prefixed_with_an_underscore():
    names = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert [name for name in names if not name.startswith("_funding_")] == []


def test_registered_results_are_prefixed_with_two_underscores():
    registered = []
    for path in sorted((REPO / "roles").glob("*/tasks/*.yml")) + sorted((REPO / "molecule").glob("*/*.yml")):
        registered += re.findall(r"^\s+register: (\S+)", path.read_text(), flags=re.M)
    assert registered and [name for name in registered if not name.startswith("__")] == []


def test_every_program_file_is_installed_by_exactly_one_group_of_the_role():
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    groups = ("shared", "daemon", "api", "monitor")
    installed = [name for group in groups for name in role_vars["_funding_%s_programs" % group]]
    on_disk = sorted(path.name for path in (ROLE / "files").glob("*.py"))
    assert sorted(installed) == on_disk
