"""``infer.backend: onnxruntime``: the frozen vision backbone on ONNX Runtime (CPU hosts).

Same interface as :class:`~remembrall.models.backbone.VisionBackbone` (frames in, 1280-d
embeddings out as a torch tensor), so the heads stay in PyTorch and still hot-swap. The graph is
exported once per image size (``onnx_export.embedder_onnx``) into ``$REMEMBRALL_CACHE`` (default
``~/.cache/remembrall``) and reused; a damaged cache file is exported again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from remembrall.atomic import atomic_write_bytes
from remembrall.models.backbone import EMBED_DIM
from remembrall.models.efficientnet import imagenet_head
from remembrall.models.heads import ClassifierHead, HeadMeta
from remembrall.models.onnx_export import OPSET, embedder_onnx

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("REMEMBRALL_CACHE") or Path.home() / ".cache" / "remembrall")


class OnnxVisionBackbone:
    """Frames (N×H×W×3 uint8 RGB) → embeddings on ONNX Runtime's CPU provider."""

    dim = EMBED_DIM

    def __init__(self, image_size: int = 224, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError("infer.backend: onnxruntime needs the onnxruntime package: "
                               "pip install 'remembrall-stream[onnx]'") from None
        self.device = torch.device("cpu")
        self.image_size = image_size
        self.path = path = cache_dir() / f"efficientnet-lite0-embedder-{image_size}px-opset{OPSET}.onnx"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        for attempt in (1, 2):
            if not path.is_file():
                log.info("exporting the vision backbone to ONNX for onnxruntime: %s", path)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, embedder_onnx(image_size))
            try:
                self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                break
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error types
                if attempt == 2:
                    raise RuntimeError(f"{path}: onnxruntime cannot load the exported backbone: {exc}") from None
                log.warning("%s is not a loadable ONNX file (%s); exporting it again", path, exc)
                path.unlink(missing_ok=True)

    @torch.no_grad()
    def embed(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Embed a batch of uint8 RGB frames; returns float32 on the CPU."""
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected N×H×W×3 frames, got shape {tuple(x.shape)}")
        if tuple(x.shape[1:3]) != (self.image_size, self.image_size):
            x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(self.image_size, self.image_size),
                              mode="bilinear", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        frames = np.ascontiguousarray(x.numpy(), dtype=np.uint8)
        return torch.from_numpy(self.session.run(["embedding"], {"frames": frames})[0])

    def imagenet_head(self) -> tuple[ClassifierHead, HeadMeta]:
        return imagenet_head("efficientnet-lite0")
