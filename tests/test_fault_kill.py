"""Every stage SIGKILLed in turn during a learning run on a labelled file: nothing is lost.

The file source keeps what the sink has not acknowledged and sends it again when infer or the
sink restarts; the sink writes each (stream, seq) once; the label stage keeps accepted labels on
disk until the buffer has saved them. Real stage processes, real sockets, real training runs.
"""

from __future__ import annotations

import json
import os
import signal

from remembrall.learning.replay import ReplayMemory
from tests.pipeline_helpers import FAST, Run, labelled_clip, metric_value, wait_for

FRAMES = 300
ORDER = ("select", "label", "buffer", "retrain", "infer", "sink", "decode-cam0")


def _served(run: Run) -> float:
    return metric_value(run.scrape()[1], "remembrall_frames_total", stage="sink")


def test_every_stage_killed_in_turn_loses_nothing(tmp_path, make_video):
    video = labelled_clip(tmp_path, make_video, frames=FRAMES)
    out = tmp_path / "out"
    run = Run(out, "--source", str(video), *FAST, "--set", "sources.0.realtime=true",
              "--set", "learn=true", "--set", "label.labeler=oracle", "--set", "infer.head=none",
              "--set", "select.rate=0.5", "--set", "buffer.holdout_every=4", "--set", "buffer.capacity=4096",
              "--set", "buffer.persist_every=8", "--set", "retrain.min_labels=8", "--set", "retrain.every_labels=16",
              "--set", "retrain.min_holdout=2", "--set", "supervisor.restart_backoff_s=0.2")
    try:
        status = run.status()
        wait_for(lambda: _served(run) >= 20, timeout=90, what="predictions to flow")
        for name in ORDER:
            pid = run.status()["stages"][name]["pid"]
            before = _served(run)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda n=name: run.status()["stages"][n]["restarts"] == 1
                     and run.status()["stages"][n]["state"] == "running", timeout=60, what=f"{name} to restart")
            # the run goes on past the kill before the next one (the file plays at 25 fps)
            wait_for(lambda b=before: _served(run) >= min(FRAMES, b + 25), timeout=90,
                     what=f"predictions after killing {name}\n{run.log()}")
        assert status["stages"]["sink"]["pid"] != run.status()["stages"]["sink"]["pid"]
        assert run.wait(240) == 0, run.log()
    finally:
        run.stop()
    log = run.log()
    for name in ORDER:
        assert f"stage {name} died (signal 9); restarting" in log, name

    seqs = sorted(p["seq"] for p in run.predictions())
    assert seqs == list(range(FRAMES)), "every item predicted exactly once"

    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
    accepted = {e["id"] for e in events if e["event"] == "accepted"}
    memory = ReplayMemory.load(out / "buffer" / "replay.npz")
    assert len(accepted) >= 40, "the oracle accepted labels throughout the run"
    missing = sorted(i for i in accepted if i not in memory)
    assert not missing, f"accepted labels missing from the buffer: {missing[:10]}"
    assert not list((out / "outbox" / "label").glob("*.npz")), "every accepted label was acknowledged"
    assert "restarted; sending" in log, "something in flight was sent again"
