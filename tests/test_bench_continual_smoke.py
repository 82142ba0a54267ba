"""Smoke test of the continual-learning benchmark: a tiny drifting stream through the real pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.continual import histogram_quantile, parse_retrains, rolling, swap_gaps
from bench.drift_stream import FASHION_DIR

ROOT = Path(__file__).resolve().parent.parent


def test_measurement_helpers() -> None:
    assert rolling([True, False, True, True], 2) == [1.0, 0.5, 0.5, 1.0]
    # p99 of 100 observations, 98 under 1 ms and 2 in (1, 2.5] ms: inside the second bucket
    q = histogram_quantile(0.99, [(0.001, 98.0), (0.0025, 100.0), (float("inf"), 100.0)])
    assert q == 0.0025
    assert histogram_quantile(0.5, [(0.001, 98.0), (0.0025, 100.0), (float("inf"), 100.0)]) == 0.001
    assert histogram_quantile(0.99, [(0.001, 0.0), (float("inf"), 0.0)]) is None
    recs = [{"seq": s, "model_version": 0 if s < 5 else 1} for s in range(10) if s != 6]
    swaps, near, missing = swap_gaps(recs, 12, around=2)
    assert swaps == [5] and near == 1 and missing == 3  # 6 is near the swap; 10 and 11 are not
    logs = [
        {"ts": 1.0, "component": "retrain", "msg": "retrain: training run started for vision v1: ..."},
        {"ts": 3.0, "component": "retrain", "msg": "retrain: vision head v1 accepted and announced (40 steps, "
                                                   "stop: plateau, held-out accuracy 0.9 vs serving 0.5, 0.75 s compute)"},
        {"ts": 4.0, "component": "retrain", "msg": "retrain: training run started for vision v2: ..."},
        {"ts": 5.0, "component": "retrain", "msg": "retrain: vision run rejected (10 steps, 0.25 s compute); ..."},
        {"ts": 6.0, "component": "label", "msg": "label: labelled 17 samples, rejected {}"},
    ]
    rt = parse_retrains(logs)
    assert [(r.start, r.end, r.compute_s, r.accepted) for r in rt.runs] == [(1.0, 3.0, 0.75, True),
                                                                            (4.0, 5.0, 0.25, False)]
    assert rt.labels_used == 17


@pytest.mark.skipif(not (FASHION_DIR / "train-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_continual_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.continual", "--smoke", "--json", str(out), "--plot", str(tmp_path / "s.png"),
         "--systems", "static,remembrall", "--work", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    frames = report["stream"]["frames"]
    static, learner = report["systems"]["static"], report["systems"]["remembrall"]
    assert static["frames"] == learner["frames"] == frames  # every frame served, none lost
    assert static["labels_used"] == 0 and static["retrain_runs"] == 0 and static["model_versions"] == [0]
    assert 0 < learner["labels_used"] < frames  # the sampler spends a budget, not every label
    log = (tmp_path / "work" / "remembrall" / "log.jsonl").read_text()
    learning_log = [x for x in log.splitlines() if '"retrain"' in x or '"buffer"' in x or '"level": "error"' in x]
    assert learner["retrain_runs"] >= 1 and learner["retrain_seconds"] > 0, "\n".join(learning_log[-30:])
    assert 0.0 <= static["mean_accuracy"] <= 1.0 and set(static["per_segment_accuracy"]) == {
        "clean", "inverted", "coloured background"}
    assert learner["adaptation_window"] == 60 and 0 <= learner["adaptation_accuracy"] <= 1  # 120-frame segments
    assert "recall_ratio" not in learner and report["stream"]["kind"] == "drifting"
    assert report["swap_frames_dropped"] == 0
    for key in ("infer_fps_idle", "infer_fps_while_retraining", "swaps", "swap_stall_ms_p99", "targets"):
        assert key in report
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean_accuracy" in proc.stdout  # the table was printed
