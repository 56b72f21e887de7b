"""The one JSON encoder and decoder of every binance-funding program.

Encoding is strict: NaN and Infinity are refused (a state file or an answer
must parse anywhere); readers check the numbers they decode themselves
(funding_state.finite_number). Every caller goes through this module, so the
implementation can change in one place.
"""

from __future__ import annotations

import json
from typing import Any, Union

_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_PRETTY = json.JSONEncoder(indent=2, sort_keys=True, allow_nan=False)


def dumps(value: Any, *, pretty: bool = False) -> bytes:
    """UTF-8 JSON: compact, or indented with sorted keys for people; ValueError on NaN/Infinity."""
    return (_PRETTY if pretty else _COMPACT).encode(value).encode("utf-8")


def loads(data: Union[bytes, bytearray, memoryview, str]) -> Any:
    """Decode JSON; ValueError (UnicodeDecodeError included) when it is not valid UTF-8 JSON."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    return json.loads(data)
