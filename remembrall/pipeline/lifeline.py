"""A stage's lifeline to its supervisor: tell "asked to stop" apart from "my supervisor is gone".

SIGTERM from the supervisor means *drain*: finish what you hold, pass it on, wait for release.
A stage whose supervisor died must do the opposite — nobody will release it and its consumers
may be gone too — so parent death has a signal of its own (:data:`PARENT_DEATH_SIGNAL`, set with
``PR_SET_PDEATHSIG`` between fork and exec) and a watcher thread that also notices a parent pid
that changed or a supervisor pid that no longer exists (covering a supervisor that died before
``prctl`` ran). Once the supervisor is gone the stage
gets :attr:`Lifeline.grace_s` seconds to save what it holds locally; then the process exits
however far it got, so a stage blocked inside a decoder or a training step cannot linger.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

#: What the kernel sends a stage when its supervisor dies. Before a stage installs its handler
#: (while models load) the default action ends the process at once, which is right then.
PARENT_DEATH_SIGNAL = signal.SIGUSR1
#: Exit status of a stage that ended because its supervisor was gone (nobody reads it, but a log does).
EXIT_ORPHANED = 4
#: How often the watcher compares the parent pid.
CHECK_EVERY_S = 0.25

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Between fork and exec (``preexec_fn``): get :data:`PARENT_DEATH_SIGNAL` when the parent dies,
    in a process group of one's own (a terminal's Ctrl-C reaches the supervisor only, which stops
    stages in order)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL))
    except OSError:  # not glibc: the watcher's parent-pid check still notices
        pass
    os.setpgrp()


class Lifeline:
    """Watches the supervisor of this process and bounds how long the process outlives it.

    ``supervisor_pid`` 0 means "no supervisor" (a stage run by a test harness): nothing is watched.
    The parent is whoever it is when this is made (not necessarily the supervisor's pid: an
    interpreter wrapper may sit between them); an orphan's parent changes to a reaper.
    """

    def __init__(self, supervisor_pid: int, grace_s: float) -> None:
        self.supervisor_pid = supervisor_pid
        self.parent_pid = os.getppid()
        self.grace_s = grace_s
        self._gone = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def gone(self) -> bool:
        return self._gone.is_set()

    def start(self) -> Lifeline:
        if self.supervisor_pid and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="lifeline", daemon=True)
            self._thread.start()
        return self

    def supervisor_gone(self) -> None:
        """Record that the supervisor died; the exit deadline starts now (idempotent)."""
        self._arm_deadline()
        self._gone.set()

    def _arm_deadline(self) -> None:
        """A deadline the kernel keeps: SIGALRM (default action: end the process) a second after
        the grace period. The watcher's own exit needs the GIL, and a low-priority main thread
        (decode runs at nice 10) holding it on a busy machine could keep it waiting."""
        if not self._gone.is_set():
            signal.alarm(math.ceil(self.grace_s) + 1)

    def _supervisor_exists(self) -> bool:
        try:
            os.kill(self.supervisor_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: it exists
            pass
        return True

    def _watch(self) -> None:
        while not self._gone.wait(CHECK_EVERY_S):
            if os.getppid() != self.parent_pid or not self._supervisor_exists():
                self._arm_deadline()
                self._gone.set()
                # wake the main thread's handler (it may sit in a blocking call); before the
                # handler is installed, the signal's default action ends the process
                os.kill(os.getpid(), PARENT_DEATH_SIGNAL)
        time.sleep(self.grace_s)  # the deadline: the main thread is saving what it holds meanwhile
        log.error("supervisor gone and this stage did not exit within %.1f s: exiting now", self.grace_s)
        os._exit(EXIT_ORPHANED)
