"""Render the funding role's templates the way Ansible does on a host, for tests that must match them.

`render` runs Ansible's own template module on localhost with the role's defaults and internal vars (plus any
overrides), so the result is byte for byte what a deployment writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from funding_json import dumps

REPO = Path(__file__).resolve().parent.parent
ROLE = REPO / "roles" / "funding"
ANSIBLE_TIMEOUT = 120


def _ansible() -> str:
    found = Path(sys.executable).with_name("ansible")
    return str(found) if found.exists() else (shutil.which("ansible") or "ansible")


def render(template: str, overrides: Optional[Mapping[str, Any]] = None) -> str:
    """roles/funding/templates/<template> rendered with the role defaults, its vars and `overrides`."""
    with tempfile.TemporaryDirectory() as directory:
        dest = Path(directory) / "rendered"
        extra = Path(directory) / "overrides.json"
        extra.write_bytes(dumps(dict(overrides or {})))
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="false",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1")
        command = [
            _ansible(), "localhost", "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % sys.executable,
            # Defaults first, then the role's vars (which build on them), then the test's values, as in a play.
            "-e", "@%s" % (ROLE / "defaults" / "main.yml"),
            "-e", "@%s" % (ROLE / "vars" / "main.yml"),
            "-e", "@%s" % extra,
            "-m", "ansible.builtin.template",
            "-a", "src=%s dest=%s" % (ROLE / "templates" / template, dest),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=ANSIBLE_TIMEOUT, env=env,
                              cwd=REPO, check=False)
        if done.returncode != 0:
            raise AssertionError("rendering %s failed:\n%s%s" % (template, done.stdout, done.stderr))
        return dest.read_text()


def parse_env_file(text: str) -> Dict[str, str]:
    """NAME="value" lines of a systemd EnvironmentFile= (as funding.env.j2 writes them) as a dict."""
    values: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, quoted = line.partition("=")
        assert quoted.startswith('"') and quoted.endswith('"'), line
        values[name] = quoted[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return values
