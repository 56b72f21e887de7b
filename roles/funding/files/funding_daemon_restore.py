"""What the daemon takes over from the previous state file at start: records, universe, delisted map."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import funding_feed
import funding_state
import funding_universe
from funding_daemon_log import log


@dataclass
class PreviousState:
    records: Dict[str, Dict[str, Any]]
    universe: Optional[funding_universe.Universe] = None
    universe_fetched_at: Optional[float] = None
    delisted: Optional[Dict[str, float]] = None


def load_previous_state(path: str) -> PreviousState:
    """The previous file's records (keeping their updatedAt), universe and delisted map; empty when there is none
    or it is unusable."""
    if not os.path.exists(path):
        log.info("no previous state file at %s: starting empty", path)
        return PreviousState({})
    try:
        payload = funding_state.read_state(path)
    except funding_state.StateFileError as exc:
        log.warning("previous state file is unusable (%s): starting empty, it will be replaced", exc)
        return PreviousState({})
    records, dropped = funding_feed.restore_funding_state(payload["funding_state"])
    log.info("loaded %d symbols from the previous state file %s%s (stale until refreshed)", len(records), path,
             ", dropped %d unusable records" % dropped if dropped else "")
    previous = PreviousState(records, delisted=funding_state.delisted_of(payload))
    saved = funding_state.universe_of(payload)
    if saved:
        try:
            previous.universe = funding_universe.parse_exchange_info(
                {"symbols": [dict(contract, symbol=symbol, status=funding_universe.TRADING)
                             for symbol, contract in saved.items()]})
            previous.universe_fetched_at = funding_state.universe_fetched_at(payload)
        except funding_universe.UniverseError as exc:
            log.warning("the universe in the previous state file is unusable (%s): ignored", exc)
    return previous
