"""The throughput benchmark's ``--smoke`` mode, run for real: every measurement, one JSON file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("decode_fps", "infer_fps", "pipeline_fps", "pipeline_fps_ui_watched", "ui_watched_ratio",
          "pipeline_efficiency", "transport_fps", "raw_zmq_fps", "transport_efficiency")


def test_throughput_smoke(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, "-m", "bench.throughput", "--json", str(out), "--smoke"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    for key in FIELDS:
        assert isinstance(res[key], float) and res[key] > 0, (key, res.get(key))
        assert key in proc.stdout  # the table names every figure
    assert res["pipeline_efficiency"] == res["pipeline_fps"] / min(res["decode_fps"], res["infer_fps"])
    assert res["transport_efficiency"] == res["transport_fps"] / res["raw_zmq_fps"]
    # the pipeline really ran the whole (generated) clip through every stage
    assert res["pipeline"]["frames"] == 24
    assert res["pipeline"]["timed_frames"] > 0 and res["pipeline"]["timed_s"] > 0
    assert {"supervisor"} < set(res["pipeline"]["cpu_s"])
    assert {"supervisor", "infer", "decode-cam0", "sink"} <= set(res["stage_cpu_ms_per_item"])
    assert all(v > 0 for v in res["stage_rss_bytes"].values()) and set(res["stage_rss_bytes"]) == set(
        res["stage_cpu_ms_per_item"])
    # the same run with ten clients holding the UI's live view open
    assert res["pipeline_ui_watched"]["frames"] == 24 and res["pipeline_ui_watched"]["viewers"] == 10
    assert res["pipeline_ui_watched"]["viewer_errors"] == []
    if shutil.which("mosquitto"):  # the MQTT sink against the file sink, and every line arrived
        assert res["mqtt_sink_ratio"] > 0 and res["mqtt_publish_per_s"] > 0
        assert res["mqtt_received"]["messages"] == res["mqtt_received"]["predictions"] == [24]
    assert len(res["machine"]["loadavg"]) == 3 and set(res["loadavg_1m"]) >= {"transport", "decode", "pipeline"}


def test_bad_video_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.throughput", "--json", str(tmp_path / "x.json"),
                           "--video", str(tmp_path / "missing.mp4")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no such file" in proc.stderr
    assert not (tmp_path / "x.json").exists()
