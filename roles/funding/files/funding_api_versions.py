"""Which version of the state file each API worker serves, in a small file the workers share.

Each worker owns one 8-byte slot and writes there the token of the state file version (its stat key) it is about
to serve, before it serves it. A request in any worker reads all the slots in one go: when every slot holds the
token of its own worker's view, no worker serves a newer file, and the view can be served without a stat. Any
difference (another worker took a newer file, a worker is still starting, a dead one is being replaced) sends the
request to the stat (funding_api_view.StateViews.current), which brings its worker up to date when the file changed.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Optional

from funding_state import StatKey

SLOT_BYTES = 8
_TOKEN = struct.Struct("=Q")


def versions_file_size(workers: int) -> int:
    return workers * SLOT_BYTES


def token_of(stat_key: Optional[StatKey]) -> bytes:
    """The slot contents for a view of the file with `stat_key` (None: no file); equal keys give equal tokens."""
    if stat_key is None:
        return bytes(SLOT_BYTES)
    return _TOKEN.pack((hash(stat_key) & 0x7FFF_FFFF_FFFF_FFFF) | 1)


class ServedVersions:
    """The shared slots, `slot` being this worker's. An aligned 8-byte write is never seen torn."""

    def __init__(self, path: str, slot: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.slots = len(self._map) // SLOT_BYTES
        if not 0 <= slot < self.slots:
            raise ValueError("version slot %d is beyond the file %s (%d slots)" % (slot, path, self.slots))
        self._own = slot * SLOT_BYTES
        self._size = self.slots * SLOT_BYTES

    def announce(self, token: bytes) -> None:
        """This worker is about to serve the version with `token`."""
        self._map[self._own : self._own + SLOT_BYTES] = token

    def expected(self, token: bytes) -> bytes:
        """What all the slots hold when every worker serves the version with `token` (for `all_serve`)."""
        return token * self.slots

    def all_serve(self, expected: bytes) -> bool:
        return self._map[0 : self._size] == expected
