"""Infer's memory: the episodic memory it blends into every prediction, and zoo recall.

:class:`MemoryKeeper` owns one :class:`~remembrall.learning.episodic.EpisodicMemory` per modality
(file ``memory.path``, per modality like the buffer), writes accepted labels into it the moment
they arrive (the next batch uses them), blends its vote into predictions, persists it atomically,
prunes it after a consolidated head is served, and forgets a stream on command.

:class:`ZooRouter` watches the recent embeddings of each modality and, when a specialist in the
zoo matches the current scene clearly better than the one serving (and is no worse on the newest
labels of that scene), serves it — at once when it is resident on the device, else on the batch
after the head loader has it (at most ``zoo.resident`` stay on the device).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from remembrall.learning.episodic import EpisodicMemory, WriteResult
from remembrall.learning.zoo import SpecialistZoo, ZooError
from remembrall.models.serving import HeadServer, ServedHead, SwapRequest
from remembrall.monitoring import metrics as m
from remembrall.pipeline.drops import WriteErrors
from remembrall.pipeline.rundir import modality_path

log = logging.getLogger(__name__)


def head_probs(served: ServedHead, embeddings: np.ndarray) -> np.ndarray:
    """The served head's class probabilities for host embeddings (N×dim)."""
    x = torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)).to(next(served.head.parameters()).device)
    with torch.no_grad():
        return torch.softmax(served.head(x).float(), dim=1).cpu().numpy()


class MemoryKeeper:
    """Per-modality episodic memories of the infer stage."""

    def __init__(self, cfg: Any, run_dir: str, dims: dict[str, int], device: torch.device, stage: str) -> None:
        self.mcfg = cfg.memory
        self.run_dir, self.stage = run_dir, stage
        self.write_errors = WriteErrors(stage)
        if cfg.infer.threads > 0:  # FAISS (OpenMP) keeps to infer's share of the cores, as torch does
            faiss.omp_set_num_threads(cfg.infer.threads)
        self.memories: dict[str, EpisodicMemory] = {}
        self.dirty: dict[str, int] = {}
        self.saved_at: dict[str, float] = {}
        c = self.mcfg
        for modality, dim in dims.items():
            mem = EpisodicMemory(dim, capacity=c.capacity, k=c.k, temperature=c.temperature,
                                 duplicate_similarity=c.duplicate_similarity, known_surprise=c.known_surprise,
                                 calibration_window=c.calibration_window, min_calibration=c.min_calibration,
                                 ivf_min=c.ivf_min, device=str(device))
            mem.open(self.path(modality))
            if len(mem):
                log.info("%s: reloaded %d %s memories from %s", stage, len(mem), modality, self.path(modality))
            self.memories[modality] = mem
            self.dirty[modality], self.saved_at[modality] = 0, time.monotonic()
            self._gauges(modality)
            # exported at zero from the start: rate() and increase() see the first event too
            for counter in (m.MEMORY_QUERIES, m.MEMORY_HITS, m.MEMORY_CHANGED, m.MEMORY_PRUNED):
                counter.labels(stage, modality)
            for outcome in ("stored", "duplicate", "evicted"):
                m.MEMORY_WRITES.labels(stage, modality, outcome)

    def path(self, modality: str) -> Path:
        return modality_path(self.mcfg.path, self.run_dir, modality)

    def _gauges(self, modality: str) -> None:
        mem = self.memories[modality]
        m.MEMORY_ITEMS.labels(self.stage, modality).set(len(mem))
        m.MEMORY_BLEND.labels(self.stage, modality).set(mem.calibration.alpha)

    # ------------------------------------------------------------------ labels in
    def write(self, modality: str, embedding: np.ndarray, label: str, served: ServedHead | None,
              stream: str, ts: float) -> WriteResult:
        """Score the label prequentially (head and memory before it), then store it."""
        mem = self.memories[modality]
        probs = None
        if served is not None:
            p = head_probs(served, embedding[None])[0]
            probs = {c: float(v) for c, v in zip(served.meta.classes, p, strict=True)}
        mem.observe(embedding, label, probs)
        result = mem.write(embedding, label, probs, stream=stream, ts=ts)
        outcome = "duplicate" if not result.stored else ("evicted" if result.reason == "evicted_other" else "stored")
        m.MEMORY_WRITES.labels(self.stage, modality, outcome).inc()
        if result.stored:
            self.dirty[modality] += 1
        self._gauges(modality)
        self.save(modality)
        return result

    # ------------------------------------------------------------------ predictions out
    def blend(self, modality: str, embeddings: np.ndarray, probs: np.ndarray | None, classes: list[str]
              ) -> tuple[np.ndarray | None, list[str]]:
        """Predictions with the memory's vote blended in (unchanged when the memory is empty)."""
        mem = self.memories.get(modality)
        if mem is None or not len(mem):
            return probs, classes
        out, out_classes, used = mem.blend(embeddings, probs, classes)
        m.MEMORY_QUERIES.labels(self.stage, modality).inc(len(embeddings))
        m.MEMORY_HITS.labels(self.stage, modality).inc(int(used.sum()))
        if probs is not None:
            changed = int((out.argmax(1) != probs.argmax(1)).sum())
        else:
            changed = len(embeddings)
        m.MEMORY_CHANGED.labels(self.stage, modality).inc(changed)
        return out, out_classes

    # ------------------------------------------------------------------ consolidation, forgetting
    def prune(self, modality: str, served: ServedHead) -> int:
        """After a consolidated head is served: drop what it gets right with margin."""
        mem = self.memories.get(modality)
        if mem is None or not len(mem):
            return 0
        values, _ = mem.stored(raw=True)
        removed = mem.prune(head_probs(served, values), served.meta.classes, self.mcfg.prune_margin)
        m.MEMORY_PRUNED.labels(self.stage, modality).inc(removed)
        self.dirty[modality] += removed
        self._gauges(modality)
        self.save(modality, force=True)
        log.info("%s: consolidated head v%d pruned %d of %d %s memories", self.stage, served.meta.version,
                 removed, removed + len(mem), modality)
        return removed

    def forget(self, stream: str) -> int:
        removed = 0
        for modality, mem in self.memories.items():
            n = mem.forget(stream)
            if n:
                self.dirty[modality] += n
                self._gauges(modality)
                self.save(modality, force=True)
            removed += n
        return removed

    def fill(self) -> dict[str, list[int]]:
        """``{modality: [items, capacity]}`` (infer's load report carries it to retrain)."""
        return {k: [len(v), v.capacity] for k, v in self.memories.items()}

    def save(self, modality: str, force: bool = False) -> None:
        n = self.dirty.get(modality, 0)
        if not n:
            return
        c = self.mcfg
        if force or n >= c.persist_every or time.monotonic() - self.saved_at[modality] >= c.persist_interval_s:
            self.saved_at[modality] = time.monotonic()
            try:
                self.memories[modality].save(self.path(modality))
            except OSError as exc:  # kept in RAM and serving; saved once the disk takes it
                self.write_errors.failed("memory", exc)
                return
            self.dirty[modality] = 0

    def save_all(self) -> None:
        for modality in self.memories:
            self.save(modality, force=True)


class ZooRouter:
    """Recall zoo specialists for the scene infer is seeing (``zoo.routing``: scene or batch)."""

    def __init__(self, cfg: Any, run_dir: str, dims: dict[str, int], heads: HeadServer, stage: str) -> None:
        self.zcfg = cfg.zoo
        self.heads, self.stage = heads, stage
        root = Path(self.zcfg.path)
        if not root.is_absolute():
            root = Path(run_dir or ".") / root
        self.zoos = {k: SpecialistZoo(root, k, dim, self.zcfg.prototypes, self.zcfg.capacity) for k, dim in dims.items()}
        self.recent: dict[str, deque[np.ndarray]] = {k: deque(maxlen=self.zcfg.recall_window) for k in dims}
        self.labels: dict[str, deque[tuple[int, np.ndarray, str]]] = {k: deque(maxlen=256) for k in dims}
        self.items: dict[str, int] = dict.fromkeys(dims, 0)
        self.cooldown_until: dict[str, int] = dict.fromkeys(dims, 0)
        self.checked_at: dict[str, int] = dict.fromkeys(dims, -(10**9))
        self.pending: dict[str, int] = {}
        self.recalls: list[tuple[str, int]] = []  # (modality, version): reported to retrain
        self._prefetching: set[int] = set()
        self._checked = 0.0
        #: after a recall: (the head it replaced, recalled version, its correct, replaced's correct, labels)
        self._judging: dict[str, tuple[ServedHead, int, int, int, int]] = {}
        for k in dims:
            self._gauges(k)
            m.ZOO_RECALLS.labels(stage, k)
            m.ZOO_RECALL_HITS.labels(stage, k)

    def index_bytes(self) -> int:
        """Host bytes of every zoo's index (the keys a recall lookup scans)."""
        return sum(zoo.index_bytes for zoo in self.zoos.values())

    def _gauges(self, modality: str) -> None:
        m.ZOO_SIZE.labels(self.stage, modality).set(len(self.zoos[modality]))
        m.ZOO_RESIDENT.labels(self.stage, modality).set(len(self.heads.resident_versions(modality)))

    def refresh(self) -> None:
        """Re-read zoo indexes retrain rewrote (at most twice a second)."""
        now = time.monotonic()
        if now - self._checked < 0.5:
            return
        self._checked = now
        for modality, zoo in self.zoos.items():
            if zoo.reload():
                self._gauges(modality)

    def on_label(self, modality: str, embedding: np.ndarray, label: str) -> None:
        if modality in self.labels:
            self.labels[modality].append((self.items[modality], embedding, label))
            self._judge(modality, embedding, label)

    def _judge(self, modality: str, embedding: np.ndarray, label: str) -> None:
        """Score a recall on the labels that follow it: a hit when the recalled specialist is at
        least as accurate on them as the head it replaced."""
        judging = self._judging.get(modality)
        serving = self.heads.specialized.get(modality)
        if judging is None or serving is None:
            return
        replaced, version, mine, theirs, n = judging
        if serving.meta.version != version:
            del self._judging[modality]  # replaced again before it could be judged
            return
        for head, _ in ((serving, 0), (replaced, 1)):
            pred = head.meta.classes[int(head_probs(head, embedding[None])[0].argmax())]
            if pred == label:
                mine, theirs = (mine + 1, theirs) if head is serving else (mine, theirs + 1)
        n += 1
        if n < max(1, self.zcfg.recall_labels):
            self._judging[modality] = (replaced, version, mine, theirs, n)
            return
        del self._judging[modality]
        if mine >= theirs:
            m.ZOO_RECALL_HITS.labels(self.stage, modality).inc()

    def on_batch(self, modality: str, embeddings: np.ndarray) -> None:
        """Route after a batch was served: its embeddings describe the scene now."""
        if modality not in self.zoos:
            return
        self.items[modality] += len(embeddings)
        self.recent[modality].extend(embeddings)
        self._finish_pending(modality)
        zoo = self.zoos[modality]
        if not len(zoo):
            return
        if self.zcfg.routing == "batch":
            self._route(modality, embeddings, margin=0.0)
            return
        # a scene is looked up a few times per recall window, not every batch (a lookup grows with the zoo)
        due = self.items[modality] - self.checked_at[modality] >= max(1, self.zcfg.recall_window // 4)
        if due and len(self.recent[modality]) == self.recent[modality].maxlen and \
                self.items[modality] >= self.cooldown_until[modality]:
            self.checked_at[modality] = self.items[modality]
            self._route(modality, np.stack(self.recent[modality]), margin=self.zcfg.recall_margin)

    def _route(self, modality: str, scene: np.ndarray, margin: float) -> None:
        zoo = self.zoos[modality]
        ranked = zoo.match(scene)
        if not ranked:
            return
        best, best_score = ranked[0]
        serving = self.heads.specialized.get(modality)
        current = serving.meta.version if serving is not None else None
        self._prefetch(modality, next((v for v, _ in ranked if v != current), None))
        if best == current or best == self.pending.get(modality):
            return
        scores = dict(ranked)
        if current is not None and current not in scores:
            if not zoo.reload(force=True) or current not in (scores := dict(ranked := zoo.match(scene))):
                return  # a head the zoo does not know (yet): nothing to compare it with
            best, best_score = ranked[0]
            if best == current:
                return
        current_score = scores.get(current, -1.0) if current is not None else -1.0
        if best_score < current_score + margin:
            return
        if not self._no_worse_on_new_labels(modality, best, serving):
            return
        self._recall(modality, best)

    def _prefetch(self, modality: str, version: int | None) -> None:
        """Load the best match that is not serving onto the device ahead of need (off the hot
        path), so that when the scene does change the recall is a reference swap."""
        zoo = self.zoos[modality]
        if version is None or version in self.heads.resident_versions(modality) or \
                version == self.pending.get(modality) or version in self._prefetching:
            return
        entry = zoo.get(version)
        if entry is not None:
            self._prefetching.add(version)
            self.heads.request_swap(SwapRequest(modality, "specialized", str(zoo.dir / entry.file), version,
                                                activate=False))

    def _no_worse_on_new_labels(self, modality: str, version: int, serving: ServedHead | None) -> bool:
        """The candidate must be at least as accurate as the serving head on the labels that
        arrived while the current scene filled the recent window (none: the key match decides).
        A specialist another pipeline of the fleet trained must always pass this check, on at
        least ``zoo.fleet_check_labels`` labels, against the serving head or, before there is
        one, the base head (none: it must get half of them right)."""
        since = self.items[modality] - self.zcfg.recall_window
        entry = self.zoos[modality].get(version)
        foreign = entry is not None and bool(entry.origin)
        wanted = max(self.zcfg.recall_labels, self.zcfg.fleet_check_labels) if foreign else self.zcfg.recall_labels
        newest = [(e, y) for at, e, y in self.labels[modality] if at >= since][-wanted:] if wanted else []
        if foreign:
            serving = serving or self.heads.base.get(modality)
            if len(newest) < self.zcfg.fleet_check_labels:
                return False  # not checked on this camera's labels yet
        elif not newest or serving is None:
            return True
        try:
            head, meta = self.zoos[modality].open_head(version)
        except ZooError as exc:
            m.DROPPED.labels(self.stage, "", "zoo_entry_refused").inc()
            log.warning("%s: not recalling v%d: %s", self.stage, version, exc)
            return False
        x = np.stack([e for e, _ in newest])
        ys = [y for _, y in newest]
        cand = head_probs(ServedHead(head, meta), x).argmax(1)
        acc_cand = np.mean([meta.classes[i] == y for i, y in zip(cand, ys, strict=True)])
        if serving is None:
            return bool(acc_cand >= 0.5)
        cur = head_probs(serving, x).argmax(1)
        acc_cur = np.mean([serving.meta.classes[i] == y for i, y in zip(cur, ys, strict=True)])
        return bool(acc_cand >= acc_cur)

    def _recall(self, modality: str, version: int) -> None:
        zoo = self.zoos[modality]
        replaced = self.heads.specialized.get(modality) or self.heads.base.get(modality)
        if replaced is not None:
            self._judging[modality] = (replaced, version, 0, 0, 0)
        self.cooldown_until[modality] = self.items[modality] + self.zcfg.recall_window
        m.ZOO_RECALLS.labels(self.stage, modality).inc()
        self.recalls.append((modality, version))
        if self.heads.activate(modality, version):
            log.info("%s: recalled %s specialist v%d from the zoo (resident)", self.stage, modality, version)
            self._gauges(modality)
            return
        entry = zoo.get(version)
        if entry is None:
            return
        self.pending[modality] = version
        self.heads.request_swap(SwapRequest(modality, "specialized", str(zoo.dir / entry.file), version))
        log.info("%s: recalling %s specialist v%d from the zoo (loading)", self.stage, modality, version)

    def _finish_pending(self, modality: str) -> None:
        self._prefetching -= set(self.heads.resident_versions(modality))
        version = self.pending.get(modality)
        if version is not None and version in self.heads.resident_versions(modality):
            del self.pending[modality]
            self._gauges(modality)

    def take_recalls(self) -> list[tuple[str, int]]:
        out, self.recalls = self.recalls, []
        return out
