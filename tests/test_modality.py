"""The modality adapters: one place that knows how an input kind is validated, embedded and sampled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from remembrall.config import load_config
from remembrall.models.efficientnet import imagenet_head, load_efficientnet
from remembrall.models.modality import VisionModality, base_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_imagenet_head_read_from_the_weights_file_is_the_networks_classifier() -> None:
    head, meta = imagenet_head()
    fc = load_efficientnet("efficientnet-lite0")._fc
    assert torch.equal(head.net.weight, fc.weight) and torch.equal(head.net.bias, fc.bias)
    assert meta.in_dim == 1280 and len(meta.classes) == 1000 and meta.kind == "base"


def test_base_head_choices_and_errors_name_the_key(tmp_path) -> None:
    assert base_head(load_config(None, {"infer.head": "none"}), "vision") is None
    head, meta, path = base_head(load_config(None), "vision")
    assert len(meta.classes) == 1000 and path is None
    with pytest.raises(ValueError, match="infer.text_head cannot be 'imagenet'"):
        base_head(load_config(None, {"infer.text_head": "imagenet"}), "text")
    with pytest.raises(ValueError, match="infer.head: .*checkpoint not found"):
        base_head(load_config(None, {"infer.head": str(tmp_path / "nope.pt")}), "vision")


def test_vision_items_are_checked_batched_by_shape_and_embedded_on_the_device() -> None:
    mod = VisionModality(load_config(None, {"infer.image_size": 64, "infer.device": "cpu"}))
    frame = np.zeros((48, 64, 3), np.uint8)
    assert mod.item([frame], {}) is frame
    for bad in ([frame.astype(np.float32)], [frame[..., :2]], [np.zeros((4, 64, 3), np.uint8)], [], [frame, frame]):
        assert mod.item(bad, {}) is None
    assert mod.batch_key(frame) != mod.batch_key(np.zeros((64, 48, 3), np.uint8))
    emb = mod.embed([frame, frame + 1])
    assert emb.shape == (2, mod.dim) and emb.dtype == torch.float32 and emb.device == mod.device
    assert mod.sample(frame, with_pixels=True) == ([frame], {}) and mod.sample(frame, with_pixels=False) == ([], {})
