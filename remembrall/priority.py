"""CPU priority of a stage process (or one thread): retraining, decoding and loading a new head
must not slow inference down (the arbiter's "inference always wins", enforced by the kernel's
scheduler on a CPU-only host).

``idle`` puts the process in Linux's SCHED_IDLE class: it runs only on CPU time no normal process
wants, so inference's threads preempt it at once (a barrier-synchronised OpenMP region is as slow
as its slowest thread: one inference thread sharing a core with training made whole batches
wait). ``low`` is ``nice 10``; ``normal`` changes nothing. Threads started later inherit it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

POLICIES = ("idle", "low", "normal")
LOW_NICE = 10


def set_cpu_priority(policy: str) -> str:
    """Apply ``policy`` to this process's calling thread (and the threads it starts later).
    Returns what was applied; an OS that lacks the call keeps ``normal`` and says so."""
    if policy not in POLICIES:
        raise ValueError(f"cpu priority must be one of {POLICIES}, got {policy!r}")
    try:
        if policy == "idle" and hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        if policy in ("idle", "low"):  # on Linux "process" 0 is the calling thread
            os.setpriority(os.PRIO_PROCESS, 0, max(LOW_NICE, os.getpriority(os.PRIO_PROCESS, 0)))
            return "low"
    except OSError as exc:
        log.warning("cannot lower this process's CPU priority (%s): %s; it keeps the normal one", policy, exc)
    return "normal"
