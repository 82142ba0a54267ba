"""Memory, consolidation, zoo and ``remembrall ctl`` through the real pipeline (every stage its
own process), including a SIGKILL of the retrain stage in the middle of a consolidation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from remembrall.learning.episodic import EpisodicMemory
from remembrall.learning.replay import ReplayMemory
from tests.pipeline_helpers import FAST, REPO, Run, labelled_clip, wait_for


def ctl(out, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remembrall", "ctl", "--out", str(out), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_memory_consolidation_zoo_and_control_verbs(tmp_path, make_video) -> None:
    video = labelled_clip(tmp_path, make_video)
    out = tmp_path / "out"
    learn = ["--source", str(video), "--set", "sources.0.loop=0", "--set", "learn=true",
             "--set", "label.labeler=oracle", "--set", "infer.head=none", "--set", "select.rate=0.5",
             "--set", "buffer.holdout_every=3", "--set", "buffer.persist_every=2", "--set", "retrain.min_labels=8",
             "--set", "retrain.every_labels=8", "--set", "retrain.min_holdout=2", "--set", "memory.capacity=12",
             "--set", "memory.sleep_fill=0.5", "--set", "memory.sleep_min_items=4", "--set", "memory.persist_every=1",
             "--set", "memory.duplicate_similarity=0.9999"]
    run = Run(out, *FAST, *learn)
    try:
        # sleep: retrain consolidates the memory; infer prunes only once that head serves
        wait_for(lambda: "pruned" in run.log(), timeout=240, what=f"a consolidation\n{run.log()[-3000:]}")
        log = run.log()
        consolidating = log.index("consolidating")
        accepted = log.index("accepted and announced", consolidating)
        assert log.index("pruned") > accepted
        stats = ctl(out, "stats")
        assert stats.returncode == 0, stats.stderr
        report = json.loads(stats.stdout)["vision"]
        assert report["zoo"]["specialists"] >= 1 and report["buffer"]["train"] >= 1
        assert report["memory"]["streams"].keys() <= {"cam0"}
        # what cannot be done is refused before anything is sent
        bad = ctl(out, "recall", "999")
        assert bad.returncode == 2 and "no specialist v999" in bad.stderr
        bad = ctl(out, "forget", "--stream", "nope")
        assert bad.returncode == 2 and "unknown stream 'nope'" in bad.stderr
        version = report["zoo"]["entries"][0]["version"]
        assert ctl(out, "recall", str(version)).returncode == 0
        wait_for(lambda: f"v{version} recalled from the zoo" in run.log(), timeout=30, what="the recall")
        # SIGKILL of retrain in the middle of a consolidation loses no label
        assert ctl(out, "sleep").returncode == 0
        wait_for(lambda: run.log().count("consolidating") >= 2, timeout=60, what=f"a second sleep\n{run.log()[-2000:]}")
        retrain_pid = run.status()["stages"]["retrain"]["pid"]
        labels_before = ReplayMemory.load(out / "buffer" / "replay.npz").seen
        memories_before = len(EpisodicMemory(1280).load(out / "buffer" / "memory.npz"))
        os.kill(retrain_pid, signal.SIGKILL)
        log = run.log()
        # a consolidation of a few items can finish between reading the memory and the kill
        announced_first = "accepted and announced" in log[log.rindex("consolidating"):]
        wait_for(lambda: run.status()["stages"]["retrain"]["pid"] not in (None, retrain_pid), timeout=60,
                 what="the supervisor to restart retrain")
        assert ReplayMemory.load(out / "buffer" / "replay.npz").seen >= labels_before
        if not announced_first:  # killed before it was announced: nothing was pruned for it
            assert len(EpisodicMemory(1280).load(out / "buffer" / "memory.npz")) >= memories_before, log[-4000:]
        # forget: the stream's memories, buffer samples and its own specialists go
        done = ctl(out, "forget", "--stream", "cam0")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: "forgot stream cam0" in run.log() and "memories of stream cam0" in run.log()
                 and "samples of stream cam0" in run.log(), timeout=30, what=f"forgetting\n{run.log()[-2000:]}")
    finally:
        run.stop()
    assert "Traceback" not in run.log()
    # restart: memory and zoo come back from their files
    again = Run(tmp_path / "out", *FAST, *learn[:2], "--set", "learn=true", "--set", "infer.head=none",
                "--duration", "3")
    try:
        again.wait(120)
    finally:
        again.stop()
    assert "Traceback" not in again.log()
