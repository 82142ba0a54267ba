"""The retrain stage's side of a zoo shared by a fleet (``zoo.share``): every specialist it keeps
is published; every specialist another pipeline published is imported into the local zoo when
it fits, where infer's recall router finds it like its own — but serves it only after it did at
least as well as the serving head on this camera's newest labels (``zoo.fleet_check_labels``).

Imports take local version numbers (the registry's next ones), so heads, swaps and rollbacks
need nothing new; the entry remembers its origin and version there, and is imported once.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from remembrall.io.shared_store import Share, ShareUnavailable, open_share
from remembrall.learning.fleet import (
    SharedEntryError,
    SharedSpecialist,
    decode_shared,
    encode_shared,
    why_not_fit,
)
from remembrall.learning.zoo import SpecialistZoo, ZooError
from remembrall.models.heads import CheckpointError, ClassifierHead, HeadMeta
from remembrall.models.registry import ModelRegistry
from remembrall.monitoring import metrics as m

log = logging.getLogger(__name__)

#: entries fetched before this pipeline has a zoo to put them in (no head yet), at most
WAITING = 256
#: refusals logged one by one; after that, every hundredth
LOG_REFUSALS = 10


def default_origin(out_dir: str) -> str:
    """This pipeline's name in the fleet: the host and its output folder."""
    return f"{socket.gethostname()}-{Path(out_dir).resolve().name or 'out'}"


class FleetZoo:
    """Publishes this pipeline's specialists to ``zoo.share`` and imports the fleet's."""

    def __init__(self, cfg: Any, stage: str, out_dir: str, journal: Callable[..., None]) -> None:
        z = cfg.zoo
        self.fleet, self.stage = z.fleet, stage
        self.origin = z.origin or default_origin(out_dir)
        self.every_s = z.share_every_s
        self.share: Share = open_share(z.share, self.origin)
        self.journal = journal
        self.waiting: deque[SharedSpecialist] = deque(maxlen=WAITING)
        self._checked = 0.0
        self._down: str | None = None
        self.refusals = 0
        log.info("%s: sharing specialists with fleet %r as %r through %s", stage, self.fleet, self.origin, z.share)

    def _count(self, modality: str, outcome: str) -> None:
        m.ZOO_SHARED.labels(self.stage, modality, outcome).inc()

    def _unavailable(self, exc: ShareUnavailable, modality: str) -> None:
        self._count(modality, "unavailable")
        if self._down != str(exc):
            log.warning("%s: the shared zoo is unavailable (%s); trying again every %.0f s", self.stage, exc,
                        self.every_s)
            self._down = str(exc)

    # ------------------------------------------------------------------ out
    def publish(self, zoo: SpecialistZoo, head: ClassifierHead, meta: HeadMeta, modality: str,
                labels_seen: int) -> None:
        """Share a specialist this pipeline trained (imported ones are not shared again)."""
        key = zoo.key_of(meta.version)
        if key is None:
            return
        entry = SharedSpecialist.of(head, meta, key, fleet=self.fleet, origin=self.origin, modality=modality,
                                    labels_seen=labels_seen)
        try:
            self.share.publish(entry.name, encode_shared(entry))
        except ShareUnavailable as exc:
            self._unavailable(exc, modality)
            return
        self._down = None
        self._count(modality, "published")

    # ------------------------------------------------------------------ in
    def sync(self, zoos: dict[str, tuple[SpecialistZoo | None, ModelRegistry, list[str] | None]]) -> int:
        """Import what the fleet published since the last look (every ``zoo.share_every_s``);
        ``zoos``: modality -> (its zoo or None before the first head, registry, known classes).
        Returns how many specialists were imported."""
        now = time.monotonic()
        if now - self._checked < self.every_s:
            return 0
        self._checked = now
        try:
            fetched = self.share.fetch()
        except ShareUnavailable as exc:
            self._unavailable(exc, "")
            return 0
        self._down = None
        for name, size in self.share.oversized:
            self._refuse("", name, f"{size} bytes: too large for a shared specialist")
        self.share.oversized.clear()
        for name, blob in fetched:
            try:
                self.waiting.append(decode_shared(blob, f"shared specialist {name}"))
            except SharedEntryError as exc:
                self._refuse("", name, str(exc))
        imported, keep = 0, []
        while self.waiting:
            entry = self.waiting.popleft()
            target = zoos.get(entry.modality)
            if target is None or target[0] is None:
                keep.append(entry)  # no zoo for it yet: this pipeline has no head of that modality
                continue
            imported += self._import(entry, *target)
        self.waiting.extend(keep)
        return imported

    def _refuse(self, modality: str, name: str, why: str) -> None:
        self.refusals += 1
        self._count(modality, "refused")
        if self.refusals <= LOG_REFUSALS or self.refusals % 100 == 0:
            log.warning("%s: not importing %s from the shared zoo: %s", self.stage, name, why)

    def _import(self, entry: SharedSpecialist, zoo: SpecialistZoo, registry: ModelRegistry,
                classes: list[str] | None) -> int:
        if entry.origin == self.origin or zoo.from_origin(entry.origin, entry.version) is not None:
            return 0
        why = why_not_fit(entry, fleet=self.fleet, modality=zoo.modality, dim=zoo.dim, classes=classes)
        if why is not None:
            self._refuse(entry.modality, entry.name, why)
            return 0
        try:
            head, meta = entry.open_head()
        except CheckpointError as exc:
            self._refuse(entry.modality, entry.name, str(exc))
            return 0
        meta.version, meta.kind = registry.next_version, "specialized"
        meta.extra = {**meta.extra, "origin": entry.origin, "origin_version": entry.version}
        try:
            zoo.add(head, meta, entry.key, [], labels_seen=entry.labels_seen, key=entry.key, origin=entry.origin,
                    origin_version=entry.version)
        except (ZooError, OSError) as exc:
            self._refuse(entry.modality, entry.name, f"cannot keep it in the local zoo: {exc}")
            return 0
        registry.next_version += 1  # the version is the zoo entry's now
        self._count(entry.modality, "imported")
        self.journal("fleet_import", modality=entry.modality, version=meta.version, origin=entry.origin,
                     origin_version=entry.version)
        log.info("%s: imported %s specialist v%d from %s (its v%d) into the zoo", self.stage, entry.modality,
                 meta.version, entry.origin, entry.version)
        return 1

    def close(self) -> None:
        self.share.close()
