"""Cost of the episodic memory and the specialist zoo on the inference path (issue 9's proof).

    python -m bench.memory --json out/memory.json [--smoke] [--device cpu|cuda]

Measured in one run, warm-up excluded, times as medians of repeated calls; synthetic 1280-d embeddings (the vision backbone's size),
clustered like real ones: 10 classes × 20 modes, each mode varying in a 32-d subspace plus a
little isotropic noise (so nearest neighbours mean something and no two items are duplicates):

- ``knn_ms_per_batch`` (= ``knn_ms_default``), ``knn_ms_flat``, ``knn_ms_ivf``: ms per
  ``EpisodicMemory.blend`` of a batch of 16 queries (head probabilities included), by memory
  size. *default* is the shipped setting (IVF from ``ivf_min`` = 50,000 items), *flat* never uses
  IVF, *ivf* always does (CPU). ``ivf_build_s``: the first search after a change, which rebuilds
  the index; ``ivf_recall_at_1`` / ``ivf_recall_at_k`` / ``ivf_vote_agreement``: IVF against
  flat on 256 fresh queries. ``write_then_blend_ms`` / ``write_evict_then_blend_ms``: one
  ``write()`` and the next batch's blend with the default setting, memory with room left / full
  (each write evicts): the cost infer pays per arriving label.
- ``infer_fps_memory_on`` / ``_off``: ``VisionBackbone.embed`` (EfficientNet-Lite0) + a 10-class
  ``ClassifierHead`` + softmax, with and without ``blend`` over a 5,000-item memory (the default
  capacity), on batches of 16 random uint8 frames already at the model's input size; on and off
  interleave batch by batch and each is 16 / its median batch time, so machine load hits both
  alike. ``infer_blend_ms``: the blend's own median share of an "on" batch.
- ``device_bytes_by_zoo_size``: a fresh process per zoo size opens the zoo through the infer
  stage's ``ZooRouter``, loads every specialist through a ``HeadServer`` (resident 4; one
  ``request_swap`` at a time, as the router does), routes across several scenes (recalls from
  the resident LRU and from disk), fills a 5,000-item memory and blends once; then on CPU its
  RSS (which includes the zoo index in host memory), on CUDA ``torch.cuda.max_memory_allocated``.
  ``head_device_bytes``: ``HeadServer.device_bytes`` (resident heads + rollback history);
  ``rss_less_zoo_index_spread``: the RSS spread with the zoo's prototype keys taken out.
- ``recall_lookup_ms``: ``SpecialistZoo.match`` on a window of 32 embeddings, by zoo size.

Memories are filled with ``EpisodicMemory.load_bytes`` of a packed archive — the path infer takes
when it reopens a persisted memory — because ``write()`` searches for duplicates on every call
(a full scan below ``ivf_min``): filling 100,000 items one by one would take far longer than
everything measured here.
``fill_check`` shows that at the smallest size ``write()`` stores the same items and gives the
same neighbours. Zoos are built with ``SpecialistZoo.add`` with the index written once at the end
(``add`` rewrites the whole index every call: quadratic in bytes for 1,000 specialists).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, print_table, write_json
from remembrall.heap import rss_bytes

REPO = Path(__file__).resolve().parents[1]
DIM = 1280  # EfficientNet-Lite0's embedding size (remembrall.models.backbone.EMBED_DIM)
CLASSES = [f"c{i}" for i in range(10)]
BATCH = 16
MEMORY_ITEMS = 5000  # memory.capacity's default
DEFAULT_IVF_MIN = 50_000  # memory.ivf_min's default
FLAT = 10**12  # an ivf_min no memory reaches
SIZES, SMOKE_SIZES = (1000, 10_000, 100_000), (1000, 10_000)
ZOO_SIZES, SMOKE_ZOO_SIZES = (1, 10, 100, 1000), (1, 10, 100)
RECALL_QUERIES = 256
WRITES = 20  # write+blend cycles timed with room left, and as many with the memory full
RESIDENT = 4
WINDOW = 32  # zoo.recall_window's default


# ---------------------------------------------------------------------------------------- data
@dataclass
class Embeddings:
    """A fixed clustered embedding space: draws labelled unit vectors from it.

    Isotropic Gaussian blobs in 1280-d would make every neighbour almost equally far (and ANN
    recall meaningless); real embeddings vary along few directions, so each class gets a 32-d
    subspace and a little isotropic noise that keeps items apart (no same-label duplicates)."""

    modes: np.ndarray  # (classes · modes_per_class) × dim, unit rows
    bases: np.ndarray  # classes × intrinsic × dim
    modes_per_class: int

    @classmethod
    def make(cls, seed: int, modes_per_class: int = 20, intrinsic: int = 32) -> Embeddings:
        rng = np.random.default_rng(seed)
        centres = _unit(rng.standard_normal((len(CLASSES), DIM), np.float32))
        spread = rng.standard_normal((len(CLASSES), modes_per_class, DIM), np.float32) * np.float32(0.9 / DIM**0.5)
        modes = _unit((centres[:, None, :] + spread).reshape(-1, DIM))
        bases = rng.standard_normal((len(CLASSES), intrinsic, DIM), np.float32) * np.float32(1 / DIM**0.5)
        return cls(modes, bases, modes_per_class)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` unit embeddings and their class ids."""
        mode = rng.integers(0, len(self.modes), n)
        label = mode // self.modes_per_class
        z = rng.standard_normal((n, self.bases.shape[1]), np.float32) * np.float32(0.7 / self.bases.shape[1] ** 0.5)
        x = self.modes[mode] + rng.standard_normal((n, DIM), np.float32) * np.float32(0.25 / DIM**0.5)
        for c in range(len(self.bases)):  # per class: one matmul, no n × intrinsic × dim temporary
            rows = label == c
            x[rows] += z[rows] @ self.bases[c]
        return _unit(x), label.astype(np.int32)


def _unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def scene_embeddings(version: int, n: int, seed: int, draw: int = 0) -> np.ndarray:
    """``n`` frames of specialist ``version``'s own scene (``draw`` 0: what it was trained on;
    others: fresh frames of the same scene), reproducible in any process."""
    centre = _unit(np.random.default_rng([seed, version]).standard_normal((1, DIM), np.float32))
    noise = np.random.default_rng([seed, version, draw]).standard_normal((n, DIM), np.float32)
    return _unit(centre + noise * np.float32(0.8 / DIM**0.5))


def head_probs(rng: np.random.Generator, n: int) -> np.ndarray:
    logits = rng.standard_normal((n, len(CLASSES))).astype(np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------- memory
def packed_memory(keys: np.ndarray, labels: np.ndarray) -> bytes:
    """A persisted memory holding ``keys`` (unit rows), as ``EpisodicMemory.to_bytes`` writes it."""
    from remembrall.learning.archive import pack
    from remembrall.learning.episodic import FORMAT, FORMAT_VERSION, Calibration

    n = len(keys)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "dim": DIM, "classes": CLASSES, "streams": [""] * n,
            "writes": n, "stats": {"stored": n}, "calibration": Calibration().__dict__, "arrivals": []}
    arrays = {"keys": keys, "norms": np.ones(n, np.float32), "labels": labels,
              "surprise": np.ones(n, np.float32), "written": np.arange(n, dtype=np.int64), "ts": np.zeros(n)}
    return pack(meta, arrays)


def open_memory(blob: bytes, capacity: int, ivf_min: int, device: str) -> Any:
    """An ``EpisodicMemory`` with the shipped settings except ``ivf_min``, loaded from ``blob``."""
    from remembrall.learning.episodic import EpisodicMemory

    mem = EpisodicMemory(DIM, capacity=capacity, ivf_min=ivf_min, device=device)
    mem.load_bytes(blob, "bench")
    return mem


def ms_per_call(fn: Callable[[], object], seconds: float, min_calls: int = 5) -> float:
    """Median wall ms of ``fn`` over at least ``seconds`` and ``min_calls`` (after two uncounted
    calls). The median, not the mean: on a shared machine a call the scheduler preempted says
    nothing about the code."""
    fn(), fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def blend_ms(mem: Any, queries: np.ndarray, probs: np.ndarray, seconds: float) -> float:
    """ms per ``blend`` of one batch of :data:`BATCH` queries, cycling through ``queries``."""
    pos = 0

    def call() -> None:
        nonlocal pos
        i = (pos % (len(queries) // BATCH)) * BATCH
        pos += 1
        mem.blend(queries[i:i + BATCH], probs[i:i + BATCH], CLASSES)
    return ms_per_call(call, seconds)


def first_search_s(mem: Any, queries: np.ndarray) -> float:
    """Seconds of the first search: where an IVF index is (re)built."""
    t0 = time.perf_counter()
    mem.neighbours(queries[:BATCH])
    return time.perf_counter() - t0


@dataclass
class Reference:
    """Flat search's answers to the recall queries: what IVF is compared against."""

    sims: np.ndarray
    rows: np.ndarray
    votes: np.ndarray


def reference(mem: Any, queries: np.ndarray) -> Reference:
    sims, rows = mem.neighbours(queries)
    return Reference(sims, rows, mem.vote(queries)[0].argmax(1))


def ivf_quality(mem: Any, queries: np.ndarray, ref: Reference) -> dict[str, float]:
    """Recall@1 (the same row, or a tie in similarity), recall@k and vote agreement against flat."""
    sims, rows = mem.neighbours(queries)
    top1 = (rows[:, 0] == ref.rows[:, 0]) | (np.abs(sims[:, 0] - ref.sims[:, 0]) < 1e-6)
    at_k = np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows, ref.rows, strict=True)])
    votes = mem.vote(queries)[0].argmax(1)
    return {"recall_at_1": float(top1.mean()), "recall_at_k": float(at_k),
            "vote_agreement": float((votes == ref.votes).mean())}


def write_then_blend_ms(mem: Any, space: Embeddings, rng: np.random.Generator) -> tuple[float, float]:
    """Median ms of one labelled ``write`` followed by the next batch's ``blend``, the cost infer
    pays per arriving label: while ``mem`` has room (its capacity must leave :data:`WRITES`
    free), then full (each write evicts). A write must not rebuild the search index."""
    x, y = space.sample(rng, 2 * WRITES + BATCH)
    probs = head_probs(rng, BATCH)
    times = []
    for i in range(BATCH, len(x)):
        t0 = time.perf_counter()
        mem.write(x[i], CLASSES[y[i]])
        mem.blend(x[:BATCH], probs, CLASSES)
        times.append(time.perf_counter() - t0)
    if mem.stats["evicted"] != WRITES:
        raise RuntimeError(f"expected {WRITES} evicting writes, got {mem.stats['evicted']}")
    return 1000 * statistics.median(times[:WRITES]), 1000 * statistics.median(times[WRITES:])


def fill_check(blob: bytes, keys: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """Does ``write()``, item by item, store what the archive holds and find the same neighbours?"""
    from remembrall.learning.episodic import EpisodicMemory

    written = EpisodicMemory(DIM, capacity=len(keys), ivf_min=FLAT)
    t0 = time.perf_counter()
    for x, y in zip(keys, labels, strict=True):
        written.write(x, CLASSES[y])
    fill_s = time.perf_counter() - t0
    loaded = open_memory(blob, len(keys), FLAT, "cpu")
    same = bool(np.array_equal(written.neighbours(queries)[1], loaded.neighbours(queries)[1]))
    return {"size": len(keys), "stored_by_write": len(written), "same_neighbours": same,
            "write_fill_s": round(fill_s, 3)}


def bench_size(n: int, space: Embeddings, device: str, seconds: float, seed: int) -> dict[str, Any]:
    """Every memory figure for one memory size (memories built one at a time: 100k items are 0.5 GB)."""
    rng = np.random.default_rng([seed, n])
    keys, labels = space.sample(rng, n)
    blob = packed_memory(keys, labels)
    del keys, labels
    queries, _ = space.sample(rng, RECALL_QUERIES)
    probs = head_probs(rng, RECALL_QUERIES)
    out: dict[str, Any] = {}
    mem = open_memory(blob, n, FLAT, device)
    out["flat_ms"] = blend_ms(mem, queries, probs, seconds)
    ref = reference(mem, queries)
    del mem
    mem = open_memory(blob, n + WRITES, DEFAULT_IVF_MIN, device)  # room for the first writes below
    out["default_build_s"] = first_search_s(mem, queries)
    out["default_ms"] = blend_ms(mem, queries, probs, seconds)
    uses_ivf = device == "cpu" and n >= DEFAULT_IVF_MIN
    if not uses_ivf:
        del mem
        mem = open_memory(blob, n, 1, "cpu")
        out["ivf_build_s"] = first_search_s(mem, queries)
        out["ivf_ms"] = blend_ms(mem, queries, probs, seconds)
    else:
        out["ivf_build_s"], out["ivf_ms"] = out["default_build_s"], out["default_ms"]
    out.update(ivf_quality(mem, queries, ref))
    if not uses_ivf:
        del mem
        mem = open_memory(blob, n + WRITES, DEFAULT_IVF_MIN, device)
    out["write_then_blend_ms"], out["write_evict_then_blend_ms"] = write_then_blend_ms(mem, space, rng)
    return out


def bench_knn(sizes: tuple[int, ...], device: str, seconds: float, seed: int) -> dict[str, Any]:
    space = Embeddings.make(seed)
    per = {}
    for n in sizes:
        t0 = time.perf_counter()
        per[n] = bench_size(n, space, device, seconds, seed)
        print(f"memory {n}: {per[n]['default_ms']:.2f} ms/batch default, {per[n]['flat_ms']:.2f} flat, "
              f"{per[n]['ivf_ms']:.2f} ivf (recall@1 {per[n]['recall_at_1']:.3f}) "
              f"[{time.perf_counter() - t0:.1f} s]", flush=True)
    rng = np.random.default_rng([seed, 0])
    keys, labels = space.sample(rng, sizes[0])
    queries, _ = space.sample(rng, RECALL_QUERIES)

    def col(name: str, digits: int = 3) -> dict[str, float]:
        return {str(n): round(r[name], digits) for n, r in per.items()}
    return {
        "knn_ms_per_batch": col("default_ms"), "knn_ms_default": col("default_ms"), "knn_ms_flat": col("flat_ms"),
        "knn_ms_ivf": col("ivf_ms"), "ivf_build_s": col("ivf_build_s"), "ivf_recall_at_1": col("recall_at_1"),
        "ivf_recall_at_k": col("recall_at_k"), "ivf_vote_agreement": col("vote_agreement"),
        "write_then_blend_ms": col("write_then_blend_ms"), "write_evict_then_blend_ms": col("write_evict_then_blend_ms"),
        "fill_check": fill_check(packed_memory(keys, labels), keys, labels, queries),
    }


# ---------------------------------------------------------------------------------------- infer
def bench_infer(device: str, image_size: int, seconds: float, seed: int) -> dict[str, Any]:
    """Frames/s of embed + head (+ memory blend) over ``seconds``, on and off interleaved batch by
    batch (ABBA) and taken as the median batch time: on a shared machine, load that drifts over
    seconds would otherwise decide the ratio more than the memory does."""
    import torch

    from remembrall.models.backbone import VisionBackbone
    from remembrall.models.heads import ClassifierHead

    rng = np.random.default_rng(seed)
    backbone = VisionBackbone(device, "auto", image_size)
    head = ClassifierHead(DIM, CLASSES).to(backbone.device).eval()
    keys, labels = Embeddings.make(seed).sample(rng, MEMORY_ITEMS)
    mem = open_memory(packed_memory(keys, labels), MEMORY_ITEMS, DEFAULT_IVF_MIN, device)
    pool = rng.integers(0, 256, (4, BATCH, image_size, image_size, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {"on": [], "off": [], "blend": []}

    def step(i: int, memory: bool) -> None:
        t0 = time.perf_counter()
        emb = backbone.embed(pool[i % len(pool)])
        with torch.no_grad():
            probs = torch.softmax(head(emb).float(), dim=1).cpu().numpy()
        emb_np = emb.cpu().numpy()
        if memory:
            t1 = time.perf_counter()
            probs, _classes, _used = mem.blend(emb_np, probs, CLASSES)
            times["blend"].append(time.perf_counter() - t1)
        np.argsort(-probs, axis=1, kind="stable")[:, :5]  # infer's top-k, over the blended classes
        times["on" if memory else "off"].append(time.perf_counter() - t0)

    for i in range(6):  # torch's first batches (allocator, oneDNN kernels) run slow
        step(i, i % 2 == 1)
    times = {k: [] for k in times}
    end, i = time.perf_counter() + seconds, 0
    while time.perf_counter() < end or len(times["on"]) < 5:
        step(i, i % 4 in (1, 2))  # off on on off: each kind as often first as second
        i += 1
    on, off = BATCH / statistics.median(times["on"]), BATCH / statistics.median(times["off"])
    return {"infer_fps_memory_on": round(on, 2), "infer_fps_memory_off": round(off, 2),
            "infer_memory_ratio": round(on / off, 3), "infer_batches": len(times["on"]) + len(times["off"]),
            "infer_blend_ms": round(1000 * statistics.median(times["blend"]), 3),
            "infer_image_size": image_size, "infer_threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------- zoo
def build_zoo(root: Path, n: int, seed: int) -> float:
    """``n`` specialists (random 10-class heads, each with its own scene) in ``root/zoo/vision``;
    the index is written once at the end instead of on every ``add``. Returns seconds taken."""
    import faiss

    from remembrall.config import load_config
    from remembrall.learning.zoo import SpecialistZoo
    from remembrall.models.heads import ClassifierHead, HeadMeta

    prototypes = load_config(None).zoo.prototypes
    zoo = SpecialistZoo(root / "zoo", "vision", DIM, prototypes=prototypes)
    t0 = time.perf_counter()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # scene keys are tiny k-means: threads only contend (build is not measured)
    try:
        for v in range(1, n + 1):
            meta = HeadMeta(CLASSES, DIM, version=v, val_accuracy=0.9, created=float(v))
            zoo.add(ClassifierHead(DIM, CLASSES), meta, scene_embeddings(v, 64, seed), ["cam0"], labels_seen=64,
                    save=False)
    finally:
        faiss.omp_set_num_threads(threads)
    zoo.save()
    return time.perf_counter() - t0


def wait_resident(heads: Any, version: int, timeout: float = 30.0) -> None:
    """Swap in what the head loader finished (as infer does between batches) until ``version`` is resident."""
    end = time.monotonic() + timeout
    while version not in heads.resident_versions("vision"):
        heads.apply_pending()
        if time.monotonic() > end:
            raise RuntimeError(f"head v{version} was not loaded within {timeout:.0f} s (rejected {heads.rejected})")
        time.sleep(0.001)


def route_targets(n: int) -> list[int]:
    """Scenes to show the router: up to 6 spread over the zoo (loads from disk), then the two
    before the last again (recalls from the resident LRU)."""
    spread = sorted({int(round(x)) for x in np.linspace(1, n, min(n, 6))})
    return spread + spread[-3:-1][::-1]


def route(router: Any, heads: Any, targets: list[int], seed: int) -> int:
    """Feed batches of each target's scene through the router; returns how many targets ended up served."""
    served = 0
    for t in targets:
        scene = scene_embeddings(t, BATCH * 8, seed, draw=1)  # fresh frames of the scene, not its training set
        for b in range(8):
            heads.apply_pending()
            router.on_batch("vision", scene[b * BATCH:(b + 1) * BATCH])
            pending = router.pending.get("vision")
            if pending is not None:
                wait_resident(heads, pending)
                heads.apply_pending()
            if heads.version("vision") == t:
                served += 1
                break
    return served


def zoo_probe(root: Path, n: int, device: str, seconds: float, seed: int) -> dict[str, Any]:
    """In a fresh process: open the zoo as infer does, load and route its heads, hold a memory;
    then what this process holds. Run by :func:`bench_zoo` via ``--zoo-probe``."""
    import torch

    from remembrall.config import load_config
    from remembrall.models.serving import HeadServer, SwapRequest
    from remembrall.stages.recall import ZooRouter

    gc.collect()
    rss_before = rss_bytes()
    dev = torch.device(device)
    heads = HeadServer(dev, {"vision": DIM}, resident=RESIDENT)
    router = ZooRouter(load_config(None), str(root), {"vision": DIM}, heads, "bench")
    zoo = router.zoos["vision"]
    t0 = time.perf_counter()
    for entry in zoo.entries:
        heads.request_swap(SwapRequest("vision", "specialized", str(zoo.dir / entry.file), entry.version,
                                       activate=False))
        wait_resident(heads, entry.version)
    load_s = time.perf_counter() - t0
    targets = route_targets(len(zoo))
    served = route(router, heads, targets, seed)
    rng = np.random.default_rng(seed)
    keys, labels = Embeddings.make(seed).sample(rng, MEMORY_ITEMS)
    mem = open_memory(packed_memory(keys, labels), MEMORY_ITEMS, DEFAULT_IVF_MIN, device)
    del keys, labels
    mem.blend(scene_embeddings(1, BATCH, seed, draw=3), head_probs(rng, BATCH), CLASSES)  # device matrix is built now
    window = scene_embeddings(targets[0], WINDOW, seed, draw=2)
    lookup_ms = ms_per_call(lambda: zoo.match(window), seconds)
    gc.collect()
    out = {"zoo_size": len(zoo), "rss_bytes": rss_bytes(), "rss_before_bytes": rss_before,
           "head_device_bytes": heads.device_bytes("vision"), "memory_device_bytes": mem.device_bytes(),
           "zoo_index_bytes": zoo.index_bytes,
           "resident": heads.resident_versions("vision"), "routed": f"{served}/{len(targets)}",
           "recall_lookup_ms": lookup_ms, "load_all_s": round(load_s, 3)}
    if dev.type == "cuda":
        out["cuda_max_allocated"] = torch.cuda.max_memory_allocated(dev)
    heads.close()  # joins the loader thread
    return out


def run_probe(root: Path, n: int, device: str, seconds: float, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.memory", "--json", "-", "--zoo-probe", str(root), "--zoo-size", str(n),
           "--device", device, "--seconds", str(seconds), "--seed", str(seed)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"zoo probe ({n}) exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: list[int]) -> float:
    return (max(values) - min(values)) / min(values) if values and min(values) > 0 else 0.0


def bench_zoo(sizes: tuple[int, ...], device: str, seconds: float, seed: int, tmp: Path) -> dict[str, Any]:
    detail = {}
    for n in sizes:
        root = tmp / f"zoo-{n}"
        build_s = build_zoo(root, n, seed)
        detail[str(n)] = run_probe(root, n, device, seconds, seed) | {"build_s": round(build_s, 2)}
        d = detail[str(n)]
        print(f"zoo {n}: rss {d['rss_bytes'] / 2**20:.1f} MiB, heads {d['head_device_bytes']} B, "
              f"match {d['recall_lookup_ms']:.3f} ms, routed {d['routed']} [build {build_s:.1f} s]", flush=True)
    key = "cuda_max_allocated" if device == "cuda" else "rss_bytes"
    by_size = {k: int(d[key]) for k, d in detail.items()}
    heads = {k: int(d["head_device_bytes"]) for k, d in detail.items()}
    less_index = [int(d["rss_bytes"]) - int(d["zoo_index_bytes"]) for d in detail.values()]
    return {
        "device_bytes_by_zoo_size": by_size, "device_bytes_measure": key,
        "device_bytes_spread": round(spread(list(by_size.values())), 4),
        "head_device_bytes": heads, "head_device_bytes_spread": round(spread(list(heads.values())), 4),
        # host memory with the zoo index (prototype keys, kept in RAM by design) taken out
        "rss_less_zoo_index_spread": round(spread(less_index), 4),
        "recall_lookup_ms": {k: round(d["recall_lookup_ms"], 4) for k, d in detail.items()},
        "zoo_detail": detail,
    }


# ---------------------------------------------------------------------------------------- report
def targets(res: dict[str, Any]) -> dict[str, Any]:
    ratio, flat = res["infer_memory_ratio"], res["device_bytes_spread"]
    return {"infer_memory_ratio": {"value": ratio, "target": ">= 0.9", "met": ratio >= 0.9},
            "device_bytes_spread": {"value": flat, "target": "<= 0.05", "met": flat <= 0.05}}


def print_report(res: dict[str, Any]) -> None:
    sizes = list(res["knn_ms_flat"])
    print_table([[n, res["knn_ms_default"][n], res["knn_ms_flat"][n], res["knn_ms_ivf"][n], res["ivf_build_s"][n],
                  res["ivf_recall_at_1"][n], res["ivf_vote_agreement"][n], res["write_then_blend_ms"][n],
                  res["write_evict_then_blend_ms"][n]] for n in sizes],
                ["memory items", "default ms", "flat ms", "ivf ms", "ivf build s", "ivf recall@1", "vote agree",
                 "write+blend ms", "full: write+blend ms"])
    print()
    print_table([[n, res["device_bytes_by_zoo_size"][n], res["head_device_bytes"][n], res["recall_lookup_ms"][n],
                  res["zoo_detail"][n]["routed"]] for n in res["device_bytes_by_zoo_size"]],
                ["zoo size", f"device bytes ({res['device_bytes_measure']})", "head device bytes", "match ms",
                 "routed"])
    print()
    print_table([["infer_fps_memory_off", res["infer_fps_memory_off"]],
                 ["infer_fps_memory_on", res["infer_fps_memory_on"]],
                 ["infer_memory_ratio", res["infer_memory_ratio"]],
                 ["infer_blend_ms (per batch, inside the on path)", res["infer_blend_ms"]],
                 ["device_bytes_spread", res["device_bytes_spread"]],
                 ["head_device_bytes_spread", res["head_device_bytes_spread"]],
                 ["rss_less_zoo_index_spread", res["rss_less_zoo_index_spread"]]], ["figure", "value"])
    print()
    print_table([[k, v["value"], v["target"], "yes" if v["met"] else "NO"] for k, v in res["targets"].items()],
                ["target", "measured", "wanted", "met"])
    print(f"machine: {res['machine']['cpus']} cpus, load {res['machine']['loadavg']}, device {res['device']}, "
          f"{res['infer_image_size']} px frames")


@contextmanager
def temp_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rb-mem-") as name:
        yield Path(name)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--smoke", action="store_true", help="small sizes, short runs: checks the machinery")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    p.add_argument("--seconds", type=float, help="length of each measurement (default 2, smoke 0.3)")
    p.add_argument("--image-size", type=int, help="backbone input size (default 224 as configs/default.yaml; smoke 96)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zoo-probe", help=argparse.SUPPRESS)  # internal: one zoo size in a fresh process
    p.add_argument("--zoo-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = args.device or default_device()
    seconds = args.seconds or (0.3 if args.smoke else 2.0)
    if args.zoo_probe:
        print(json.dumps(zoo_probe(Path(args.zoo_probe), args.zoo_size, device, seconds, args.seed)))
        return 0
    image_size = args.image_size or (96 if args.smoke else 224)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"machine": machine(), "smoke": args.smoke, "device": device, "embedding_dim": DIM,
                           "batch": BATCH, "seconds_per_measurement": seconds, "memory_fill": "load_bytes",
                           # on a shared small machine BLAS/OpenMP thread counts decide the small matmuls' speed
                           "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS",
                                                                   "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    res |= bench_knn(SMOKE_SIZES if args.smoke else SIZES, device, seconds, args.seed)
    res |= bench_infer(device, image_size, 3.0 if args.smoke else 10 * seconds, args.seed)
    with temp_dir() as tmp:
        res |= bench_zoo(SMOKE_ZOO_SIZES if args.smoke else ZOO_SIZES, device, seconds, args.seed, tmp)
    res["targets"] = targets(res)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.json, res)
    print_report(res)
    print(f"written to {args.json} in {res['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
