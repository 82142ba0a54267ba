"""Which stream items deserve a label: embedding-guided sampling and the uniform baseline.

Labels are the scarce resource of on-device learning, so the sampler spends them where the
scene is new and the model unsure (DESIGN §5):

1. **Spatially balanced deduplication** (online, SCPS-style). FAISS holds the L2-normalised
   embeddings of recently *taken* items. A candidate's inclusion probability is damped by each of
   its ``k`` nearest taken neighbours, ``p = Π_j (1 − 2^−j·exp(−(d_j/θ)²))`` with ``d_j`` the
   cosine distance to the j-th nearest (j = 0, 1, …): a near-duplicate of something already
   labelled is almost never taken, an item far from everything always is a candidate, and a
   region already sampled densely damps more than one sampled once. ``θ`` adapts: it tracks a quantile of the running
   distribution of nearest-taken-neighbour distances with a slow stochastic-approximation
   (EWMA) step, floored at ``min_distance`` (sensor noise is never "new").
2. **Entropy ranking.** Candidates collect in a window of ``window`` offers; at the window's end
   the most uncertain (highest prediction entropy) are kept, up to the label budget ``rate`` per
   offer. Budget not spent in a static scene is banked (up to ``bank_windows`` windows), so a
   scene change can take many samples at once while the long-run rate never exceeds ``rate``.

Both samplers share one tiny protocol, River-style: ``offer`` an item, get back the keys of the
items selected so far (the embedding sampler releases a window at a time), ``flush`` at the end.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> s = EmbeddingSampler(rate=0.25, window=8, seed=0)
>>> static = rng.normal(size=16).astype(np.float32)
>>> taken = []
>>> for i in range(64):                     # a static scene: tiny noise around one point
...     taken += s.offer(static + 0.01 * rng.normal(size=16), entropy=1.0, key=i)
>>> len(taken) <= 3
True
>>> for i in range(64, 128):                # a scene change: every frame is new
...     taken += s.offer(rng.normal(size=16), entropy=float(i % 5), key=i)
>>> taken += s.flush()
>>> n_new = sum(k >= 64 for k in taken); n_new >= 16
True
>>> u = UniformSampler(rate=0.25)
>>> [k for i in range(8) for k in u.offer(np.zeros(4), 0.0, i)]
[0, 4]
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import faiss
import numpy as np

from remembrall.config import SelectConfig

faiss.omp_set_num_threads(1)  # per-item queries: one thread is faster and leaves cores to infer


@runtime_checkable
class Sampler(Protocol):
    """What the select stage (and a benchmark) needs from a sampler."""

    def offer(self, embedding: np.ndarray, entropy: float, key: Any) -> list[Any]:
        """Consider one item; return the keys selected by this call (possibly earlier items)."""

    def flush(self) -> list[Any]:
        """Decide on everything still pending (end of stream); return the selected keys."""

    @property
    def pending(self) -> int:
        """How many of the most recent offers are still undecided (the rest were not selected)."""


@dataclass
class SamplerStats:
    offered: int = 0
    candidates: int = 0
    selected: int = 0


def _normalise(embedding: np.ndarray) -> np.ndarray:
    x = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("embedding has non-finite values")
    n = float(np.linalg.norm(x))
    if n == 0.0:
        raise ValueError("embedding is all zeros")
    return x / n


def entropy_of(probs: np.ndarray) -> float:
    """Shannon entropy (nats) of a probability vector; the uncertainty the ranking uses."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return float(-(p * np.log(p)).sum())


class UniformSampler:
    """The baseline: every ``round(1/rate)``-th item (``mode="every"``) or each with prob. ``rate``."""

    def __init__(self, rate: float = 0.1, mode: str = "every", seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        if mode not in ("every", "random"):
            raise ValueError(f"mode must be 'every' or 'random', got {mode!r}")
        self.rate, self.mode = rate, mode
        self.every = max(1, round(1.0 / rate)) if rate > 0 else 0
        self.rng = np.random.default_rng(seed)
        self.stats = SamplerStats()

    def offer(self, embedding: np.ndarray, entropy: float, key: Any) -> list[Any]:
        i = self.stats.offered
        self.stats.offered += 1
        if self.rate <= 0:
            return []
        take = (i % self.every == 0) if self.mode == "every" else bool(self.rng.random() < self.rate)
        if take:
            self.stats.candidates += 1
            self.stats.selected += 1
            return [key]
        return []

    def flush(self) -> list[Any]:
        return []

    @property
    def pending(self) -> int:
        return 0


class EmbeddingSampler:
    """Online spatially balanced deduplication in embedding space, then entropy ranking."""

    def __init__(
        self,
        rate: float = 0.1,
        window: int = 20,
        memory: int = 512,
        k: int = 4,
        quantile: float = 0.5,
        ewma: float = 0.05,
        min_distance: float = 0.02,
        bank_windows: float = 4.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        if window < 1 or memory < 1 or k < 1:
            raise ValueError("window, memory and k must be >= 1")
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        self.rate, self.window, self.memory, self.k = rate, window, memory, k
        self.quantile, self.ewma, self.min_distance = quantile, ewma, min_distance
        self.bank_cap = max(1.0, bank_windows * window * rate)
        self.rng = np.random.default_rng(seed)
        self.stats = SamplerStats()
        self.threshold: float | None = None  # θ, cosine distance
        self.dim: int | None = None
        self._index: faiss.IndexIDMap2 | None = None
        self._ids: deque[int] = deque()
        self._next_id = 0
        self._budget = 0.0
        self._in_window = 0
        self._pending: list[tuple[float, int, np.ndarray, Any]] = []  # (entropy, order, x, key)

    # ------------------------------------------------------------------ internals
    def _neighbour_distances(self, x: np.ndarray) -> np.ndarray:
        if self._index is None or self._index.ntotal == 0:
            return np.empty(0, np.float32)
        kk = min(self.k, self._index.ntotal)
        sims, _ = self._index.search(x[None, :], kk)
        return np.clip(1.0 - sims[0], 0.0, 2.0)

    def _update_threshold(self, d_nn: float) -> None:
        """Stochastic quantile tracking (an EWMA of the indicator) of the NN-distance distribution."""
        if self.threshold is None:
            self.threshold = max(self.min_distance, d_nn)
            return
        scale = max(self.threshold, self.min_distance)
        step = self.ewma * scale * (self.quantile - (1.0 if d_nn <= self.threshold else 0.0)) / max(
            self.quantile, 1.0 - self.quantile)
        self.threshold = max(self.min_distance, self.threshold + step)

    def inclusion_probability(self, distances: np.ndarray) -> float:
        """SCPS-style damping: each near taken neighbour lowers the chance of being taken."""
        if distances.size == 0:
            return 1.0
        theta = max(self.threshold or self.min_distance, self.min_distance)
        weights = 0.5 ** np.arange(distances.size)  # the nearest taken neighbour counts most
        return float(np.prod(1.0 - weights * np.exp(-((distances / theta) ** 2))))

    def _take(self, x: np.ndarray) -> None:
        if self._index is None:
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[0]))
        if len(self._ids) >= self.memory:
            oldest = self._ids.popleft()
            self._index.remove_ids(np.array([oldest], dtype=np.int64))
        self._index.add_with_ids(x[None, :], np.array([self._next_id], dtype=np.int64))
        self._ids.append(self._next_id)
        self._next_id += 1

    def _close_window(self) -> list[Any]:
        """Keep the most uncertain candidates the budget allows, never two near-duplicates."""
        n = int(math.floor(self._budget + 1e-9))
        chosen: list[tuple[int, np.ndarray, Any]] = []
        theta = max(self.threshold or self.min_distance, self.min_distance)
        for _ent, order, x, key in sorted(self._pending, key=lambda c: (-c[0], c[1])):
            if len(chosen) >= n:
                break
            if any(float(1.0 - x @ y) < theta for _, y, _ in chosen):
                continue
            chosen.append((order, x, key))
        chosen.sort(key=lambda c: c[0])
        for _, x, _ in chosen:
            self._take(x)
        self._budget -= len(chosen)
        self._pending.clear()
        self._in_window = 0
        self.stats.selected += len(chosen)
        return [key for _, _, key in chosen]

    # ------------------------------------------------------------------ protocol
    def offer(self, embedding: np.ndarray, entropy: float, key: Any) -> list[Any]:
        x = _normalise(embedding)
        if self.dim is None:
            self.dim = x.shape[0]
        elif x.shape[0] != self.dim:
            raise ValueError(f"embedding has {x.shape[0]} dims, sampler holds {self.dim}")
        if not math.isfinite(entropy):
            entropy = 0.0
        self.stats.offered += 1
        self._budget = min(self.bank_cap, self._budget + self.rate)
        dists = self._neighbour_distances(x)
        if dists.size:
            self._update_threshold(float(dists[0]))
        p = self.inclusion_probability(dists)
        if self.rng.random() < p:
            self.stats.candidates += 1
            self._pending.append((float(entropy), self.stats.offered, x, key))
        self._in_window += 1
        if self._in_window >= self.window:
            return self._close_window()
        return []

    def flush(self) -> list[Any]:
        if not self._pending:
            self._in_window = 0
            return []
        return self._close_window()

    @property
    def pending(self) -> int:
        return self._in_window


def make_sampler(cfg: SelectConfig) -> Sampler:
    """Build the sampler a ``select`` config section names (``embedding`` or ``uniform``)."""
    if cfg.sampler == "embedding":
        return EmbeddingSampler(rate=cfg.rate, window=cfg.window, memory=cfg.memory, k=cfg.k, quantile=cfg.quantile,
                                ewma=cfg.ewma, min_distance=cfg.min_distance, bank_windows=cfg.bank_windows,
                                seed=cfg.seed)
    if cfg.sampler == "uniform":
        return UniformSampler(rate=cfg.rate, mode=cfg.uniform_mode, seed=cfg.seed)
    raise ValueError(f"unknown sampler {cfg.sampler!r} (embedding or uniform)")
