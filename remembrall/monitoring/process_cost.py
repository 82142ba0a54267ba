"""What a process costs, sampled by a daemon thread: CPU seconds (all threads) and resident memory,
as ``remembrall_stage_cpu_seconds_total`` and ``remembrall_stage_rss_bytes``. CPU per item is then
``rate(cpu) / rate(frames)`` per stage — on the dashboard and in ``bench.throughput``."""

from __future__ import annotations

import os
import resource
import threading

from remembrall.monitoring import metrics as m

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of ``pid`` from /proc (None where there is no /proc or no such process)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


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
