"""A full disk under the output directory (a real tmpfs): a clear error, the pipeline keeps
serving, nothing half-written, and writing resumes when space comes back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from remembrall.learning.replay import ReplayMemory
from tests.pipeline_helpers import FAST, Run, labelled_clip, metric_value, wait_for


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "out"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path) -> Path:
    filler = mount / "filler.bin"
    with filler.open("wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (64 << 10))
                fh.flush()
        except OSError:
            pass
    return filler


def _count(run: Run, name: str, **labels: str) -> float:
    return metric_value(run.scrape()[1], name, **labels)


def test_a_full_disk_is_reported_and_the_pipeline_keeps_serving(tmp_path, make_video, small_disk):
    video = labelled_clip(tmp_path, make_video, frames=48)
    run = Run(small_disk, "--source", str(video), *FAST, "--set", "sources.0.loop=0",
              "--set", "learn=true", "--set", "label.labeler=oracle", "--set", "infer.head=none",
              "--set", "select.rate=0.5", "--set", "buffer.persist_every=4", "--set", "retrain.min_labels=8",
              "--set", "retrain.every_labels=8", "--set", "retrain.min_holdout=2")
    try:
        wait_for(lambda: len(run.predictions()) >= 30, timeout=120, what=f"predictions\n{run.log()}")
        filler = _fill(small_disk)
        wait_for(lambda: _count(run, "remembrall_write_errors_total", stage="sink") >= 1, timeout=60,
                 what=f"the sink to hit the full disk\n{run.log()}")
        served = _count(run, "remembrall_frames_total", stage="infer")
        wait_for(lambda: _count(run, "remembrall_frames_total", stage="infer") >= served + 48, timeout=60,
                 what="infer to keep serving on a full disk")
        assert run.proc.poll() is None
        assert _count(run, "remembrall_frames_dropped_total", stage="sink", reason="write_failed") >= 1
        # a write in progress has its temporary file for a moment; one that was left behind stays
        seen = set(small_disk.rglob("*.tmp"))
        wait_for(lambda: not seen & set(small_disk.rglob("*.tmp")), timeout=10,
                 what=f"temporary files to go: an atomic write left {sorted(seen)} behind")
        written = len(run.predictions())

        filler.unlink()  # space again: writing resumes without a restart
        wait_for(lambda: len(run.predictions()) >= written + 48, timeout=60, what="writing to resume")
        assert run.status()["stages"]["sink"]["restarts"] == 0
    finally:
        run.stop()
    assert run.proc.returncode == 0, run.log()
    log = run.log()
    assert "sink: cannot write predictions: [Errno 28] No space left on device" in log
    lines = (small_disk / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    seqs = [r["seq"] for r in records]
    assert len(seqs) == len(set(seqs)), "nothing written twice"
    memory = ReplayMemory.load(small_disk / "buffer" / "replay.npz")
    assert len(memory) + memory.holdout_size >= 4
