"""The replay memory: a bounded set of labelled embeddings that retraining learns from.

Learning only from the newest labels forgets the rest of the scene; the replay memory keeps a
bounded, policy-chosen history (``reservoir``: a uniform sample of everything seen;
``class_balanced``: evict from the largest class, so rare classes survive) plus a held-out slice
(every k-th labelled item, bounded, newest kept) that validation uses and training never sees.

It is persisted as one ``.npz`` file written atomically (temp file, fsync, rename), with a
``format`` field. Loading never unpickles (``allow_pickle=False``) and checks every array, so a
corrupt file or one from another format version is a :class:`ReplayError` — or, with
``on_corrupt="rebuild"``, the bad file is moved aside with a log line and learning starts from an
empty memory. Never a silently wrong model.

>>> import numpy as np
>>> mem = ReplayMemory(capacity=3, policy="reservoir", holdout_every=4, seed=0)
>>> [mem.add(f"s:{i}", np.full(2, i, np.float32), "cat" if i % 2 else "dog") for i in range(5)]
['train', 'train', 'train', 'holdout', 'skipped']
>>> len(mem), mem.holdout_size, mem.seen
(3, 1, 5)
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from remembrall.atomic import atomic_write_bytes
from remembrall.learning.archive import open_or_rebuild, pack, unpack

log = logging.getLogger(__name__)

FORMAT = "remembrall.replay"
FORMAT_VERSION = 1
POLICIES = ("reservoir", "class_balanced")
MAX_LABEL_LEN = 128


class ReplayError(ValueError):
    """A replay file that cannot be trusted (corrupt, truncated, another format version)."""


@dataclass
class Item:
    """One labelled sample."""

    id: str
    embedding: np.ndarray
    label: str
    stream: str = ""
    ts: float = 0.0


class _Store:
    """Parallel arrays for one split; slots are reused on eviction."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.emb: np.ndarray | None = None
        self.ids: list[str] = []
        self.labels: list[str] = []
        self.streams: list[str] = []
        self.ts: list[float] = []

    def __len__(self) -> int:
        return len(self.ids)

    def put(self, slot: int | None, item: Item) -> int:
        if self.emb is None:
            self.emb = np.zeros((self.capacity, item.embedding.shape[0]), np.float32)
        if slot is None:
            slot = len(self.ids)
            self.ids.append(item.id)
            self.labels.append(item.label)
            self.streams.append(item.stream)
            self.ts.append(item.ts)
        else:
            self.ids[slot], self.labels[slot] = item.id, item.label
            self.streams[slot], self.ts[slot] = item.stream, item.ts
        self.emb[slot] = item.embedding
        return slot

    def pop(self, slot: int) -> None:
        """Remove a slot by moving the last one into it."""
        last = len(self.ids) - 1
        assert self.emb is not None
        if slot != last:
            self.emb[slot] = self.emb[last]
            self.ids[slot], self.labels[slot] = self.ids[last], self.labels[last]
            self.streams[slot], self.ts[slot] = self.streams[last], self.ts[last]
        for lst in (self.ids, self.labels, self.streams, self.ts):
            lst.pop()

    def arrays(self) -> tuple[np.ndarray, list[str]]:
        if self.emb is None:
            return np.zeros((0, 0), np.float32), []
        return self.emb[: len(self.ids)].copy(), list(self.labels)


class ReplayMemory:
    """Bounded labelled memory with a held-out slice, persisted atomically."""

    def __init__(
        self,
        capacity: int = 2000,
        policy: str = "class_balanced",
        holdout_every: int = 5,
        holdout_capacity: int = 50,
        seed: int = 0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown replay policy {policy!r} (one of {', '.join(POLICIES)})")
        if capacity < 1 or holdout_capacity < 1 or holdout_every < 2:
            raise ValueError("capacity and holdout_capacity must be >= 1, holdout_every >= 2")
        self.capacity, self.policy = capacity, policy
        self.holdout_every, self.holdout_capacity = holdout_every, holdout_capacity
        self.rng = np.random.default_rng(seed)
        self.train = _Store(capacity)
        self.holdout = _Store(holdout_capacity)
        self.dim: int | None = None
        self.seen = 0  # labelled items offered
        self.seen_train = 0
        self.seen_by_class: Counter[str] = Counter()
        self._ids: set[str] = set()
        self._holdout_next = 0  # FIFO cursor once the holdout is full

    # ------------------------------------------------------------------ content
    def __len__(self) -> int:
        return len(self.train)

    @property
    def holdout_size(self) -> int:
        return len(self.holdout)

    def classes(self) -> list[str]:
        """Every class name held (train or held-out), sorted."""
        return sorted(set(self.train.labels) | set(self.holdout.labels))

    def class_counts(self) -> dict[str, int]:
        return dict(Counter(self.train.labels))

    def dataset(self, split: str = "train") -> tuple[np.ndarray, list[str]]:
        """(embeddings N×D float32 copy, labels) of ``train`` or ``holdout``."""
        if split not in ("train", "holdout"):
            raise ValueError(f"split must be 'train' or 'holdout', got {split!r}")
        return (self.train if split == "train" else self.holdout).arrays()

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._ids

    # ------------------------------------------------------------------ insertion
    def _check(self, sample_id: str, embedding: np.ndarray, label: str) -> np.ndarray:
        if not isinstance(sample_id, str) or not sample_id:
            raise ValueError("sample id must be a non-empty string")
        if not isinstance(label, str) or not label or len(label) > MAX_LABEL_LEN:
            raise ValueError(f"label must be a non-empty string of at most {MAX_LABEL_LEN} characters")
        x = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if x.size == 0 or not np.all(np.isfinite(x)):
            raise ValueError("embedding must be a non-empty finite vector")
        if self.dim is None:
            self.dim = x.size
        elif x.size != self.dim:
            raise ValueError(f"embedding has {x.size} dims, the memory holds {self.dim}-d embeddings")
        return x

    def add(self, sample_id: str, embedding: np.ndarray, label: str, stream: str = "", ts: float = 0.0) -> str:
        """Insert one labelled sample; returns ``train``, ``holdout``, ``skipped`` or ``duplicate``."""
        x = self._check(sample_id, embedding, label)
        if sample_id in self._ids:
            return "duplicate"
        item = Item(sample_id, x, label, stream, float(ts))
        self.seen += 1
        self.seen_by_class[label] += 1
        if self.seen % self.holdout_every == 0:
            self._add_holdout(item)
            return "holdout"
        self.seen_train += 1
        return "train" if self._add_train(item) else "skipped"

    def _add_holdout(self, item: Item) -> None:
        if len(self.holdout) < self.holdout_capacity:
            self.holdout.put(None, item)
        else:  # newest kept: validation should describe the scene as it is now
            slot = self._holdout_next
            self._ids.discard(self.holdout.ids[slot])
            self.holdout.put(slot, item)
            self._holdout_next = (slot + 1) % self.holdout_capacity
        self._ids.add(item.id)

    def _add_train(self, item: Item) -> bool:
        store = self.train
        if len(store) < self.capacity:
            store.put(None, item)
            self._ids.add(item.id)
            return True
        if self.policy == "reservoir":
            j = int(self.rng.integers(0, self.seen_train))
            if j >= self.capacity:
                return False
            slot = j
        else:  # class-balanced reservoir (CBRS): evict from the largest class
            counts = Counter(store.labels)
            top = max(counts.values())
            largest = [c for c, n in counts.items() if n == top]
            if counts.get(item.label, 0) >= top:
                # its own class is (one of) the largest: reservoir within the class
                own = self.seen_by_class[item.label]  # includes this item
                if self.rng.random() >= counts[item.label] / max(own, 1):
                    return False
                victim_class = item.label
            else:
                victim_class = largest[int(self.rng.integers(0, len(largest)))]
            slots = [i for i, lab in enumerate(store.labels) if lab == victim_class]
            slot = slots[int(self.rng.integers(0, len(slots)))]
        self._ids.discard(store.ids[slot])
        store.put(slot, item)
        self._ids.add(item.id)
        return True

    def forget(self, stream: str) -> int:
        """Remove every sample (training and held-out) that came from ``stream``; returns how many."""
        removed = 0
        for store in (self.train, self.holdout):
            for slot in reversed([i for i, s in enumerate(store.streams) if s == stream]):
                self._ids.discard(store.ids[slot])
                store.pop(slot)
                removed += 1
        self._holdout_next %= self.holdout_capacity
        return removed

    def streams(self) -> dict[str, int]:
        """Samples held per stream (training and held-out)."""
        return dict(Counter(self.train.streams) + Counter(self.holdout.streams))

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "policy": self.policy,
            "capacity": self.capacity,
            "holdout_every": self.holdout_every,
            "holdout_capacity": self.holdout_capacity,
            "dim": self.dim,
            "seen": self.seen,
            "seen_train": self.seen_train,
            "seen_by_class": dict(self.seen_by_class),
            "holdout_next": self._holdout_next,
            "rng": self.rng.bit_generator.state,
            "saved": time.time(),
        }
        arrays: dict[str, np.ndarray] = {}
        for name, store in (("train", self.train), ("holdout", self.holdout)):
            emb, labels = store.arrays()
            arrays[f"{name}_emb"] = emb if len(store) else np.zeros((0, self.dim or 0), np.float32)
            arrays[f"{name}_ts"] = np.asarray(store.ts, np.float64)
            meta[f"{name}_ids"] = list(store.ids)
            meta[f"{name}_labels"] = labels
            meta[f"{name}_streams"] = list(store.streams)
        return pack(meta, arrays)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Persist atomically: a crash leaves the previous file or this one, never half of one."""
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "<bytes>", **overrides: Any) -> ReplayMemory:
        """Rebuild a memory from :meth:`to_bytes` output; any inconsistency is a :class:`ReplayError`."""
        meta, files = unpack(data, FORMAT, FORMAT_VERSION, ReplayError, where)
        try:
            mem = cls(
                capacity=int(overrides.get("capacity", meta["capacity"])),
                policy=str(overrides.get("policy", meta["policy"])),
                holdout_every=int(overrides.get("holdout_every", meta["holdout_every"])),
                holdout_capacity=int(overrides.get("holdout_capacity", meta["holdout_capacity"])),
            )
            mem.rng.bit_generator.state = meta["rng"]
            mem.seen, mem.seen_train = int(meta["seen"]), int(meta["seen_train"])
            mem.seen_by_class = Counter({str(k): int(v) for k, v in meta["seen_by_class"].items()})
            for name, store in (("train", mem.train), ("holdout", mem.holdout)):
                emb, ts = files[f"{name}_emb"], files[f"{name}_ts"]
                ids, labels, streams = meta[f"{name}_ids"], meta[f"{name}_labels"], meta[f"{name}_streams"]
                n = len(ids)
                if not (emb.ndim == 2 and emb.shape[0] == n == len(labels) == len(streams) == ts.shape[0]):
                    raise ReplayError(f"{where}: {name} arrays disagree in length")
                if emb.dtype != np.float32 or not np.all(np.isfinite(emb)):
                    raise ReplayError(f"{where}: {name} embeddings are not finite float32")
                keep = range(max(0, n - store.capacity), n)  # a smaller capacity keeps the newest
                for i in keep:
                    mem._check(ids[i], emb[i], labels[i])
                    if ids[i] in mem._ids:
                        raise ReplayError(f"{where}: duplicate sample id {ids[i]!r}")
                    store.put(None, Item(ids[i], emb[i], labels[i], str(streams[i]), float(ts[i])))
                    mem._ids.add(ids[i])
            mem._holdout_next = int(meta["holdout_next"]) % mem.holdout_capacity
        except ReplayError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ReplayError(f"{where}: replay contents are inconsistent ({type(exc).__name__}: {exc})") from None
        return mem

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> ReplayMemory:
        """Load a persisted memory; raises :class:`ReplayError` when it cannot be trusted."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ReplayError(f"{p}: cannot read replay file ({exc})") from None
        return cls.from_bytes(data, where=str(p), **overrides)

    @classmethod
    def open(cls, path: str | os.PathLike[str], on_corrupt: str = "error", **settings: Any) -> ReplayMemory:
        """Load ``path`` if it exists, else a new memory. A bad file raises, or with
        ``on_corrupt="rebuild"`` is renamed ``*.corrupt-<time>`` (kept for inspection) and replaced
        by an empty memory, with a warning saying so."""
        return open_or_rebuild(path, lambda p: cls.load(p, **{k: v for k, v in settings.items() if k != "seed"}),
                               lambda: cls(**settings), ReplayError, rebuild=on_corrupt == "rebuild",
                               instead="an empty replay buffer")
