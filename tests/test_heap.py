"""The heap trimmer gives freed heap pages back to the OS, and leaves a steady process alone."""

from __future__ import annotations

import pytest

from remembrall import heap


def _freed_heap(mib: int) -> bytes:
    """Fill ``mib`` MiB of heap with 1 KiB blocks and free them, all but the newest (which pins
    the top of the heap, so free() alone cannot hand the pages back)."""
    blocks = [bytes(1024) for _ in range(mib * 1024)]
    pin = blocks[-1]
    del blocks
    return pin


@pytest.mark.skipif(heap.rss_bytes() is None or not heap.release_free_heap(), reason="needs /proc and glibc")
def test_a_grown_heap_is_trimmed_once_and_a_steady_one_is_left_alone() -> None:
    released: list[int] = []
    trimmer = heap.HeapTrimmer(growth=0.02, on_release=released.append)
    assert trimmer.check() is None  # the first look only learns the steady level
    assert trimmer.check() is None  # nothing grew
    pin = _freed_heap(128)
    before = heap.rss_bytes()
    got = trimmer.check()
    assert got is not None and got > 64 * 2**20, got  # most of the 128 MiB went back
    assert released == [got] and trimmer.trims == 1
    assert heap.rss_bytes() < before - 64 * 2**20
    assert trimmer.check() is None and trimmer.check() is None  # steady again: no more trims
    assert trimmer.trims == 1
    del pin


def test_rss_of_a_missing_process_is_none() -> None:
    assert heap.rss_bytes(2**22 + 12345) is None
