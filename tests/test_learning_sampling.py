"""Embedding-guided sampling with real FAISS: dedup, adaptive threshold, entropy ranking, baseline."""

from __future__ import annotations

import numpy as np
import pytest

from remembrall.config import SelectConfig
from remembrall.learning.sampling import EmbeddingSampler, Sampler, UniformSampler, entropy_of, make_sampler


def _scene(rng: np.random.Generator, centre: np.ndarray, n: int, noise: float) -> np.ndarray:
    return (centre[None, :] + noise * rng.normal(size=(n, centre.size))).astype(np.float32)


def _run(s: Sampler, xs: np.ndarray, ents: np.ndarray, start: int = 0) -> list[int]:
    out: list[int] = []
    for i, (x, e) in enumerate(zip(xs, ents, strict=True)):
        out += s.offer(x, float(e), start + i)
    return out


def test_static_scene_yields_few_samples_and_a_scene_change_many() -> None:
    rng = np.random.default_rng(1)
    dim = 64
    s = EmbeddingSampler(rate=0.2, window=10, seed=3)
    a = _scene(rng, rng.normal(size=dim), 300, 0.02)
    b = _scene(rng, rng.normal(size=dim), 300, 0.6)   # new scene, and a varied one
    taken_a = _run(s, a, np.ones(300))
    taken_b = _run(s, b, np.ones(300), start=300) + s.flush()
    u = UniformSampler(rate=0.2)
    assert len(_run(u, a, np.ones(300))) == 60
    assert len(taken_a) <= 6, taken_a           # near-duplicates are not relabelled
    assert len(taken_b) >= 40                   # the changed, varied scene gets the budget
    assert len(taken_a) + len(taken_b) <= 0.2 * 600 + 1e-9  # never over the label budget


def test_entropy_ranking_keeps_the_most_uncertain_of_each_window() -> None:
    rng = np.random.default_rng(2)
    s = EmbeddingSampler(rate=0.25, window=8, bank_windows=1, seed=0)
    xs = rng.normal(size=(8, 32)).astype(np.float32)  # all far apart: all are candidates
    ents = np.array([0.1, 2.0, 0.3, 0.2, 1.5, 0.0, 0.4, 0.5])
    assert _run(s, xs, ents) == [1, 4]          # the two highest entropies, in stream order
    assert entropy_of(np.array([0.5, 0.5])) == pytest.approx(np.log(2))


def test_deterministic_under_a_seed_and_memory_bounded() -> None:
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(400, 16)).astype(np.float32)
    ents = rng.random(400)
    r1 = _run(EmbeddingSampler(rate=0.3, window=5, memory=20, seed=7), xs, ents)
    s2 = EmbeddingSampler(rate=0.3, window=5, memory=20, seed=7)
    assert _run(s2, xs, ents) == r1
    assert s2._index is not None and s2._index.ntotal == 20
    assert s2.threshold is not None and s2.threshold >= s2.min_distance


def test_bad_embeddings_are_refused_clearly() -> None:
    s = EmbeddingSampler()
    with pytest.raises(ValueError, match="non-finite"):
        s.offer(np.array([np.nan, 1.0]), 0.0, "a")
    with pytest.raises(ValueError, match="zeros"):
        s.offer(np.zeros(4), 0.0, "a")
    s.offer(np.ones(4), 0.0, "a")
    s.flush()
    with pytest.raises(ValueError, match="dims"):
        s.offer(np.ones(5), 0.0, "b")


def test_uniform_and_factory() -> None:
    u = make_sampler(SelectConfig(sampler="uniform", rate=0.1, uniform_mode="random", seed=1))
    n = sum(len(u.offer(np.ones(2), 0.0, i)) for i in range(5000))
    assert 400 < n < 600
    assert isinstance(make_sampler(SelectConfig(sampler="embedding", rate=0.5, window=3)), EmbeddingSampler)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler(SelectConfig(sampler="magic"))
