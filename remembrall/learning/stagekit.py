"""What the learning stages (select, label, buffer, retrain) share: sample checks, end-of-stream.

Kept free of torch so the light stages stay light.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message

log = logging.getLogger(__name__)

MAX_EMBED_DIM = 65536


class BadSample(ValueError):
    """A ``sample`` message that breaks PROTOCOL.md §1; ``reason`` labels the drop counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class SampleView:
    """The checked parts of a ``sample`` message."""

    id: str
    embedding: np.ndarray
    entropy: float
    modality: str
    label: Any


def check_sample(msg: Message, need_label: bool = False) -> SampleView:
    """Validate a ``sample`` message (see PROTOCOL.md); raises :class:`BadSample`."""
    if msg.kind != "sample":
        raise BadSample("unexpected_kind", f"kind {msg.kind!r}")
    sid = msg.get("id")
    if not isinstance(sid, str) or not sid or len(sid) > 512:
        raise BadSample("bad_sample", "missing or invalid id")
    if not msg.arrays:
        raise BadSample("bad_sample", f"{sid}: no embedding array")
    emb = msg.arrays[0]
    if emb.dtype != np.float32 or emb.ndim != 1 or not 0 < emb.size <= MAX_EMBED_DIM:
        raise BadSample("bad_sample", f"{sid}: embedding must be 1-d float32, got {emb.dtype} {emb.shape}")
    if not np.all(np.isfinite(emb)) or not np.any(emb):
        raise BadSample("bad_sample", f"{sid}: embedding is non-finite or all zeros")
    ent = msg.get("entropy")
    if ent is None:  # cold start: no head yet, everything is maximally uncertain
        entropy = 1e6
    elif isinstance(ent, (int, float)) and not isinstance(ent, bool) and math.isfinite(ent):
        entropy = float(ent)
    else:
        raise BadSample("bad_sample", f"{sid}: entropy must be a finite number or null")
    modality = msg.get("modality", "vision")
    if modality not in ("vision", "text"):
        raise BadSample("bad_sample", f"{sid}: unknown modality {modality!r}")
    label = msg.get("label")
    if need_label and (not isinstance(label, str) or not label):
        raise BadSample("no_label", f"{sid}: labelled sample without a label")
    return SampleView(sid, emb, entropy, modality, label)


class StreamEnds:
    """Which streams ended; when a stage may finish (all ended, asked to stop, or idle after a
    restart whose producers already finished)."""

    def __init__(self, streams: list[str], finished: list[str], idle_drain_s: float) -> None:
        self.streams = set(streams)
        self.ended = set(finished)
        self.restarted_late = bool(finished)
        self.idle_drain_s = idle_drain_s
        self.last_input = time.monotonic()

    def seen(self, msg: Message) -> None:
        self.last_input = time.monotonic()
        if msg.stream:
            self.streams.add(msg.stream)
        if msg.kind == "eos":
            self.ended.add(msg.stream)

    def all_ended(self) -> bool:
        if self.streams and self.streams <= self.ended:
            return True
        idle = time.monotonic() - self.last_input
        return self.restarted_late and idle > self.idle_drain_s


class DropCounter:
    """Turns a labeler's/stage's reason counters into ``remembrall_frames_dropped`` increments."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._last: Counter[str] = Counter()
        self._logged: Counter[str] = Counter()

    def sync(self, counts: Counter[str], stream: str = "") -> None:
        for reason, n in counts.items():
            delta = n - self._last[reason]
            if delta > 0:
                m.DROPPED.labels(self.stage, stream, reason).inc(delta)
        self._last = Counter(counts)

    def drop(self, reason: str, stream: str, detail: str) -> None:
        m.DROPPED.labels(self.stage, stream, reason).inc()
        self._logged[reason] += 1
        n = self._logged[reason]
        if n <= 5 or n % 1000 == 0:
            log.warning("%s: dropped a message (%s): %s [%d so far]", self.stage, reason, detail, n)
