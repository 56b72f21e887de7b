"""`ansible-playbook site.yml --check --diff` on a fresh host must succeed (issue 16): a handler that acts on one of
the role's units would fail there ("Could not find the requested service"), because in check mode the unit files were
never written. Molecule's fleet scenario proves the whole dry run on three fresh hosts; this keeps the rule visible
without Docker."""

from __future__ import annotations

from pathlib import Path

import yaml

HANDLERS = Path(__file__).resolve().parents[1] / "roles" / "funding" / "handlers" / "main.yml"


def test_every_handler_that_acts_on_a_unit_is_skipped_in_check_mode():
    handlers = yaml.safe_load(HANDLERS.read_text())
    acting = [h for h in handlers if "name" in (h.get("ansible.builtin.systemd_service") or {})]
    assert len(acting) >= 5, [h["name"] for h in handlers]
    unguarded = [h["name"] for h in acting
                 if "not ansible_check_mode" not in " ".join(map(str, _conditions(h.get("when"))))]
    assert not unguarded, "handlers that fail in --check on a fresh host: %s" % unguarded


def _conditions(when):
    if when is None:
        return []
    return when if isinstance(when, list) else [when]
