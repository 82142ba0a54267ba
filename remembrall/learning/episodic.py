"""Episodic memory: labelled embeddings that change predictions at once, without retraining.

A label helps the head only after the next retraining run; written here, it helps the very next
batch. Inference blends the served head's probabilities with a similarity-weighted vote of the
``k`` nearest stored embeddings (DESIGN §10, the "hippocampus")::

    p = (1 − λ) · p_head + λ · p_vote,   λ = α · [s₁ ≥ τ]

``s₁`` is the query's best similarity to the memory: far from everything stored, the head alone
answers. ``α`` and ``τ`` are calibrated *prequentially*: each arriving label is first scored (head
and vote as they were before it was stored), and the (α, τ) with the best accuracy over the newest
``calibration_window`` arrivals is kept — ``α = 0`` (the head alone) is a candidate, so the blend
is never worse than the head on those held-out labels. With no head at all the vote answers alone.

Storage is surprise-first: each item keeps ``surprise = 1 − p_head(true label)`` from when it was
written; a same-label near-duplicate of a stored item is not stored again; a full memory evicts
the oldest item the head already knew (surprise below ``known_surprise``), else the oldest.
Consolidation (:meth:`EpisodicMemory.prune`) drops what a newly accepted head gets right with margin.

Search: on CPU a FAISS brute-force inner-product search over the stored rows (an IVF index past
``ivf_min`` items, see ``python -m bench.memory``); on CUDA a device-resident fp16 matrix and one
matmul per batch. Persisted as one atomic ``.npz`` (:mod:`remembrall.learning.archive`).

>>> mem = EpisodicMemory(dim=2, capacity=4)
>>> mem.write(np.array([1.0, 0.0]), "cat").stored, mem.write(np.array([0.0, 1.0]), "dog").stored
(True, True)
>>> mem.write(np.array([1.0, 0.001]), "cat").reason      # a same-label near-duplicate
'duplicate'
>>> probs, classes, _ = mem.blend(np.array([[0.9, 0.1]], np.float32), None, [])
>>> classes, int(probs[0].argmax())                        # no head: the vote answers
(['cat', 'dog'], 0)
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from remembrall.atomic import atomic_write_bytes
from remembrall.learning.archive import open_or_rebuild, pack, unpack
from remembrall.learning.vectors import unit_rows

FORMAT = "remembrall.episodic"
FORMAT_VERSION = 1
ALPHAS = tuple(round(a * 0.1, 1) for a in range(11))
# FAISS brute force uses BLAS only from 20 queries up; a batch of 16 took the slow path (~2× slower)
faiss.cvar.distance_compute_blas_threshold = 1
TOP_KEPT = 16  # head classes kept per calibration record


class MemoryFileError(ValueError):
    """An episodic-memory file that cannot be trusted (corrupt, truncated, another format)."""


@dataclass
class WriteResult:
    """What :meth:`EpisodicMemory.write` did with a label."""

    stored: bool
    reason: str  # "stored", "duplicate", "evicted_other" (stored, something else left)
    surprise: float


@dataclass
class Calibration:
    """The blend's weight ``alpha`` and similarity gate ``tau``, and how they scored."""

    alpha: float = 0.0
    tau: float = -1.0
    accuracy_blend: float | None = None
    accuracy_head: float | None = None
    samples: int = 0


class _Search:
    """k-NN by inner product over the first ``n`` rows of the memory's key matrix."""

    def __init__(self, keys: np.ndarray, device: str, ivf_min: int) -> None:
        self.keys = keys
        self.device = torch.device(device)
        self.ivf_min = ivf_min
        self._ivf: Any = None
        self._quantizer: Any = None
        self._ivf_n = 0
        self._gpu: torch.Tensor | None = None
        self._gpu_dirty = True

    def changed(self) -> None:
        """Rows were moved or dropped: derived indexes are rebuilt on the next search."""
        self._ivf = None
        self._gpu_dirty = True

    def row_written(self, row: int, replaced: bool) -> None:
        """One row was appended or overwritten in place: update derived indexes incrementally."""
        if self._ivf is not None:
            ids = np.array([row], np.int64)
            if replaced:
                self._ivf.remove_ids(ids)
            self._ivf.add_with_ids(self.keys[row:row + 1], ids)
        if self._gpu is not None and not self._gpu_dirty:
            self._gpu[row] = torch.from_numpy(self.keys[row]).to(self.device, torch.float16)

    def search(self, q: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, n)
        if self.device.type == "cuda":
            return self._search_torch(q, k, n)
        if n >= self.ivf_min:
            return self._search_ivf(q, k, n)
        sims, rows = faiss.knn(q, self.keys[:n], k, metric=faiss.METRIC_INNER_PRODUCT)
        return sims, rows

    def _search_ivf(self, q: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """An IVF index over the rows, trained once and re-trained when the memory doubled."""
        if self._ivf is None or n >= 2 * self._ivf_n:
            dim = self.keys.shape[1]
            nlist = max(16, int(4 * np.sqrt(n)))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            train = self.keys[:n] if n <= 50 * nlist else self.keys[np.linspace(0, n - 1, 50 * nlist).astype(int)]
            index.train(train)
            index.add_with_ids(self.keys[:n], np.arange(n, dtype=np.int64))
            index.nprobe = max(1, nlist // 16)
            self._ivf, self._ivf_n, self._quantizer = index, n, quantizer  # the quantizer must outlive the index
        sims, rows = self._ivf.search(q, k)
        return sims, rows

    def _search_torch(self, q: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._gpu is None or self._gpu_dirty or self._gpu.shape[0] != self.keys.shape[0]:
            self._gpu = torch.from_numpy(self.keys).to(self.device, torch.float16)
            self._gpu_dirty = False
        qt = torch.from_numpy(q).to(self.device, torch.float16)
        sims, rows = (qt @ self._gpu[:n].T).float().topk(k, dim=1)
        return sims.cpu().numpy(), rows.cpu().numpy()

    def device_bytes(self) -> int:
        return int(self._gpu.numel() * self._gpu.element_size()) if self._gpu is not None else 0


class EpisodicMemory:
    """A bounded set of labelled, L2-normalised embeddings with k-NN voting (one per modality)."""

    def __init__(self, dim: int, capacity: int = 5000, k: int = 8, temperature: float = 0.05,
                 duplicate_similarity: float = 0.98, known_surprise: float = 0.5, calibration_window: int = 100,
                 min_calibration: int = 16, ivf_min: int = 50_000, device: str = "cpu") -> None:
        if dim <= 0 or capacity <= 0 or k <= 0:
            raise ValueError("dim, capacity and k must be positive")
        self.dim, self.capacity, self.k = dim, capacity, k
        self.temperature = temperature
        self.duplicate_similarity = duplicate_similarity
        self.known_surprise = known_surprise
        self.min_calibration = min_calibration
        self.classes: list[str] = []
        self._class_index: dict[str, int] = {}
        self.keys = np.zeros((capacity, dim), np.float32)
        self.labels = np.zeros(capacity, np.int32)
        self.norms = np.zeros(capacity, np.float32)  # key × norm = the embedding as given
        self.surprise = np.zeros(capacity, np.float32)
        self.written = np.zeros(capacity, np.int64)  # write counter at storage: the age order
        self.ts = np.zeros(capacity, np.float64)
        self.streams: list[str] = [""] * capacity
        self.n = 0
        self.writes = 0
        self.stats = {"stored": 0, "duplicate": 0, "evicted": 0, "pruned": 0, "forgotten": 0}
        self.calibration = Calibration()
        # prequential records: (head probs by class name or None, vote probs by name, s1, label)
        self._arrivals: deque[tuple[dict[str, float] | None, dict[str, float], float, str]] = deque(
            maxlen=calibration_window)
        self._search = _Search(self.keys, device, ivf_min)

    def __len__(self) -> int:
        return self.n

    # ------------------------------------------------------------------ classes
    def _class_id(self, label: str) -> int:
        if label not in self._class_index:
            self._class_index[label] = len(self.classes)
            self.classes.append(label)
        return self._class_index[label]

    # ------------------------------------------------------------------ search and vote
    def neighbours(self, embeddings: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows) of the ``k`` nearest stored items per query, best first."""
        q = unit_rows(embeddings)
        if self.n == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return self._search.search(q, k or self.k, self.n)

    def vote(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query: class probabilities over :attr:`classes` from a softmax(similarity / T)
        weighted vote of the nearest items, and the best similarity (−1 when empty)."""
        sims, rows = self.neighbours(embeddings)
        votes = np.zeros((len(sims), len(self.classes)), np.float32)
        if sims.shape[1] == 0:
            return votes, np.full(len(sims), -1.0, np.float32)
        valid = rows >= 0
        weights = np.exp((sims - sims[:, :1]) / self.temperature) * valid
        labels = self.labels[np.where(valid, rows, 0)]
        np.add.at(votes, (np.repeat(np.arange(len(sims)), sims.shape[1]), labels.ravel()), weights.ravel())
        votes /= np.maximum(votes.sum(axis=1, keepdims=True), 1e-12)
        return votes, sims[:, 0].astype(np.float32)

    def blend(self, embeddings: np.ndarray, head_probs: np.ndarray | None, head_classes: list[str]
              ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Blend the head's probabilities with the memory's vote.

        Returns (probabilities, their class names — the head's, then classes only the memory
        knows — and a per-query bool: did the memory take part). With no head the vote alone answers.
        """
        classes = list(head_classes) + [c for c in self.classes if c not in set(head_classes)]
        n_q = len(embeddings)
        out = np.zeros((n_q, len(classes)), np.float32)
        if head_probs is not None:
            out[:, :len(head_classes)] = head_probs
        if self.n == 0:
            return out, classes, np.zeros(n_q, bool)
        votes, s1 = self.vote(embeddings)
        aligned = np.zeros_like(out)
        where = {c: i for i, c in enumerate(classes)}
        aligned[:, [where[c] for c in self.classes]] = votes
        if head_probs is None:
            return aligned, classes, np.ones(n_q, bool)
        lam = self.calibration.alpha * (s1 >= self.calibration.tau)
        return (1 - lam[:, None]) * out + lam[:, None] * aligned, classes, lam > 0

    # ------------------------------------------------------------------ writing
    def observe(self, embedding: np.ndarray, label: str, head_probs: dict[str, float] | None) -> None:
        """Record a label's prequential scores (head and vote *before* it is stored) and recalibrate."""
        votes, s1 = self.vote(embedding)
        vote = {c: float(p) for c, p in zip(self.classes, votes[0], strict=True) if p > 0}
        if head_probs is not None and len(head_probs) > TOP_KEPT:  # a 1000-class head: its top classes decide
            top = sorted(head_probs.items(), key=lambda kv: -kv[1])[:TOP_KEPT]
            head_probs = dict(top, **({label: head_probs[label]} if label in head_probs else {}))
        self._arrivals.append((head_probs, vote, float(s1[0]), label))
        self._calibrate()

    def _calibrate(self) -> None:
        scored = [a for a in self._arrivals if a[0] is not None]
        cal = Calibration(samples=len(scored))
        if len(scored) < self.min_calibration:
            self.calibration = cal
            return
        names = sorted({c for h, v, _, y in scored for c in (*h, *v, y)})  # type: ignore[union-attr]
        idx = {c: i for i, c in enumerate(names)}
        head = np.zeros((len(scored), len(names)), np.float32)
        vote = np.zeros_like(head)
        for i, (h, v, _, _) in enumerate(scored):
            for c, p in h.items():  # type: ignore[union-attr]
                head[i, idx[c]] = p
            for c, p in v.items():
                vote[i, idx[c]] = p
        s1 = np.array([a[2] for a in scored], np.float32)
        truth = np.array([idx[a[3]] for a in scored])
        acc_head = float((head.argmax(1) == truth).mean())
        best = (acc_head, 0.0, -1.0)
        taus = sorted({-1.0, *np.quantile(s1, [0.25, 0.5, 0.75]).round(4).tolist()})
        for tau in taus:
            gate = (s1 >= tau)[:, None]
            for alpha in ALPHAS[1:]:
                lam = alpha * gate
                acc = float((((1 - lam) * head + lam * vote).argmax(1) == truth).mean())
                if acc > best[0] + 1e-9:  # strictly better: ties keep the head (and the smaller alpha)
                    best = (acc, alpha, tau)
        cal.accuracy_head, cal.accuracy_blend, cal.alpha, cal.tau = acc_head, best[0], best[1], best[2]
        self.calibration = cal

    def write(self, embedding: np.ndarray, label: str, head_probs: dict[str, float] | None = None,
              stream: str = "", ts: float = 0.0) -> WriteResult:
        """Store a labelled embedding (surprise-first; same-label near-duplicates are skipped).

        ``head_probs``: the served head's class probabilities for it (by class name), or None.
        """
        if not isinstance(label, str) or not label:
            raise ValueError("label must be a non-empty string")
        x = unit_rows(embedding)
        norm = float(np.linalg.norm(embedding))
        if x.shape != (1, self.dim) or not np.all(np.isfinite(x)) or norm == 0:
            raise ValueError(f"embedding must be a finite {self.dim}-d vector, got shape {np.shape(embedding)}")
        surprise = 1.0 - float(head_probs.get(label, 0.0)) if head_probs else 1.0
        if self.n:
            sims, rows = self.neighbours(x, k=4)
            for s, r in zip(sims[0], rows[0], strict=True):
                if r >= 0 and s >= self.duplicate_similarity and self.classes[self.labels[r]] == label:
                    self.stats["duplicate"] += 1
                    return WriteResult(False, "duplicate", surprise)
        reason = "stored"
        if self.n >= self.capacity:  # overwrite the victim in place: no index rebuild
            row = self._victim()
            self.stats["evicted"] += 1
            reason = "evicted_other"
        else:
            row = self.n
            self.n += 1
        self.keys[row] = x[0]
        self.norms[row] = norm
        self.labels[row] = self._class_id(label)
        self.surprise[row] = surprise
        self.written[row] = self.writes
        self.ts[row] = ts
        self.streams[row] = stream
        self.writes += 1
        self.stats["stored"] += 1
        self._search.row_written(row, replaced=reason == "evicted_other")
        return WriteResult(True, reason, surprise)

    def _victim(self) -> int:
        """The oldest item the head already knew, else the oldest."""
        age = self.written[:self.n]
        known = self.surprise[:self.n] < self.known_surprise
        if known.any():
            return int(np.flatnonzero(known)[age[known].argmin()])
        return int(age.argmin())

    def _drop(self, rows: np.ndarray) -> int:
        """Remove ``rows`` (keeping the rest in order, compact)."""
        if len(rows) == 0:
            return 0
        keep = np.ones(self.n, bool)
        keep[rows] = False
        m = int(keep.sum())
        for arr in (self.keys, self.norms, self.labels, self.surprise, self.written, self.ts):
            arr[:m] = arr[:self.n][keep]
        kept = [s for s, k in zip(self.streams[:self.n], keep, strict=True) if k]
        self.streams[:m] = kept
        self.streams[m:self.n] = [""] * (self.n - m)
        removed, self.n = self.n - m, m
        self._search.changed()
        return removed

    # ------------------------------------------------------------------ consolidation and forgetting
    def prune(self, head_probs: np.ndarray, head_classes: list[str], margin: float) -> int:
        """Drop the items a consolidated head gets right with ``margin`` (its probability of the
        true class minus the best other). ``head_probs`` are its probabilities for the first
        ``len(self)`` stored keys (:meth:`stored`). Items of classes the head lacks stay."""
        if self.n == 0:
            return 0
        where = {c: i for i, c in enumerate(head_classes)}
        drop = []
        for row in range(self.n):
            j = where.get(self.classes[self.labels[row]])
            if j is None:
                continue
            p = head_probs[row]
            other = np.delete(p, j).max() if len(p) > 1 else 0.0
            if p.argmax() == j and p[j] - other >= margin:
                drop.append(row)
        removed = self._drop(np.array(drop, dtype=np.int64))
        self.stats["pruned"] += removed
        return removed

    def stored(self, raw: bool = False) -> tuple[np.ndarray, list[str]]:
        """The stored keys (``raw``: the embeddings as written, unnormalised) and their labels (copies)."""
        keys = self.keys[:self.n] * self.norms[:self.n, None] if raw else self.keys[:self.n].copy()
        return keys, [self.classes[i] for i in self.labels[:self.n]]

    def forget(self, stream: str) -> int:
        """Remove every item written from ``stream``; returns how many."""
        rows = np.array([i for i in range(self.n) if self.streams[i] == stream], dtype=np.int64)
        removed = self._drop(rows)
        self.stats["forgotten"] += removed
        return removed

    def streams_held(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.streams[:self.n]:
            out[s] = out.get(s, 0) + 1
        return out

    def device_bytes(self) -> int:
        """Bytes the memory holds on an accelerator (0 on CPU)."""
        return self._search.device_bytes()

    def nbytes(self) -> int:
        """Bytes the memory's arrays take in host memory (its full capacity, allocated up front)."""
        return sum(a.nbytes for a in (self.keys, self.labels, self.norms, self.surprise, self.written, self.ts))

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        n = self.n
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "dim": self.dim, "classes": self.classes,
                "streams": self.streams[:n], "writes": self.writes, "stats": self.stats,
                "calibration": self.calibration.__dict__,
                "arrivals": [[h, v, s, y] for h, v, s, y in self._arrivals]}
        arrays = {"keys": self.keys[:n], "norms": self.norms[:n], "labels": self.labels[:n], "surprise": self.surprise[:n],
                  "written": self.written[:n], "ts": self.ts[:n]}
        return pack(meta, arrays)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Persist atomically: a crash leaves the previous file or this one."""
        atomic_write_bytes(path, self.to_bytes())

    def load_bytes(self, data: bytes, where: str = "<bytes>") -> None:
        """Replace the contents with a persisted memory's; any inconsistency is a
        :class:`MemoryFileError` and leaves this memory as it was."""
        meta, a = unpack(data, FORMAT, FORMAT_VERSION, MemoryFileError, where)
        try:
            keys, labels, classes = a["keys"], a["labels"], [str(c) for c in meta["classes"]]
            n = keys.shape[0]
            if meta["dim"] != self.dim or keys.ndim != 2 or keys.shape[1] != self.dim:
                raise MemoryFileError(f"{where}: {meta['dim']}-d memories, this encoder gives {self.dim}-d")
            if not (labels.shape == a["norms"].shape == a["surprise"].shape == a["written"].shape == a["ts"].shape == (n,)
                    and len(meta["streams"]) == n):
                raise MemoryFileError(f"{where}: memory arrays disagree in length")
            if keys.dtype != np.float32 or not np.all(np.isfinite(keys)):
                raise MemoryFileError(f"{where}: memory keys are not finite float32")
            if n and (labels.min() < 0 or labels.max() >= len(classes)):
                raise MemoryFileError(f"{where}: memory labels point outside its class list")
            arrivals = [(h, v, float(s), str(y)) for h, v, s, y in meta["arrivals"]]
            calibration = Calibration(**meta["calibration"])
            stats = {k: int(meta["stats"].get(k, 0)) for k in self.stats}
        except MemoryFileError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise MemoryFileError(f"{where}: memory contents are inconsistent ({type(exc).__name__}: {exc})") from None
        keep = slice(max(0, n - self.capacity), n)  # a smaller capacity keeps the newest
        m = keep.stop - keep.start
        self.classes, self._class_index = classes, {c: i for i, c in enumerate(classes)}
        self.keys[:m], self.labels[:m], self.norms[:m] = keys[keep], labels[keep], a["norms"][keep]
        self.surprise[:m], self.written[:m], self.ts[:m] = a["surprise"][keep], a["written"][keep], a["ts"][keep]
        self.streams[:m] = [str(s) for s in meta["streams"][keep]]
        self.n, self.writes, self.stats, self.calibration = m, int(meta["writes"]), stats, calibration
        self._arrivals.clear()
        self._arrivals.extend(arrivals)
        self._search.changed()

    def load(self, path: str | os.PathLike[str]) -> EpisodicMemory:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise MemoryFileError(f"{p}: cannot read memory file ({exc})") from None
        self.load_bytes(data, str(p))
        return self

    def open(self, path: str | os.PathLike[str]) -> EpisodicMemory:
        """Reload ``path`` if it exists; a corrupt file is moved aside with a log line naming it."""
        return open_or_rebuild(path, self.load, lambda: self, MemoryFileError, instead="an empty episodic memory")
