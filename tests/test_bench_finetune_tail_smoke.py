"""Smoke test of the last-block fine-tuning measurement (issue 9, item 8): real frames, real
backbone cuts, real training steps; no accuracy thresholds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.drift_stream import FASHION_DIR
from bench.finetune_tail import Tail

ROOT = Path(__file__).resolve().parent.parent


def test_the_untrained_tail_gives_the_pipelines_embedding() -> None:
    from remembrall.models.backbone import VisionBackbone

    backbone = VisionBackbone("cpu", "no", 96, 0)
    frames = np.random.default_rng(0).integers(0, 255, (2, 96, 96, 3), dtype=np.uint8)
    net = backbone.net
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
    x = ((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:-1]:
            x = block(x)
        tail = Tail(net, 2).eval()
        assert torch.allclose(tail(x), backbone.embed(frames), atol=1e-4)
    tail.train()
    assert not any(m.training for m in tail.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.skipif(not (FASHION_DIR / "train-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_finetune_tail_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "tail.json"
    proc = subprocess.run([sys.executable, "-m", "bench.finetune_tail", "--smoke", "--json", str(out),
                           "--variants", "head,conv_head", "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"head", "head+memory", "conv_head", "conv_head+memory"}
    for r in report["variants"].values():
        assert 0.0 <= r["mean_accuracy"] <= 1.0 and 0.0 <= r["adaptation_accuracy"] <= 1.0
        assert r["labels_used"] > 0
    assert report["variants"]["conv_head"]["train_seconds"] > 0  # the tail really trained
    assert (tmp_path / "work" / "features.npz").is_file()
