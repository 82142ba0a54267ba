"""Time-sharing the accelerator (or the CPU) between inference and retraining.

Inference and retraining are different processes on one device (a Jetson has one GPU). The
arbiter hands retraining short *leases* — one slice of a few optimizer steps each — under two
rules (DESIGN §4):

* **inference always wins**: while inference reports a backlog above ``max_backlog`` frames, no
  lease (a report older than ``stale_s`` counts as an idle inference);
* **a bounded share**: over a sliding window of ``window_s`` seconds, leased time stays at most
  ``share`` of wall time; a lease is granted only if the expected slice (an EWMA of the past
  ones) still fits.

The share actually used is what ``remembrall_gpu_share`` exports. On a CPU-only machine the
same policy holds for CPU time: the retrain process runs torch with one thread, so the leased
wall time is the core-time it takes from inference.

>>> t = [0.0]
>>> arb = ComputeArbiter(share=0.5, window_s=10.0, clock=lambda: t[0])
>>> arb.acquire()
True
>>> t[0] = 4.0; arb.release()          # a 4 s slice
4.0
>>> arb.acquire()                       # 4 s used + ~4 s expected > 5 s allowed
False
>>> t[0] = 13.0; arb.acquire()          # the used time ages out of the window
True
>>> _ = arb.release(); arb.report_load(backlog=50); arb.acquire(), arb.last_denial
(False, 'backlog')
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable


class ComputeArbiter:
    """Grants retraining leases; inference backlog vetoes, share caps. Not thread-safe by design:
    the retrain stage calls it from its one loop."""

    def __init__(
        self,
        share: float = 0.3,
        window_s: float = 10.0,
        max_backlog: int = 8,
        stale_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.share_limit, self.window_s = share, window_s
        self.max_backlog, self.stale_s = max_backlog, stale_s
        self.clock = clock
        self._used: deque[tuple[float, float]] = deque()  # (start, end) of past leases
        self._lease_start: float | None = None
        self._expected = 0.0
        self._backlog = 0
        self._load_at = -float("inf")
        self.started = clock()
        self.granted = 0
        self.denied: Counter[str] = Counter()
        self.last_denial = ""

    def report_load(self, backlog: int, busy: float | None = None) -> None:
        """Inference's latest queue depth (from its ``load`` messages)."""
        self._backlog = max(0, int(backlog))
        self._load_at = self.clock()

    def backlog(self) -> int:
        return self._backlog if self.clock() - self._load_at <= self.stale_s else 0

    def used_seconds(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        lo = now - self.window_s
        while self._used and self._used[0][1] <= lo:
            self._used.popleft()
        total = sum(min(e, now) - max(s, lo) for s, e in self._used if e > lo)
        if self._lease_start is not None:
            total += now - max(self._lease_start, lo)
        return max(0.0, total)

    def share(self, now: float | None = None) -> float:
        """Share of the last ``window_s`` seconds that retraining held a lease."""
        return min(1.0, self.used_seconds(now) / self.window_s)

    def acquire(self) -> bool:
        """Try to start a lease for one slice; False (and ``last_denial``) when not allowed now."""
        if self._lease_start is not None:
            return True
        now = self.clock()
        if self.backlog() > self.max_backlog:
            return self._deny("backlog")
        if self.used_seconds(now) + self._expected > self.share_limit * self.window_s:
            return self._deny("share")
        self._lease_start = now
        self.granted += 1
        self.last_denial = ""
        return True

    def _deny(self, reason: str) -> bool:
        self.denied[reason] += 1
        self.last_denial = reason
        return False

    def release(self) -> float:
        """End the current lease; returns its duration."""
        if self._lease_start is None:
            return 0.0
        now = self.clock()
        dur = now - self._lease_start
        self._used.append((self._lease_start, now))
        self._lease_start = None
        self._expected = dur if self._expected == 0.0 else 0.7 * self._expected + 0.3 * dur
        return dur

    def seconds_until_possible(self) -> float:
        """A hint for how long to wait before asking again (0 when a lease would be granted)."""
        now = self.clock()
        if self.backlog() > self.max_backlog:
            return 0.05
        excess = self.used_seconds(now) + self._expected - self.share_limit * self.window_s
        return max(0.0, min(excess, self.window_s))
