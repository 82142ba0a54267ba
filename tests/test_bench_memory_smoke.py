"""Smoke test of the memory/zoo benchmark: every figure present and sensible (no timing thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.memory import route_targets, spread

ROOT = Path(__file__).resolve().parent.parent


def test_helpers() -> None:
    assert route_targets(1) == [1]
    assert route_targets(100) == [1, 21, 41, 60, 80, 100, 80, 60]  # the last two revisited: resident recalls
    assert spread([100, 105]) == 0.05 and spread([]) == 0.0


def _positive_map(report: dict, key: str, sizes: set[str]) -> dict[str, float]:
    values = report[key]
    assert set(values) == sizes, key
    assert all(isinstance(v, (int, float)) and v > 0 for v in values.values()), (key, values)
    return values


def test_memory_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, "-m", "bench.memory", "--smoke", "--device", "cpu", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    memory_sizes, zoo_sizes = {"1000", "10000"}, {"1", "10", "100"}
    for key in ("knn_ms_per_batch", "knn_ms_flat", "knn_ms_default", "knn_ms_ivf", "write_then_blend_ms",
                "write_evict_then_blend_ms"):
        _positive_map(report, key, memory_sizes)
    for key in ("ivf_recall_at_1", "ivf_recall_at_k", "ivf_vote_agreement"):
        assert set(report[key]) == memory_sizes and all(0.0 <= v <= 1.0 for v in report[key].values()), key
    assert report["fill_check"]["stored_by_write"] == 1000 and report["fill_check"]["same_neighbours"]
    assert report["infer_fps_memory_on"] > 0 and report["infer_fps_memory_off"] > 0
    assert report["infer_memory_ratio"] == round(report["infer_fps_memory_on"] / report["infer_fps_memory_off"], 3)
    device_bytes = _positive_map(report, "device_bytes_by_zoo_size", zoo_sizes)
    assert report["device_bytes_measure"] == "rss_bytes" and all(isinstance(v, int) for v in device_bytes.values())
    assert report["device_bytes_spread"] >= 0 and report["rss_less_zoo_index_spread"] >= 0
    heads = _positive_map(report, "head_device_bytes", zoo_sizes)
    assert heads["1"] == 1280 * 10 * 4 + 10 * 4  # one 10-class linear head, fp32
    _positive_map(report, "recall_lookup_ms", zoo_sizes)
    for n, detail in report["zoo_detail"].items():
        assert detail["zoo_size"] == int(n) and len(detail["resident"]) == min(int(n), 4)
        assert detail["zoo_index_bytes"] == int(n) * 8 * (1280 + 4)  # 8 int8 prototypes and their scales
        served, shown = detail["routed"].split("/")
        assert served == shown, detail  # the router served every scene it was shown
    assert set(report["targets"]) == {"infer_memory_ratio", "device_bytes_spread"}
    assert report["machine"]["cpus"] >= 1 and report["smoke"] is True
    assert "infer_memory_ratio" in proc.stdout and "memory items" in proc.stdout  # the tables were printed
