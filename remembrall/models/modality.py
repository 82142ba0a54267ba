"""One adapter per modality: what infer, retrain, fit-base and the labelers need to know about
an input kind, so none of them branches on "vision" or "text".

A :class:`Modality` names itself and the wire kind of its items (``frame``, ``text``), gives the
embedding size, picks the payload out of an item's arrays and fields (None when it is not a valid
item of this kind), groups items that can share a batch, embeds a batch into an ``N×dim``
float32 tensor on its device, and says what a sample carries beyond its embedding (the frame for
a teacher or a human; the text). :func:`base_head` is the head a modality serves before any
retraining, from the config.

>>> kind_modality("frame"), kind_modality("text"), kind_modality("eos")
('vision', 'text', None)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from remembrall.config import Config
from remembrall.models.heads import CheckpointError, ClassifierHead, HeadMeta, load_head

#: modality name -> the message kind of its items
ITEM_KIND = {"vision": "frame", "text": "text"}
MODALITIES = tuple(ITEM_KIND)


def kind_modality(kind: str) -> str | None:
    """The modality whose items travel as message kind ``kind`` (None: not an item kind)."""
    return next((name for name, k in ITEM_KIND.items() if k == kind), None)


class Modality(Protocol):
    """An input kind the pipeline can embed and learn on."""

    name: str
    dim: int
    device: torch.device

    def item(self, arrays: Sequence[np.ndarray], fields: dict[str, Any]) -> Any | None:
        """The payload to embed, or None when the arrays/fields are not a valid item."""

    def batch_key(self, item: Any) -> Hashable:
        """Items with equal keys can be embedded in one batch."""

    def embed(self, items: Sequence[Any]) -> torch.Tensor:
        """``N×dim`` float32 embeddings on :attr:`device`."""

    def sample(self, item: Any, with_pixels: bool) -> tuple[list[np.ndarray], dict[str, Any]]:
        """What a learning sample carries besides embedding and probabilities (extra arrays, fields)."""


class VisionModality:
    """Frames (H×W×3 uint8 RGB) through the EfficientNet-Lite0 backbone."""

    name = "vision"

    def __init__(self, cfg: Config) -> None:
        from remembrall.models.backbone import VisionBackbone

        icfg = cfg.infer
        if icfg.backend == "onnxruntime":
            from remembrall.models.onnx_backbone import OnnxVisionBackbone

            self.encoder: VisionBackbone | OnnxVisionBackbone = OnnxVisionBackbone(icfg.image_size, icfg.threads)
        else:
            self.encoder = VisionBackbone(icfg.device, icfg.half, icfg.image_size, icfg.threads)
        self.dim = self.encoder.dim
        self.device = self.encoder.device

    def item(self, arrays: Sequence[np.ndarray], fields: dict[str, Any]) -> np.ndarray | None:
        if len(arrays) != 1:
            return None
        img = arrays[0]
        ok = img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 8
        return img if ok else None

    def batch_key(self, item: np.ndarray) -> Hashable:
        return item.shape

    def embed(self, items: Sequence[np.ndarray]) -> torch.Tensor:
        return self.encoder.embed(np.stack(items))

    def sample(self, item: np.ndarray, with_pixels: bool) -> tuple[list[np.ndarray], dict[str, Any]]:
        return ([item] if with_pixels else []), {}


class TextModality:
    """Texts through all-MiniLM-L6-v2."""

    name = "text"

    def __init__(self, cfg: Config) -> None:
        from remembrall.models.text_encoder import TextEncoder

        self.encoder = TextEncoder.from_config(cfg.text, cfg.infer.device, cfg.infer.threads)
        self.dim = self.encoder.dim
        self.device = self.encoder.device

    def item(self, arrays: Sequence[np.ndarray], fields: dict[str, Any]) -> str | None:
        text = fields.get("text")
        return text if isinstance(text, str) else None

    def batch_key(self, item: str) -> Hashable:
        return ()

    def embed(self, items: Sequence[str]) -> torch.Tensor:
        return torch.as_tensor(self.encoder.embed(list(items))).to(self.device)

    def sample(self, item: str, with_pixels: bool) -> tuple[list[np.ndarray], dict[str, Any]]:
        return [], {"text": item}


def open_modality(name: str, cfg: Config) -> Modality:
    """Load the encoder of modality ``name`` with infer's device, precision and threads."""
    if name == "vision":
        return VisionModality(cfg)
    if name == "text":
        return TextModality(cfg)
    raise ValueError(f"unknown modality {name!r} (one of {', '.join(MODALITIES)})")


def base_head_setting(name: str) -> str:
    """The config key that chooses the base head of modality ``name``."""
    return "infer.head" if name == "vision" else f"infer.{name}_head"


def base_head(cfg: Config, name: str) -> tuple[ClassifierHead, HeadMeta, str | None] | None:
    """The head modality ``name`` serves before any retraining (``infer.head`` / ``infer.text_head``):
    None for a cold start (``none``), the ImageNet classifier (vision, ``imagenet``) or a head
    checkpoint (its resolved path is the third item). A bad choice is a ``ValueError`` naming the key."""
    key = base_head_setting(name)
    choice = getattr(cfg.infer, key.split(".", 1)[1])
    if choice == "none":
        return None
    if choice == "imagenet":
        if name != "vision":
            raise ValueError(f"{key} cannot be 'imagenet'; use a head checkpoint path or 'none'")
        from remembrall.models.efficientnet import imagenet_head

        return (*imagenet_head(), None)
    try:
        head, meta = load_head(choice)
    except CheckpointError as exc:
        raise ValueError(f"{key}: {exc}") from None
    return head, meta, str(Path(choice).resolve())
