"""Counted drops with rate-limited logs: what a stage refused, by reason, in
``remembrall_frames_dropped_total``."""

from __future__ import annotations

import logging
from collections import Counter

from remembrall.monitoring import metrics as m

log = logging.getLogger(__name__)


class WriteErrors:
    """Writes of a stage's own files that failed (a full disk, a read-only mount): counted in
    ``remembrall_write_errors_total{stage,what}`` and logged, rate-limited. The caller keeps
    serving and tries again later; atomic writes leave the previous file whole."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.counts: Counter[str] = Counter()

    def failed(self, what: str, exc: OSError) -> None:
        m.WRITE_ERRORS.labels(self.stage, what).inc()
        self.counts[what] += 1
        n = self.counts[what]
        if n <= 3 or n % 100 == 0:
            log.error("%s: cannot write %s: %s [%d so far]; the stage keeps serving and tries again "
                      "(free space or fix the output directory's permissions)", self.stage, what, exc, n)


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
