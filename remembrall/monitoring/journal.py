"""The run's learning journal, ``OUT/events.jsonl``: one JSON object per line for each thing the
Learning page and ``remembrall report`` chart — a label taken, a retraining run and how it
stopped, a model swapped in, a scene drift, a rollback, a specialist recalled.

Stages append from their own processes. Each event is one ``write`` of one line on a file
opened with ``O_APPEND``, so lines from different processes never interleave; a crash can cut
at most the last line, which readers skip (:func:`read_events`). Metrics say *how much*; the
journal says *what happened when*, which is what a chart of a night's run needs.

>>> import tempfile, pathlib
>>> j = Journal(tempfile.mkdtemp(), "retrain")
>>> j.write("drift", modality="vision", drift=0.31)
>>> [(e["event"], e["stage"], e["drift"]) for e in read_events(j.path)[0]]
[('drift', 'retrain', 0.31)]
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "events.jsonl"
#: events the journal knows; the reader keeps others too (newer writers), but these are charted
EVENTS = ("label", "run", "swap", "drift", "rollback", "recall", "consolidation")


class Journal:
    """Appends events for one stage; a journal that cannot write logs once and keeps the stage going."""

    def __init__(self, out_dir: str | os.PathLike[str] | None, stage: str) -> None:
        self.path = Path(out_dir) / FILE_NAME if out_dir else None
        self.stage = stage
        self._failed = False

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        record = {"ts": round(time.time(), 3), "event": event, "stage": self.stage, **fields}
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._failed:
                log.warning("%s: cannot write the learning journal %s: %s", self.stage, self.path, exc)
                self._failed = True


def read_lines(path: str | os.PathLike[str], offset: int = 0, max_bytes: int | None = None
               ) -> tuple[list[tuple[bytes, dict[str, Any]]], int]:
    """Journal lines from byte ``offset`` on, raw and parsed, and the offset to continue from; a cut
    or garbled line is skipped (a line still being written is left for the next call). With
    ``max_bytes`` at most that much is read, and a line longer than it is skipped."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(-1 if max_bytes is None else max_bytes)
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1  # only whole lines
    if end == 0 and max_bytes is not None and len(data) >= max_bytes:
        return [], offset + len(data)
    lines = []
    for raw in data[:end].splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("event"), str):
            lines.append((raw, rec))
    return lines, offset + end


def read_events(path: str | os.PathLike[str], offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events from byte ``offset`` on and the offset to continue from (see :func:`read_lines`)."""
    lines, offset = read_lines(path, offset)
    return [rec for _, rec in lines if isinstance(rec.get("ts"), (int, float))], offset
