"""The Label page's back end: the samples the sampler selected and exported for a person, and the
labels that person gives, sent into the pipeline on the path label files and sockets use today
(the label stage's ``label.labels`` socket, ``label`` messages ``{id, label}``).

A label waits ``ui.undo_s`` seconds before it is sent, so the last one can be taken back (undo)
before the pipeline consumes it. Every label is checked first: the sample must have been exported
and not labelled yet, and a closed vocabulary must know the class.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remembrall.config import Config
from remembrall.learning.labelers import MAX_LABEL_LEN, Vocabulary, safe_name
from remembrall.monitoring import metrics as m
from remembrall.pipeline.control import PipelineUnreachable, push_message
from remembrall.pipeline.messages import Message
from remembrall.ui.auth import Refused

log = logging.getLogger(__name__)

#: what :func:`safe_name` makes: a portable stem and an 8-digit CRC
SAMPLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,120}-[0-9a-f]{8}$")
#: a sample list never sends more than this many at once
MAX_LIST = 200


@dataclass
class PendingLabel:
    id: str
    label: str
    stream: str
    due: float


class LabelDesk:
    """Exported samples in, human labels out (with a short undo window)."""

    def __init__(self, cfg: Config, out_dir: str | os.PathLike[str], sock_dir: str | os.PathLike[str]) -> None:
        self.labeler = cfg.label.labeler
        self.enabled = bool(cfg.learn) and self.labeler == "external"
        d = Path(cfg.label.external_dir)
        self.samples_dir = (d if d.is_absolute() else Path(out_dir) / d) / "samples"
        self.sock_dir = Path(sock_dir)
        self.vocab = Vocabulary(list(cfg.label.classes))
        self.undo_s = cfg.ui.undo_s
        self.pending: list[PendingLabel] = []
        self.sent = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._meta_cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ui-labels", daemon=True)

    def start(self) -> LabelDesk:
        if self.enabled:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.flush(everything=True)  # a label given is a label kept: no undo window at shutdown

    # ------------------------------------------------------------------ reading
    def _read_meta(self, path: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and isinstance(meta.get("id"), str) else None

    def _exported(self) -> list[tuple[Path, dict[str, Any]]]:
        """(file, metadata) of every exported sample, newest first; only new files are parsed."""
        found: list[tuple[float, Path, dict[str, Any]]] = []
        seen: dict[str, tuple[float, dict[str, Any] | None]] = {}
        try:
            entries = list(os.scandir(self.samples_dir))
        except OSError:
            entries = []
        for entry in entries:
            if not entry.name.endswith(".json"):
                continue
            try:
                mtime = entry.stat().st_mtime
            except OSError:
                continue
            cached = self._meta_cache.get(entry.name)
            meta = cached[1] if cached is not None and cached[0] == mtime else self._read_meta(Path(entry.path))
            seen[entry.name] = (mtime, meta)
            if meta is not None:
                found.append((mtime, Path(entry.path), meta))
        self._meta_cache = seen
        found.sort(key=lambda t: t[0], reverse=True)
        return [(path, meta) for _, path, meta in found]

    def samples(self, limit: int = 50) -> dict[str, Any]:
        """The page's queue: exported samples awaiting a label, newest first."""
        base = {"enabled": self.enabled, "labeler": self.labeler, "classes": self.vocab.classes,
                "closed": self.vocab.closed, "sent": self.sent, "failed": self.failed, "undo_s": self.undo_s}
        if not self.enabled:
            return {**base, "queue": 0, "samples": [], "pending": []}
        with self._lock:
            pending_ids = {p.id for p in self.pending}
            pending = [{"id": p.id, "label": p.label, "due_in": round(max(0.0, p.due - time.monotonic()), 2)}
                       for p in self.pending]
        out = []
        queue = 0
        for path, meta in self._exported():
            if meta["id"] in pending_ids:
                continue
            queue += 1
            if len(out) >= min(limit, MAX_LIST):
                continue
            item = {k: meta.get(k) for k in ("id", "stream", "seq", "ts", "pred", "top", "entropy", "model_version",
                                               "text")}
            if meta.get("image"):
                item["image"] = f"/api/samples/{path.stem}/image"
            out.append(item)
        return {**base, "queue": queue, "samples": out, "pending": pending}

    def image_path(self, name: str) -> Path:
        """The exported image ``name`` (a :func:`safe_name`); anything else is refused, never resolved."""
        if not SAMPLE_NAME.match(name):
            raise Refused(404, "no such sample image")
        path = self.samples_dir / f"{name}.png"
        if not path.is_file():
            raise Refused(404, "no such sample image (labelled already?)")
        return path

    # ------------------------------------------------------------------ labelling
    def submit(self, body: Any) -> dict[str, Any]:
        """Check one ``{"id": ..., "label": ...}`` and queue it for sending after the undo window."""
        if not self.enabled:
            raise Refused(409, f"labels come from the {self.labeler!r} labeler in this run; set "
                               "label.labeler: external (and learn: true) to label in the browser")
        if not isinstance(body, dict) or set(body) - {"id", "label"}:
            raise Refused(400, 'expected a JSON object {"id": ..., "label": ...}')
        sample_id, label = body.get("id"), body.get("label")
        if not isinstance(sample_id, str) or not sample_id or len(sample_id) > 512:
            raise Refused(400, "'id' must be the id of an exported sample (a non-empty string)")
        if isinstance(label, str):
            label = label.strip()
        if not isinstance(label, str) or not label or len(label) > MAX_LABEL_LEN:
            raise Refused(400, f"'label' must be a class name (a non-empty string of at most {MAX_LABEL_LEN} characters)")
        reason = self.vocab.check(label)
        if reason == "unknown_class":
            raise Refused(422, f"{label!r} is not one of this pipeline's classes: {', '.join(self.vocab.classes)}")
        if reason:
            raise Refused(400, f"label {label!r} refused ({reason})")
        meta = self._read_meta(self.samples_dir / f"{safe_name(sample_id)}.json")
        if meta is None or meta["id"] != sample_id:
            raise Refused(404, f"sample {sample_id!r} was never exported for labelling (or is labelled already)")
        with self._lock:
            if any(p.id == sample_id for p in self.pending):
                raise Refused(409, f"sample {sample_id!r} already has a label waiting to be sent (undo it first)")
            due = time.monotonic() + self.undo_s
            self.pending.append(PendingLabel(sample_id, label, str(meta.get("stream") or ""), due))
        if self.undo_s <= 0:
            self.flush()
        return {"id": sample_id, "label": label, "undo_s": self.undo_s}

    def undo(self) -> dict[str, Any]:
        """Take back the newest label that has not been sent yet."""
        with self._lock:
            if not self.pending:
                raise Refused(409, "nothing to undo: every label given has already entered the pipeline")
            p = self.pending.pop()
        m.UI_LABELS.labels("undone").inc()
        return {"id": p.id, "label": p.label, "undone": True}

    def flush(self, everything: bool = False) -> int:
        """Send the labels whose undo window has passed; returns how many went in."""
        now = time.monotonic()
        with self._lock:
            due = [p for p in self.pending if everything or p.due <= now]
            self.pending = [p for p in self.pending if p not in due]
        sent = 0
        for p in due:
            try:
                push_message(self.sock_dir, "label.labels",
                             Message("label", stream=p.stream, fields={"id": p.id, "label": p.label}))
            except PipelineUnreachable as exc:
                self.failed += 1
                m.UI_LABELS.labels("failed").inc()
                log.error("ui: label %r for %s could not enter the pipeline: %s", p.label, p.id, exc)
                continue
            sent += 1
            self.sent += 1
            m.UI_LABELS.labels("sent").inc()
        return sent

    def _draining(self) -> bool:
        """Whether the run has begun to stop (the supervisor's status file says so)."""
        try:
            return bool(json.loads((self.sock_dir / "status.json").read_text(encoding="utf-8")).get("stopping"))
        except (OSError, ValueError, AttributeError):
            return False

    def _run(self) -> None:
        last_check = 0.0
        draining = False
        while not self._stop.wait(0.2):
            if not draining and time.monotonic() - last_check >= 1.0:
                last_check = time.monotonic()
                draining = self._draining()
            # once the run drains, labels go in at once: the label stage is still there to take them
            self.flush(everything=draining)
