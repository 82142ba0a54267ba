"""ONNX: ``remembrall export`` of a run's served head with the backbone (checked by ONNX Runtime
against PyTorch, metadata inside), and ``infer.backend: onnxruntime`` through the real pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from remembrall.models.heads import ClassifierHead, HeadMeta
from remembrall.models.registry import ModelRegistry
from tests.pipeline_helpers import FAST, REPO, Run

ort = pytest.importorskip("onnxruntime")


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remembrall", "export", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_export_writes_checked_onnx_with_its_metadata(tmp_path) -> None:
    from remembrall.models.backbone import VisionBackbone
    from remembrall.models.onnx_export import read_metadata

    out = tmp_path / "out"
    registry = ModelRegistry(out / "models", "vision")
    torch.manual_seed(0)
    for _ in range(2):
        head, meta = registry.publish(ClassifierHead(1280, ["cat", "dog", "fox"]),
                                      HeadMeta(["cat", "dog", "fox"], 1280, val_accuracy=0.9))
    registry.write_current({"version": 1, "modality": "vision"})
    done = export("--out", str(out), "--set", "infer.image_size=64")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["version"] == 1 and report["max_probability_difference"] < 1e-3  # the serving one, not the newest
    meta = read_metadata(report["model"])
    assert meta["remembrall.classes"] == ["cat", "dog", "fox"] and meta["remembrall.version"] == 1
    assert meta["remembrall.image_size"] == 64 and meta["remembrall.preprocessing"]["layout"] == "NHWC"
    # an independent check: ONNX Runtime on the exported file against the pipeline's own backbone + head
    frames = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    probs, emb = ort.InferenceSession(report["model"]).run(None, {"frames": frames})
    head, _ = registry.open_serving()
    want_emb = VisionBackbone("cpu", "no", 64, 0).embed(frames)
    assert np.abs(emb - want_emb.numpy()).max() < 1e-3
    with torch.no_grad():
        assert np.abs(probs - torch.softmax(head(want_emb), 1).numpy()).max() < 1e-4
    head_only = ort.InferenceSession(report["head"]).run(None, {"embedding": want_emb.numpy()})[0]
    assert np.abs(head_only - probs).max() < 1e-4
    assert export("--out", str(out), "--version", "2", "--dest", str(tmp_path / "v2")).returncode == 0
    # nothing to export: a clear error, exit 2
    missing = export("--out", str(out), "--version", "7")
    assert missing.returncode == 2 and "no vision head v7" in missing.stderr and "1, 2" in missing.stderr
    assert export("--out", str(tmp_path / "nothing")).returncode == 2


def test_the_onnxruntime_backend_predicts_like_pytorch(tmp_path, make_video) -> None:
    video = make_video(tmp_path / "v.mp4", frames=40, size=(96, 96))
    preds = {}
    for backend in ("torch", "onnxruntime"):
        run = Run(tmp_path / backend, *FAST, "--source", str(video), "--set", f"infer.backend={backend}",
                  env={"REMEMBRALL_CACHE": str(tmp_path / "cache")})
        assert run.wait(180) == 0, run.log()[-3000:]
        preds[backend] = {p["seq"]: p["pred"] for p in run.predictions()}
        assert "Traceback" not in run.log()
    assert len(preds["torch"]) == len(preds["onnxruntime"]) == 40
    same = Counter(preds["torch"][s] == preds["onnxruntime"][s] for s in preds["torch"])
    assert same[True] >= 38, same  # float rounding may flip a near tie, nothing more
    assert list((tmp_path / "cache").glob("*.onnx"))  # exported once, kept for the next start
