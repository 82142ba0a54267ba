"""The checked view of a ``sample`` message that select, label, buffer and retrain all take
(PROTOCOL.md §1): one validation, one set of drop reasons."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from remembrall.pipeline.messages import Message

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
