"""Classifier heads on backbone embeddings, and their self-describing checkpoints.

A head is the part of a model that learning changes: the base head (trained offline, or the
backbone's own ImageNet classifier) and the specialized head (retrained on the stream) share one
frozen backbone, so both run from the same embedding at the cost of one matrix multiply.

Checkpoints carry their own metadata (class names, embedding dim, version, parent version,
validation accuracy), like torchvision's weights, and are written atomically: a crash leaves
either the old file or the new one, never half of one.

>>> import torch
>>> head = ClassifierHead(4, ["cat", "dog"])
>>> head(torch.zeros(3, 4)).shape
torch.Size([3, 2])
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from remembrall.atomic import atomic_write_bytes

CHECKPOINT_FORMAT = "remembrall.head/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, wrong format or wrong shape."""


@dataclass
class HeadMeta:
    """What a head checkpoint says about itself."""

    classes: list[str]
    in_dim: int
    version: int = 0
    parent_version: int | None = None
    kind: str = "specialized"  # "base" or "specialized"
    val_accuracy: float | None = None
    created: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class ClassifierHead(nn.Module):
    """A linear classifier (optionally with one hidden layer) on L2-normalisable embeddings."""

    def __init__(self, in_dim: int, classes: list[str], hidden: int = 0) -> None:
        super().__init__()
        if in_dim <= 0 or not classes:
            raise ValueError("a head needs in_dim > 0 and at least one class")
        if len(set(classes)) != len(classes):
            raise ValueError("class names must be unique")
        self.in_dim = in_dim
        self.classes = list(classes)
        self.hidden = hidden
        if hidden:
            self.net: nn.Module = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, len(classes)))
        else:
            self.net = nn.Linear(in_dim, len(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def head_bytes(head: ClassifierHead, meta: HeadMeta) -> bytes:
    """A head checkpoint as bytes (what :func:`save_head` writes; a fleet shares it as is)."""
    if meta.classes != head.classes or meta.in_dim != head.in_dim:
        raise ValueError("metadata does not describe this head")
    buf = io.BytesIO()
    state = {k: v.detach().to("cpu", torch.float32) for k, v in head.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "meta": asdict(meta), "hidden": head.hidden, "state": state}, buf)
    return buf.getvalue()


def save_head(path: str | os.PathLike[str], head: ClassifierHead, meta: HeadMeta) -> None:
    """Write a head checkpoint atomically."""
    atomic_write_bytes(path, head_bytes(head, meta))


def load_head(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[ClassifierHead, HeadMeta]:
    """Load and check a head checkpoint; any problem is a :class:`CheckpointError`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    return head_from_bytes(p, str(p), map_location)


def head_from_bytes(data: bytes | Path, where: str = "<bytes>", map_location: str | torch.device = "cpu"
                    ) -> tuple[ClassifierHead, HeadMeta]:
    """Read and check a head checkpoint (bytes, or a file); any problem is a :class:`CheckpointError`."""
    try:
        blob = torch.load(io.BytesIO(data) if isinstance(data, bytes) else data, map_location=map_location,
                          weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{where}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        fmt = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"{where}: unsupported checkpoint format {fmt!r} (expected {CHECKPOINT_FORMAT})")
    try:
        meta = HeadMeta(**blob["meta"])
        head = ClassifierHead(meta.in_dim, meta.classes, hidden=int(blob.get("hidden", 0)))
        head.load_state_dict(blob["state"])
    except Exception as exc:
        raise CheckpointError(f"{where}: checkpoint contents do not match its metadata ({exc})") from None
    for name, tensor in head.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: parameter {name} has non-finite values")
    head.eval()
    return head, meta
