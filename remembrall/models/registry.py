"""The versioned heads of one modality in a run's ``models/`` folder.

Retraining publishes specialized heads ``head-vN.pt`` and Reptile-updated bases ``base-vN.pt``
(text: ``text-head-vN.pt``, ``text-base-vN.pt``); ``current-{modality}.json`` names the
announcement infer should serve after a restart. Every checkpoint is written atomically and read
back before it counts, so a crash or a bad disk never leaves a half head that a restart would
serve. A rollback walks back through the accepted versions; pruning keeps the newest few.

>>> import tempfile, torch
>>> from remembrall.models.heads import ClassifierHead, HeadMeta
>>> reg = ModelRegistry(tempfile.mkdtemp(), "vision", keep_versions=2)
>>> for _ in range(3):
...     head, meta = reg.publish(ClassifierHead(4, ["a", "b"]), HeadMeta(["a", "b"], 4))
>>> reg.prune()
>>> meta.version, reg.history, sorted(reg.versions())
(3, [2, 3], [2, 3])
>>> left, (head, meta) = reg.rollback()
>>> left, meta.version, reg.history
(3, 2, [2])
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from remembrall.atomic import atomic_write_json
from remembrall.models.heads import CheckpointError, ClassifierHead, HeadMeta, load_head, save_head

log = logging.getLogger(__name__)

Head = tuple[ClassifierHead, HeadMeta]


class ModelRegistry:
    """Versioned specialized heads and bases of one modality; ``history`` lists the accepted
    specialized versions, oldest first, ending with the one serving."""

    def __init__(self, models_dir: str | os.PathLike[str], modality: str = "vision", keep_versions: int = 10) -> None:
        self.dir = Path(models_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.modality = modality
        self.keep_versions = keep_versions
        self.history: list[int] = []
        self.next_version = max(self.versions(), default=0) + 1

    # ------------------------------------------------------------------ files
    @property
    def prefix(self) -> str:
        return "" if self.modality == "vision" else f"{self.modality}-"

    def path(self, version: int, kind: str = "head") -> Path:
        """Where version ``version`` of ``kind`` (``head`` or ``base``) lives."""
        return self.dir / f"{self.prefix}{kind}-v{version}.pt"

    def versions(self, kind: str = "head") -> dict[int, Path]:
        """The checkpoints of ``kind`` on disk, by version."""
        pat = re.compile(rf"^{re.escape(self.prefix)}{kind}-v(\d+)\.pt$")
        return {int(mt.group(1)): p for p in self.dir.glob("*.pt") if (mt := pat.match(p.name))}

    def read_current(self) -> int | None:
        """The specialized version ``current-{modality}.json`` (or an older ``current.json``) names."""
        for name in (f"current-{self.modality}.json", "current.json"):
            try:
                data = json.loads((self.dir / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("modality", "vision") == self.modality \
                    and isinstance(data.get("version"), int):
                return int(data["version"])
        return None

    def write_current(self, announcement: dict[str, Any] | None) -> None:
        """Record what serves now (None: the base head serves, nothing is current)."""
        for name in (f"current-{self.modality}.json", "current.json"):
            p = self.dir / name
            if announcement is None:
                p.unlink(missing_ok=True)
            else:
                atomic_write_json(p, {k: v for k, v in announcement.items() if k != "classes"})

    # ------------------------------------------------------------------ reading
    def open_serving(self) -> Head | None:
        """The specialized head that served last: the current version, else the newest one that
        loads. Sets :attr:`history` to the versions up to it."""
        heads = self.versions()
        current = self.read_current()
        order = ([current] if current in heads else []) + sorted(heads, reverse=True)
        for version in order:
            try:
                loaded = load_head(heads[version])
            except CheckpointError as exc:
                log.error("cannot serve %s checkpoint v%d: %s", self.modality, version, exc)
                continue
            self.history = [v for v in sorted(heads) if v <= version]
            return loaded
        self.history = []
        return None

    def newest_base(self) -> tuple[ClassifierHead, HeadMeta, Path] | None:
        """The newest Reptile-updated base that loads, or None."""
        for version, path in sorted(self.versions("base").items(), reverse=True):
            try:
                head, meta = load_head(path)
            except CheckpointError as exc:
                log.error("skipping %s base checkpoint v%d: %s", self.modality, version, exc)
                continue
            return head, meta, path
        return None

    # ------------------------------------------------------------------ writing
    def publish(self, head: ClassifierHead, meta: HeadMeta) -> Head:
        """Write ``head`` as the next specialized version, read it back as infer will, and make it
        the newest accepted one. A checkpoint that fails its check is removed and raises
        :class:`CheckpointError`; the version number is not used up."""
        version = self.next_version
        meta.version = version
        path = self.path(version)
        try:
            save_head(path, head, meta)
            loaded = load_head(path)
        except (CheckpointError, OSError, ValueError) as exc:
            path.unlink(missing_ok=True)
            raise CheckpointError(f"checkpoint v{version} failed its check: {exc}") from None
        self.next_version = version + 1
        self.history.append(version)
        return loaded

    def save_base(self, head: ClassifierHead, meta: HeadMeta) -> Path:
        """Write a Reptile-updated base under its ``meta.version``."""
        path = self.path(meta.version, "base")
        save_head(path, head, meta)
        return path

    def rollback(self, to_version: int | None = None) -> tuple[int, Head | None]:
        """Step back from the serving version to ``to_version`` (if accepted earlier) or the one
        before; versions that no longer load are skipped. Returns (the version left, the head
        now serving or None for the base)."""
        if not self.history:
            raise ValueError(f"no {self.modality} version to roll back from")
        left = self.history.pop()
        if to_version in self.history:
            while self.history[-1] != to_version:
                self.history.pop()
        while self.history:
            try:
                return left, load_head(self.path(self.history[-1]))
            except CheckpointError as exc:
                log.error("cannot roll %s back to v%d: %s", self.modality, self.history.pop(), exc)
        return left, None

    def prune(self) -> None:
        """Keep the newest ``keep_versions`` checkpoints of each kind."""
        for kind in ("head", "base"):
            files = self.versions(kind)
            for version in sorted(files)[:-self.keep_versions]:
                files[version].unlink(missing_ok=True)
        self.history = [v for v in self.history if self.path(v).exists()]
