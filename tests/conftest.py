"""Shared pytest setup: the programs live in roles/funding/files, the simulator in files/."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = REPO / "roles" / "funding" / "files"
SIMULATOR_DIR = REPO / "files"

for directory in (PROGRAMS, SIMULATOR_DIR):
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
