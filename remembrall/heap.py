"""This process's resident memory, and giving the heap's free pages back to the OS.

glibc keeps what a process frees: the pages of a batch's activations stay resident after the
batch, in whichever arena the freeing thread used, and the dynamic mmap threshold moves large
tensors onto the heap once one is freed. An inference process whose batch sizes vary, or a
retrainer between runs, therefore grows its RSS in steps for hours — with nothing live behind
it (a 30-minute soak: infer +6.7 %; ``malloc_trim`` gave back 190 MiB of a 650 MiB infer).
:class:`HeapTrimmer` watches RSS and calls ``malloc_trim(0)`` when it has grown by a slack since
the last trim, so RSS tracks what is live and a real leak stands out. Where libc has no
``malloc_trim`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of ``pid`` from /proc (None where there is no /proc or no such process)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_heap() -> bool:
    """Return every arena's free pages to the OS; False where libc cannot (nothing done)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class HeapTrimmer(threading.Thread):
    """Every ``period_s``: when RSS is ``growth`` (a fraction) above its steady level, trim.

    The steady level is RSS one period after a trim: by then the working set (a batch's
    activations) is resident again, so a process that merely works is not trimmed again and
    again — each trim costs the next batch its page faults (infer: ~16 ms for the trim, ~60 ms
    on the next batch). ``on_release(bytes)`` hears how much each trim gave back.
    """

    MIN_SLACK = 4 * 2**20  # small processes: not for a few pages

    def __init__(self, growth: float, period_s: float = 5.0,
                 on_release: Callable[[int], None] | None = None) -> None:
        super().__init__(name="heap-trimmer", daemon=True)
        self.growth, self.period, self.on_release = growth, period_s, on_release
        self.steady: int | None = None  # unknown until one period after start or a trim
        self.trims = 0
        self._stop_event = threading.Event()

    def check(self) -> int | None:
        """Trim if RSS grew past the slack; the bytes released, or None when it did not trim."""
        rss = rss_bytes()
        if rss is None:
            return None
        if self.steady is None or rss < self.steady:
            self.steady = rss
            return None
        if rss - self.steady < max(self.MIN_SLACK, self.growth * self.steady):
            return None
        t0 = time.monotonic()
        if not release_free_heap():
            return None
        after = rss_bytes() or rss
        self.steady, self.trims = None, self.trims + 1
        released = max(0, rss - after)
        log.debug("gave %.1f MiB of free heap back to the OS in %.1f ms (RSS now %.0f MiB)",
                  released / 2**20, (time.monotonic() - t0) * 1000, after / 2**20)
        if self.on_release is not None:
            self.on_release(released)
        return released

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            self.check()

    def stop(self) -> None:
        self._stop_event.set()
