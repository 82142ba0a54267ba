"""Specialists a fleet shares: a zoo entry as bytes that another pipeline can check and import.

One camera learns a scene; another that later sees a similar scene recalls that specialist
instead of spending labels on it (RECL's shared model zoo). An entry carries its head checkpoint,
its scene key (prototype embeddings), the classes it knows, the embedding size and where it
comes from (``fleet``, ``origin`` pipeline, its version there). A pipeline imports an entry only
when it fits — same fleet, same embedding size, only classes this pipeline knows — and the
recall router serves an imported specialist only after it did at least as well as the serving
head on this camera's own newest labels.

>>> import torch
>>> from remembrall.models.heads import ClassifierHead, HeadMeta
>>> head = ClassifierHead(4, ["car", "person"])
>>> shared = SharedSpecialist.of(head, HeadMeta(["car", "person"], 4, version=7), np.ones((2, 4), np.float32),
...                              fleet="city", origin="cam-12", modality="vision")
>>> back = decode_shared(encode_shared(shared))
>>> back.origin, back.version, back.classes, back.key.shape
('cam-12', 7, ['car', 'person'], (2, 4))
>>> why_not_fit(back, fleet="city", modality="vision", dim=4, classes=["car", "person", "bike"]) is None
True
>>> why_not_fit(back, fleet="harbour", modality="vision", dim=4, classes=None)
"from fleet 'city', this pipeline is in fleet 'harbour'"
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from remembrall.learning.archive import pack, unpack
from remembrall.models.heads import CheckpointError, ClassifierHead, HeadMeta, head_bytes, head_from_bytes

FORMAT = "remembrall.shared-specialist"
FORMAT_VERSION = 1
#: An entry larger than this is refused before it is parsed (a 1,000-class head is ~5 MB).
MAX_ENTRY_BYTES = 64 << 20


class SharedEntryError(ValueError):
    """A shared entry that cannot be read (corrupt, another format)."""


@dataclass
class SharedSpecialist:
    fleet: str
    origin: str  # the pipeline that trained it
    modality: str
    version: int  # its version at the origin
    classes: list[str]
    dim: int
    key: np.ndarray  # (prototypes, dim) float32: the scene it was trained on
    head: bytes  # the head checkpoint
    val_accuracy: float | None = None
    labels_seen: int = 0
    created: float = 0.0

    @classmethod
    def of(cls, head: ClassifierHead, meta: HeadMeta, key: np.ndarray, *, fleet: str, origin: str, modality: str,
           labels_seen: int = 0) -> SharedSpecialist:
        return cls(fleet, origin, modality, meta.version, list(head.classes), head.in_dim,
                   np.asarray(key, np.float32), head_bytes(head, meta), meta.val_accuracy, labels_seen,
                   meta.created or time.time())

    @property
    def name(self) -> str:
        """Unique within a fleet: ``ORIGIN-MODALITY-vVERSION``."""
        return f"{self.origin}-{self.modality}-v{self.version}"

    def open_head(self) -> tuple[ClassifierHead, HeadMeta]:
        """The head, checked (a :class:`CheckpointError` when it is not a usable checkpoint)."""
        head, meta = head_from_bytes(self.head, f"shared specialist {self.name}")
        if head.in_dim != self.dim or head.classes != self.classes:
            raise CheckpointError(f"shared specialist {self.name}: its head does not match its description")
        return head, meta


def encode_shared(entry: SharedSpecialist) -> bytes:
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "fleet": entry.fleet, "origin": entry.origin,
            "modality": entry.modality, "origin_version": entry.version, "classes": entry.classes, "dim": entry.dim,
            "val_accuracy": entry.val_accuracy, "labels_seen": entry.labels_seen, "created": entry.created}
    return pack(meta, {"key": entry.key.astype(np.float32), "head": np.frombuffer(entry.head, np.uint8)})


def decode_shared(data: bytes, where: str = "<shared entry>") -> SharedSpecialist:
    """Parse an entry; anything malformed is a :class:`SharedEntryError` saying what."""
    if len(data) > MAX_ENTRY_BYTES:
        raise SharedEntryError(f"{where}: {len(data)} bytes, more than a shared specialist may take ({MAX_ENTRY_BYTES})")
    meta, arrays = unpack(data, FORMAT, FORMAT_VERSION, SharedEntryError, where)
    try:
        entry = SharedSpecialist(str(meta["fleet"]), str(meta["origin"]), str(meta["modality"]),
                                 int(meta["origin_version"]), [str(c) for c in meta["classes"]], int(meta["dim"]),
                                 np.asarray(arrays["key"], np.float32), arrays["head"].astype(np.uint8).tobytes(),
                                 meta.get("val_accuracy"), int(meta.get("labels_seen", 0)),
                                 float(meta.get("created", 0.0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise SharedEntryError(f"{where}: not a shared specialist ({type(exc).__name__}: {exc})") from None
    if entry.key.ndim != 2 or entry.key.shape[1] != entry.dim or not np.all(np.isfinite(entry.key)):
        raise SharedEntryError(f"{where}: its scene key does not match its {entry.dim}-d embeddings")
    return entry


def why_not_fit(entry: SharedSpecialist, *, fleet: str, modality: str, dim: int, classes: list[str] | None
                ) -> str | None:
    """Why this pipeline cannot use ``entry`` (None: it can). ``classes``: the classes this
    pipeline knows (None: not known yet, anything goes)."""
    if entry.fleet != fleet:
        return f"from fleet {entry.fleet!r}, this pipeline is in fleet {fleet!r}"
    if entry.modality != modality:
        return f"a {entry.modality} specialist, not {modality}"
    if entry.dim != dim:
        return f"{entry.dim}-d embeddings, this pipeline's encoder gives {dim}-d"
    unknown = sorted(set(entry.classes) - set(classes)) if classes is not None else []
    if unknown:
        return f"classes this pipeline does not know: {unknown[:5]}{' …' if len(unknown) > 5 else ''}"
    return None
