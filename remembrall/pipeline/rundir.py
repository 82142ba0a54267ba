"""A run's socket directory (ipc sockets, metrics files, stage specs, status.json), claimed with a
lock for the supervisor's lifetime.

A supervisor that is killed cannot remove its directory. The kernel drops its lock though, so the
next ``remembrall run`` can tell a dead run's leftovers from a live run's and remove them, instead
of letting killed runs pile up in ``/tmp`` (or in ``/run/remembrall`` under systemd).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "remembrall-"
LOCK_NAME = ".lock"


class RunDir:
    """A fresh ``remembrall-*`` directory under ``base``, locked until :meth:`remove`."""

    def __init__(self, base: str | os.PathLike[str]) -> None:
        base = Path(base)
        base.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
        # not inherited by stage processes (PEP 446): the lock dies with the supervisor alone
        self._fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)


def remove_stale_run_dirs(base: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``remembrall-*`` directories under ``base`` whose supervisor is gone (their lock
    is free). Directories without a lock (another run's being created, older versions) are kept."""
    removed = []
    for path in sorted(Path(base).glob(PREFIX + "*")):
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: that run is alive
            continue
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d run folder(s) of pipelines that were killed: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def modality_path(path: str, run_dir: str | Path, modality: str) -> Path:
    """``path`` under the run dir, with ``-<modality>`` before the suffix for every modality but vision."""
    p = Path(path)
    if not p.is_absolute():
        p = Path(run_dir or ".") / p
    if modality != "vision":
        p = p.with_name(f"{p.stem}-{modality}{p.suffix}")
    return p
