"""The soak benchmark's ``--smoke`` mode, run for real: every process sampled, growth computed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import growth

REPO = Path(__file__).resolve().parents[1]


def test_growth_is_late_over_early_after_warmup() -> None:
    assert growth([500, 100, 100, 100, 100, 100, 100, 100, 100, 110], warmup=1) == pytest.approx(0.1)
    assert growth([1, 2], warmup=0) is None  # too few samples to judge


def test_soak_smoke(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--smoke", "--json", str(out), "--work", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {"supervisor", "infer", "decode-demo", "sink", "retrain"} <= set(report["processes"])
    for name, p in report["processes"].items():
        assert p["samples"] >= 5 and p["rss_end_bytes"] > 0 and p["fds_end"] > 0, name
    # played at the camera's rate: about 25 fps for 10 s, not as fast as the machine decodes
    assert 80 <= report["predictions"] <= 350
    assert report["ok"] is True and "growth" in proc.stdout
