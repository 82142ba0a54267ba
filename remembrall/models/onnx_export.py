"""The vision model in ONNX: to leave the device (``remembrall export``) and to run inference on
ONNX Runtime (``infer.backend: onnxruntime``).

Three graphs, all taking what the pipeline hands the backbone (N×S×S×3 uint8 RGB frames, S =
``infer.image_size``) and doing the normalisation inside, so a consumer needs no code of ours:

- ``embedder``: frames → 1280-d embedding (the frozen EfficientNet-Lite0); what infer's ONNX
  Runtime backend runs, with the heads staying in PyTorch so they still hot-swap;
- ``model``: frames → class probabilities and the embedding (backbone + a served head);
- ``head``: embedding → class probabilities.

Each file carries its own metadata (``metadata_props``): class names, version, preprocessing,
embedding size — like torchvision's weights that carry theirs. Files are written atomically.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from remembrall.atomic import atomic_write_bytes
from remembrall.models.efficientnet import load_efficientnet
from remembrall.models.heads import ClassifierHead, HeadMeta

log = logging.getLogger(__name__)

OPSET = 17
PREPROCESSING = {"input": "frames", "layout": "NHWC", "dtype": "uint8", "color": "RGB",
                 "normalize": "(x - 127) / 128", "note": "resize frames to image_size x image_size first"}


class Embedder(nn.Module):
    """uint8 NHWC frames → embeddings, normalisation included."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = (frames.permute(0, 3, 1, 2).float() - 127.0) / 128.0
        return self.net.extract_features(x).mean((2, 3))


class Classifier(nn.Module):
    """uint8 NHWC frames → (probabilities, embedding)."""

    def __init__(self, embedder: Embedder, head: ClassifierHead) -> None:
        super().__init__()
        self.embedder, self.head = embedder, head

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embedder(frames)
        return torch.softmax(self.head(emb), dim=1), emb


class HeadProbs(nn.Module):
    def __init__(self, head: ClassifierHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(embedding), dim=1)


def _onnx_bytes(module: nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str],
                metadata: dict[str, Any]) -> bytes:
    import onnx

    module = module.eval().float().cpu()
    buf = io.BytesIO()
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings say nothing about this graph
        torch.onnx.export(module, (example,), buf, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def embedder_onnx(image_size: int) -> bytes:
    """The frozen backbone as ONNX bytes."""
    net = load_efficientnet("efficientnet-lite0")
    example = torch.zeros((1, image_size, image_size, 3), dtype=torch.uint8)
    return _onnx_bytes(Embedder(net), example, ["frames"], ["embedding"], {
        "remembrall.kind": "embedder", "remembrall.backbone": "efficientnet-lite0",
        "remembrall.image_size": str(image_size), "remembrall.preprocessing": PREPROCESSING,
        "remembrall.embedding_dim": "1280"})


def export_vision(dest: str | os.PathLike[str], head: ClassifierHead, meta: HeadMeta, image_size: int,
                  ) -> dict[str, Path]:
    """Write ``model.onnx`` (backbone + ``head``) and ``head.onnx`` into ``dest``; returns their paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    head = head.eval().float().cpu()
    common = {"remembrall.classes": list(head.classes), "remembrall.version": str(meta.version),
              "remembrall.kind_of_head": meta.kind, "remembrall.parent_version": str(meta.parent_version),
              "remembrall.val_accuracy": str(meta.val_accuracy), "remembrall.embedding_dim": str(head.in_dim)}
    net = load_efficientnet("efficientnet-lite0")
    frames = torch.zeros((1, image_size, image_size, 3), dtype=torch.uint8)
    files = {
        "model": _onnx_bytes(Classifier(Embedder(net), head), frames, ["frames"], ["probabilities", "embedding"], {
            **common, "remembrall.kind": "model", "remembrall.backbone": "efficientnet-lite0",
            "remembrall.image_size": str(image_size), "remembrall.preprocessing": PREPROCESSING}),
        "head": _onnx_bytes(HeadProbs(head), torch.zeros((1, head.in_dim)), ["embedding"], ["probabilities"],
                            {**common, "remembrall.kind": "head"}),
    }
    out = {}
    for name, data in files.items():
        out[name] = dest / f"{name}.onnx"
        atomic_write_bytes(out[name], data)
    return out


def check_against_torch(path: str | os.PathLike[str], head: ClassifierHead, image_size: int,
                        batch: int = 2, seed: int = 0) -> float:
    """Largest difference between ONNX Runtime's probabilities and PyTorch's on random frames."""
    import onnxruntime as ort

    frames = np.random.default_rng(seed).integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"frames": frames})[0]
    with torch.no_grad():
        want = Classifier(Embedder(load_efficientnet("efficientnet-lite0")), head.eval().float().cpu())(
            torch.from_numpy(frames))[0].numpy()
    return float(np.abs(got - want).max())


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An exported file's ``remembrall.*`` metadata (JSON values decoded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for entry in model.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except ValueError:
            out[entry.key] = entry.value
    return out
