"""The specialist zoo: every accepted head kept on disk with a key that describes its scene.

A head retrained on one scene forgets the last; when that scene returns (night after day, a PTZ
camera panning back, a topic that recurs) the zoo recalls the specialist that had learned it with
one lookup instead of retraining (RECL's model zoo; Engram/TokMem-style addressable units). A
specialist's *key* is a few prototype embeddings (k-means centroids) of what it was trained on; a
scene is matched by the mean, over its recent embeddings, of the best cosine similarity to a
key's prototypes — one matrix product over every key, so a lookup stays cheap for thousands.
Keys are held as int8 codes with a scale per prototype (``vectors.quantize_rows``): 10 kB per
specialist, so a thousand of them add about 10 MB to the host, not 40.

Only the index (keys and metadata) is in memory; heads stay on disk until recalled (the infer
stage keeps ``zoo.resident`` of them on its device). The index and each head are written
atomically; one writer (the retrain stage) owns a zoo folder, readers reload it when it changes.

>>> import tempfile, torch
>>> from remembrall.models.heads import ClassifierHead, HeadMeta
>>> zoo = SpecialistZoo(tempfile.mkdtemp(), "vision", dim=2)
>>> day, night = np.array([[1.0, 0.0]] * 4), np.array([[0.0, 1.0]] * 4)
>>> for v, scene in ((1, day), (2, night)):
...     _ = zoo.add(ClassifierHead(2, ["a", "b"]), HeadMeta(["a", "b"], 2, version=v), scene, ["cam0"])
>>> zoo.match(night)[0][0], len(zoo)
(2, 2)
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from remembrall.atomic import atomic_write_bytes
from remembrall.learning.archive import move_aside, pack, unpack
from remembrall.learning.vectors import quantize_rows, unit_rows
from remembrall.models.heads import CheckpointError, ClassifierHead, HeadMeta, load_head, save_head

log = logging.getLogger(__name__)

FORMAT = "remembrall.zoo"
FORMAT_VERSION = 1
#: specialists scored per matrix product (bounds the float32 copy a lookup makes of int8 codes)
SCORE_CHUNK = 64


class ZooError(ValueError):
    """A zoo index or entry that cannot be used (corrupt, wrong classes or embedding size)."""


@dataclass
class Specialist:
    """One zoo entry: where its head is, what it knows, how it did, how often it came back."""

    version: int
    file: str  # relative to the zoo folder
    classes: list[str]
    val_accuracy: float | None = None
    created: float = 0.0
    recalls: int = 0
    streams: list[str] = field(default_factory=list)
    labels_seen: int = 0
    origin: str = ""  # another pipeline of the fleet that trained it ("": this one)
    origin_version: int = 0  # its version there


def scene_key(embeddings: np.ndarray, prototypes: int, seed: int = 0) -> np.ndarray:
    """``prototypes`` L2-normalised k-means centroids of ``embeddings`` (fewer when fewer items)."""
    x = unit_rows(embeddings)
    k = max(1, min(prototypes, len(x)))
    if k == len(x):
        centres = x
    else:
        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, min_points_per_centroid=1)
        km.train(x)
        centres = km.centroids
    centres = unit_rows(centres)
    out = np.zeros((prototypes, x.shape[1]), np.float32)
    out[:len(centres)] = centres
    return out


class SpecialistZoo:
    """Specialists of one modality in ``root/<modality>/``: ``index.npz`` and ``spec-v{N}.pt``."""

    def __init__(self, root: str | os.PathLike[str], modality: str, dim: int, prototypes: int = 8,
                 capacity: int = 5000) -> None:
        self.dir = Path(root) / modality
        self.modality, self.dim, self.prototypes, self.capacity = modality, dim, prototypes, capacity
        self.entries: list[Specialist] = []
        self._empty_keys()
        self.refused = 0
        self._mtime: float | None = None
        self.reload()

    def __len__(self) -> int:
        return len(self.entries)

    def _empty_keys(self) -> None:
        self.codes = np.zeros((0, self.prototypes, self.dim), np.int8)
        self.scales = np.zeros((0, self.prototypes), np.float32)

    @property
    def index_bytes(self) -> int:
        """Host bytes the keys take."""
        return int(self.codes.nbytes + self.scales.nbytes)

    @property
    def index_path(self) -> Path:
        return self.dir / "index.npz"

    def versions(self) -> list[int]:
        return [e.version for e in self.entries]

    def get(self, version: int) -> Specialist | None:
        return next((e for e in self.entries if e.version == version), None)

    def key_of(self, version: int) -> np.ndarray | None:
        for i, e in enumerate(self.entries):
            if e.version == version:
                return self.codes[i] * self.scales[i][:, None]
        return None

    # ------------------------------------------------------------------ reading
    def reload(self, force: bool = False) -> bool:
        """Re-read the index when it changed on disk; a corrupt index is moved aside (logged)."""
        try:
            mtime = self.index_path.stat().st_mtime_ns
        except OSError:
            return False
        if not force and mtime == self._mtime:
            return False
        try:
            self._read(self.index_path.read_bytes())
        except (ZooError, OSError) as exc:
            move_aside(self.index_path, exc, "an empty zoo index (the specialists' files are kept)")
            self.entries = []
            self._empty_keys()
            self._mtime = None
            return True
        self._mtime = mtime
        return True

    def _read(self, data: bytes) -> None:
        where = str(self.index_path)
        meta, arrays = unpack(data, FORMAT, FORMAT_VERSION, ZooError, where)
        try:
            entries = [Specialist(**e) for e in meta["entries"]]
            if "keys" in arrays:  # an index written before keys were quantized
                codes, scales = quantize_rows(np.asarray(arrays["keys"], np.float32))
            else:
                codes, scales = arrays["codes"], arrays["scales"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ZooError(f"{where}: zoo index is inconsistent ({exc})") from None
        if (codes.ndim != 3 or codes.dtype != np.int8 or codes.shape[0] != len(entries)
                or scales.shape != codes.shape[:2] or not np.all(np.isfinite(scales))):
            raise ZooError(f"{where}: zoo keys do not match its entries")
        if len(entries) and codes.shape[2] != self.dim:
            raise ZooError(f"{where}: zoo keys are {codes.shape[2]}-d, this encoder gives {self.dim}-d")
        if codes.shape[1] != self.prototypes:  # zoo.prototypes changed: pad or cut
            n = min(self.prototypes, codes.shape[1])
            fixed = np.zeros((len(entries), self.prototypes, self.dim), np.int8)
            fixed_scales = np.zeros((len(entries), self.prototypes), np.float32)
            fixed[:, :n], fixed_scales[:, :n] = codes[:, :n], scales[:, :n]
            codes, scales = fixed, fixed_scales
        self.entries, self.codes, self.scales = entries, codes, scales.astype(np.float32)

    def open_head(self, version: int, classes: list[str] | None = None) -> tuple[ClassifierHead, HeadMeta]:
        """Load a specialist's head; a missing/corrupt file or a class/size mismatch is a ZooError
        (and is counted in :attr:`refused`)."""
        entry = self.get(version)
        if entry is None:
            raise ZooError(f"no specialist v{version} in the {self.modality} zoo ({self.dir})")
        try:
            head, meta = load_head(self.dir / entry.file)
        except CheckpointError as exc:
            self.refused += 1
            raise ZooError(str(exc)) from None
        if head.in_dim != self.dim or (classes is not None and set(head.classes) - set(classes)):
            self.refused += 1
            raise ZooError(f"{self.dir / entry.file}: classes or embedding size do not match this pipeline")
        return head, meta

    # ------------------------------------------------------------------ lookup
    def scores(self, recent: np.ndarray) -> np.ndarray:
        """How well each specialist's key matches ``recent`` embeddings (mean best cosine)."""
        if not self.entries or len(recent) == 0:
            return np.zeros(len(self.entries), np.float32)
        q = unit_rows(recent)
        out = np.empty(len(self.entries), np.float32)
        for start in range(0, len(self.entries), SCORE_CHUNK):
            codes = self.codes[start:start + SCORE_CHUNK]
            flat = codes.reshape(-1, self.dim).astype(np.float32)  # all-zero padding rows score 0
            sims = (q @ flat.T) * self.scales[start:start + SCORE_CHUNK].reshape(-1)
            out[start:start + len(codes)] = sims.reshape(len(q), len(codes), self.prototypes).max(axis=2).mean(axis=0)
        return out

    def match(self, recent: np.ndarray) -> list[tuple[int, float]]:
        """(version, score) of every specialist, best match first."""
        s = self.scores(recent)
        order = np.argsort(-s, kind="stable")
        return [(self.entries[i].version, float(s[i])) for i in order]

    # ------------------------------------------------------------------ writing (one writer)
    def add(self, head: ClassifierHead, meta: HeadMeta, scene: np.ndarray, streams: list[str],
            labels_seen: int = 0, save: bool = True, *, key: np.ndarray | None = None, origin: str = "",
            origin_version: int = 0) -> Specialist:
        """Store an accepted head with the key of ``scene`` (its recent training embeddings), or
        with ``key`` itself (a fleet's specialist: ``origin`` trained it as ``origin_version``).
        ``save=False`` defers the index write (bulk imports: call :meth:`save` once after)."""
        if head.in_dim != self.dim:
            raise ZooError(f"a {head.in_dim}-d head does not fit a {self.dim}-d zoo")
        self.dir.mkdir(parents=True, exist_ok=True)
        file = f"spec-v{meta.version}.pt"
        save_head(self.dir / file, head, meta)
        entry = Specialist(meta.version, file, list(head.classes), meta.val_accuracy, meta.created or time.time(),
                           0, sorted(set(streams)), labels_seen, origin, origin_version)
        if key is None:
            key = scene_key(scene, self.prototypes)
        else:  # another pipeline's zoo.prototypes: cut, or pad with zero rows (they score 0)
            key = np.vstack([key, np.zeros((max(0, self.prototypes - len(key)), self.dim), np.float32)])
            key = key[:self.prototypes]
        codes, scales = quantize_rows(np.asarray(key, np.float32)[None])
        old = [i for i, e in enumerate(self.entries) if e.version == meta.version]
        if old:
            self.entries.pop(old[0])
            self.codes, self.scales = np.delete(self.codes, old[0], axis=0), np.delete(self.scales, old[0], axis=0)
        self.entries.append(entry)
        self.codes, self.scales = np.concatenate([self.codes, codes]), np.concatenate([self.scales, scales])
        self._evict()
        if save:
            self.save()
        return entry

    def from_origin(self, origin: str, origin_version: int) -> Specialist | None:
        """The entry imported from ``origin``'s ``origin_version``, if this zoo holds it."""
        return next((e for e in self.entries if e.origin == origin and e.origin_version == origin_version), None)

    def note_recall(self, version: int) -> None:
        entry = self.get(version)
        if entry is not None:
            entry.recalls += 1
            self.save()

    def remove(self, versions: list[int]) -> list[int]:
        """Drop specialists (index entry and head file); returns the versions removed."""
        drop = [i for i, e in enumerate(self.entries) if e.version in set(versions)]
        for i in drop:
            (self.dir / self.entries[i].file).unlink(missing_ok=True)
        removed = [self.entries[i].version for i in drop]
        self.entries = [e for i, e in enumerate(self.entries) if i not in set(drop)]
        if drop:
            self.codes, self.scales = np.delete(self.codes, drop, axis=0), np.delete(self.scales, drop, axis=0)
        if removed:
            self.save()
        return removed

    def trained_only_on(self, stream: str) -> list[int]:
        return [e.version for e in self.entries if e.streams == [stream]]

    def _evict(self) -> None:
        """Past ``capacity``: drop the least recalled, oldest specialists."""
        excess = len(self.entries) - self.capacity
        if excess > 0:
            order = sorted(self.entries, key=lambda e: (e.recalls, e.created))[:excess]
            self.remove([e.version for e in order])

    def save(self) -> None:
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "modality": self.modality, "dim": self.dim,
                "entries": [asdict(e) for e in self.entries]}
        atomic_write_bytes(self.index_path, pack(meta, {"codes": self.codes, "scales": self.scales}))
        self._mtime = self.index_path.stat().st_mtime_ns
