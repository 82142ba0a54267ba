"""What a process costs, sampled by a daemon thread: CPU seconds (all threads) and resident memory,
as ``remembrall_stage_cpu_seconds_total`` and ``remembrall_stage_rss_bytes``. CPU per item is then
``rate(cpu) / rate(frames)`` per stage — on the dashboard and in ``bench.throughput``."""

from __future__ import annotations

import resource
import threading

from remembrall.heap import rss_bytes
from remembrall.monitoring import metrics as m


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class ProcessCost(threading.Thread):
    """Every ``period`` seconds: add this process's new CPU seconds, set its RSS."""

    def __init__(self, stage: str, period: float = 2.0) -> None:
        super().__init__(name="process-cost", daemon=True)
        self.stage, self.period = stage, period
        self._stop_event = threading.Event()
        self._cpu = cpu_seconds()

    def sample(self) -> None:
        now = cpu_seconds()
        if now > self._cpu:
            m.STAGE_CPU.labels(self.stage).inc(now - self._cpu)
        self._cpu = now
        rss = rss_bytes()
        if rss is not None:
            m.STAGE_RSS.labels(self.stage).set(rss)

    def run(self) -> None:
        self.sample()
        while not self._stop_event.wait(self.period):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.sample()  # the last seconds count too
