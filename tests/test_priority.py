"""CPU priority of a stage's thread: lowered for that thread alone, never raised, refused when
unknown."""

from __future__ import annotations

import os
import threading

import pytest

from remembrall.priority import set_cpu_priority


def _in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.update(result=fn()))
    t.start()
    t.join()
    return out["result"]


def test_low_and_idle_apply_to_the_calling_thread_only() -> None:
    main_nice = os.getpriority(os.PRIO_PROCESS, 0)
    assert _in_thread(lambda: (set_cpu_priority("low"), set_cpu_priority("low"),
                               os.getpriority(os.PRIO_PROCESS, 0))) == ("low", "low", max(10, main_nice))
    assert _in_thread(lambda: (set_cpu_priority("idle"), os.sched_getscheduler(0))) == ("idle", os.SCHED_IDLE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == main_nice and os.sched_getscheduler(0) == os.SCHED_OTHER
    assert set_cpu_priority("normal") == "normal"
    with pytest.raises(ValueError, match="one of"):
        set_cpu_priority("realtime")
