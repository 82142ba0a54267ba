"""What one retraining run trains and validates on: the replay memory's train and held-out
slices, plus the labels that arrived after the memory was last saved.

The buffer stage saves its memory every few inserts; retrain hears every label as it is
forwarded. A run started between two saves would miss the newest labels — exactly the ones of
the scene that triggered it — so :class:`RecentLabels` keeps them and :func:`training_set`
adds those the memory has not persisted yet. Older recent labels absent from the memory were
evicted by its policy: bringing them back would bypass ``buffer.capacity``.

>>> import numpy as np
>>> recent = RecentLabels(capacity=8)
>>> for i in range(3):
...     recent.add(f"c:{i}", np.full(4, i, np.float32), "ab"[i % 2], "holdout" if i == 2 else "train")
>>> ts = training_set(None, recent, labels_total=3)
>>> ts.xs.shape, ts.ys, ts.yv, ts.seen
((2, 4), ['a', 'b'], ['a'], 3)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from remembrall.learning.replay import ReplayMemory


class RecentLabels:
    """The newest forwarded labels by sample id (embedding, label, split), oldest dropped first."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[np.ndarray, str, str]] = OrderedDict()
        self._streams: dict[str, str] = {}

    def add(self, sample_id: str, embedding: np.ndarray, label: str, split: str, stream: str = "") -> None:
        self._items[sample_id] = (np.array(embedding, np.float32), label, split)
        self._streams[sample_id] = stream
        while len(self._items) > self.capacity:
            self._streams.pop(self._items.popitem(last=False)[0], None)

    def forget_stream(self, stream: str) -> int:
        """Drop the labels that came from ``stream``; returns how many."""
        gone = [sid for sid, s in self._streams.items() if s == stream]
        for sid in gone:
            self._items.pop(sid, None)
            del self._streams[sid]
        return len(gone)

    def newest(self, n: int) -> list[tuple[str, tuple[np.ndarray, str, str]]]:
        return list(self._items.items())[-n:] if n > 0 else []

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class TrainingSet:
    xs: np.ndarray
    ys: list[str]
    xv: np.ndarray
    yv: list[str]
    #: Labels this set accounts for (the run's head records it as ``trained_seen``).
    seen: int


def _merge(x: np.ndarray, y: list[str], extra: list[tuple[np.ndarray, str]], dim: int) -> tuple[np.ndarray, list[str]]:
    if x.size == 0:
        x = np.zeros((0, dim), np.float32)
    ok = [(e, lab) for e, lab in extra if e.shape[0] == dim]
    if not ok:
        return x, list(y)
    return np.concatenate([x, np.stack([e for e, _ in ok])]), list(y) + [lab for _, lab in ok]


def training_set(memory: ReplayMemory | None, recent: RecentLabels, labels_total: int) -> TrainingSet | None:
    """The memory's slices plus the ``labels_total - memory.seen`` newest recent labels it lacks;
    None when there is nothing to train on."""
    empty = (np.zeros((0, 0), np.float32), [])
    xs, ys = memory.dataset("train") if memory else empty
    xv, yv = memory.dataset("holdout") if memory else empty
    held = set(memory.train.ids) | set(memory.holdout.ids) if memory else set()
    persisted = memory.seen if memory else 0
    extra: dict[str, list[tuple[np.ndarray, str]]] = {"train": [], "holdout": []}
    for sid, (emb, label, split) in recent.newest(max(0, labels_total - persisted)):
        if sid not in held and split in extra:
            extra[split].append((emb, label))
    dim = xs.shape[1] if len(ys) else (xv.shape[1] if len(yv) else None)
    if dim is None and (extra["train"] or extra["holdout"]):
        dim = (extra["train"] or extra["holdout"])[0][0].shape[0]
    if dim is None:
        return None
    xs, ys = _merge(xs, ys, extra["train"], dim)
    xv, yv = _merge(xv, yv, extra["holdout"], dim)
    return TrainingSet(xs, ys, xv, yv, max(persisted, labels_total))
