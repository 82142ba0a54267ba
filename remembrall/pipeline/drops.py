"""Counted drops with rate-limited logs: what a stage refused, by reason, in
``remembrall_frames_dropped_total``."""

from __future__ import annotations

import logging
from collections import Counter

from remembrall.monitoring import metrics as m

log = logging.getLogger(__name__)


class DropCounter:
    """Turns a labeler's/stage's reason counters into ``remembrall_frames_dropped`` increments."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._last: Counter[str] = Counter()
        self._logged: Counter[str] = Counter()

    def sync(self, counts: Counter[str], stream: str = "") -> None:
        for reason, n in counts.items():
            delta = n - self._last[reason]
            if delta > 0:
                m.DROPPED.labels(self.stage, stream, reason).inc(delta)
        self._last = Counter(counts)

    def drop(self, reason: str, stream: str, detail: str) -> None:
        m.DROPPED.labels(self.stage, stream, reason).inc()
        self._logged[reason] += 1
        n = self._logged[reason]
        if n <= 5 or n % 1000 == 0:
            log.warning("%s: dropped a message (%s): %s [%d so far]", self.stage, reason, detail, n)
