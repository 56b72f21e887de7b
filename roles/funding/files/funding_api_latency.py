"""The API's request latency histogram by route: bucket bounds, where an observation lands, and its exposition.

Counts are kept as whole numbers (the per-bucket counts and the sum in microseconds), so any counter store, in one
process or shared by several worker processes, can hold them; /metrics renders them as the Prometheus histogram
`funding_api_request_duration_seconds{route, le}` (cumulative buckets, _sum, _count).
"""

from __future__ import annotations

import bisect
from typing import Dict, List, Sequence, Tuple

NAME = "funding_api_request_duration_seconds"
HELP = "Time to answer a request, from the application receiving it to its body being ready, by route template."
# Seconds. A cached symbol answers in well under a millisecond; /funding with every symbol takes a few.
BUCKETS: Tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOTS = len(BUCKETS) + 1  # the last slot is above every bound (+Inf only)
MICROSECONDS = 1_000_000


def bucket_index(seconds: float) -> int:
    """The slot of an observation: the first bound it does not exceed, or the +Inf slot."""
    return bisect.bisect_left(BUCKETS, seconds)


def as_microseconds(seconds: float) -> int:
    return max(0, int(round(seconds * MICROSECONDS)))


def _bound(value: float) -> str:
    return repr(value)


def exposition_lines(observations: Dict[str, Tuple[Sequence[int], int]], label: str = "route") -> List[str]:
    """observations: route -> (count per slot, not cumulative; sum in microseconds). Routes without any are left out."""
    lines = ["# HELP %s %s" % (NAME, HELP), "# TYPE %s histogram" % NAME]
    for route in sorted(observations):
        counts, micros = observations[route]
        total = sum(counts)
        if not total:
            continue
        escaped = route.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        running = 0
        for bound, count in zip(BUCKETS, counts):
            running += count
            lines.append('%s_bucket{%s="%s",le="%s"} %d' % (NAME, label, escaped, _bound(bound), running))
        lines.append('%s_bucket{%s="%s",le="+Inf"} %d' % (NAME, label, escaped, total))
        lines.append('%s_sum{%s="%s"} %s' % (NAME, label, escaped, repr(micros / MICROSECONDS)))
        lines.append('%s_count{%s="%s"} %d' % (NAME, label, escaped, total))
    return lines
