"""A supervisor killed with SIGKILL leaves nothing behind (issue 13).

Each case runs the real ``remembrall run``, kills its supervisor at a different moment — a looping
file run, a live RTSP source, a learning run, stages still starting — and checks that within 10 s
no process of that run remains, that what the stages hold locally was saved whole, and that the
next ``remembrall run`` on the same ``--out`` starts cleanly and finishes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remembrall.learning.replay import ReplayMemory
from tests.pipeline_helpers import FAST, Run, labelled_clip, wait_for

#: The issue's bound; the stages' own deadline (supervisor.orphan_exit_s) is 5 s.
GONE_WITHIN_S = 10.0


def run_processes(marker: str) -> dict[int, str]:
    """Live processes whose command line names ``marker`` (a run's socket folder): its stages."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:  # a zombie has an empty command line
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


@pytest.fixture
def run_base() -> Iterator[Path]:
    """The folder that holds this test's run folders (``REMEMBRALL_RUN_DIR``); short, for ipc paths."""
    base = Path(tempfile.mkdtemp(prefix="rmb-sd-"))
    try:
        yield base
    finally:
        for pid in run_processes(str(base)):  # never leave a stage behind, whatever the test found
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(base, ignore_errors=True)


def start(out: Path, base: Path, *args: str) -> Run:
    return Run(out, *FAST, *args, env={"REMEMBRALL_RUN_DIR": str(base)})


def kill_supervisor(run: Run, base: Path) -> float:
    """SIGKILL the supervisor; seconds until none of its stages is left (fails past 10 s)."""
    assert run_processes(str(base)), f"no stage process to orphan:\n{run.log()}"
    run.proc.send_signal(signal.SIGKILL)
    run.wait(10)
    t0 = time.monotonic()
    while (left := run_processes(str(base))) and time.monotonic() - t0 < GONE_WITHIN_S:
        time.sleep(0.1)
    assert not left, f"still running {GONE_WITHIN_S:.0f} s after the supervisor died: {left}\n{run.log()[-4000:]}"
    took = time.monotonic() - t0
    print(f"stages gone {took:.2f} s after SIGKILL of the supervisor")
    return took


def lines_written(out: Path) -> int:
    path = out / "predictions.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def assert_predictions_whole(out: Path) -> int:
    """The killed run's sink closed its file: every line is a whole JSON record."""
    data = (out / "predictions.jsonl").read_bytes()
    assert data.endswith(b"\n"), "the sink left half a line"
    lines = data.decode().splitlines()
    for line in lines:
        json.loads(line)
    return len(lines)


def assert_next_run_starts_cleanly(out: Path, base: Path, *args: str, expect: int | None = None,
                                   timeout: float = 120, killed_wrote: bool = True) -> Run:
    """The same ``--out`` again: starts, finishes with exit 0, and the killed run's folder is swept."""
    run = start(out, base, *args)
    try:
        assert run.wait(timeout) == 0, run.log()
    finally:
        run.stop()
    preds = run.predictions()
    if expect is not None:
        assert sorted(p["seq"] for p in preds) == list(range(expect)), run.log()
    else:
        assert preds, run.log()
    if killed_wrote:
        assert list(out.glob("predictions.*.jsonl")), "the killed run's predictions are kept beside the new ones"
    assert not list(base.glob("remembrall-*")), "the killed run's socket folder was not removed"
    assert "removed 1 run folder(s) of pipelines that were killed" in run.log()
    return run


def test_killed_during_a_looping_file_run(tmp_path, make_video, run_base) -> None:
    video = make_video(tmp_path / "clip.mp4", frames=24, size=(96, 96))
    out = tmp_path / "out"
    run = start(out, run_base, "--source", str(video), "--set", "sources.0.loop=0")
    try:
        # well past one pass: the file source is blocked on backpressure, the sink is writing
        wait_for(lambda: lines_written(out) >= 60, timeout=120, what=f"predictions flowing\n{run.log()}")
        kill_supervisor(run, run_base)
    finally:
        run.stop()
    assert assert_predictions_whole(out) >= 60
    assert "decode-cam0: exited without draining (the supervisor is gone)" in run.log()
    assert_next_run_starts_cleanly(out, run_base, "--source", str(video), expect=24)


def test_killed_while_a_live_source_streams(tmp_path, rtsp_server, run_base) -> None:
    out = tmp_path / "out"
    run = start(out, run_base, "--source", rtsp_server.url)
    try:
        wait_for(lambda: lines_written(out) >= 10, timeout=120, what=f"live predictions\n{run.log()}")
        kill_supervisor(run, run_base)
    finally:
        run.stop()
    assert_predictions_whole(out)
    assert_next_run_starts_cleanly(out, run_base, "--source", rtsp_server.url, "--duration", "4")


def test_killed_during_a_learning_run(tmp_path, make_video, run_base) -> None:
    video = labelled_clip(tmp_path, make_video)
    out = tmp_path / "out"
    learn = ["--source", str(video), "--set", "learn=true", "--set", "label.labeler=oracle",
             "--set", "infer.head=none", "--set", "select.rate=0.5", "--set", "buffer.holdout_every=3",
             "--set", "buffer.persist_every=4", "--set", "retrain.min_labels=8", "--set", "retrain.every_labels=8",
             "--set", "retrain.min_holdout=2"]
    run = start(out, run_base, *learn, "--set", "sources.0.loop=0")
    try:
        wait_for(lambda: "training run started" in run.log(), timeout=180, what=f"a training run\n{run.log()}")
        kill_supervisor(run, run_base)
    finally:
        run.stop()
    for stage in ("buffer", "label", "select", "infer", "sink"):
        assert f"{stage}: exited without draining (the supervisor is gone)" in run.log(), stage
    # the buffer saved what it held, atomically, and nothing half-written is left beside it
    buffer_file = out / "buffer" / "replay.npz"
    memory = ReplayMemory.load(buffer_file)
    assert len(memory) + memory.holdout_size >= 8
    assert not list(buffer_file.parent.glob(".*.tmp"))
    again = assert_next_run_starts_cleanly(out, run_base, *learn, expect=48, timeout=180)
    assert "buffer: reloaded" in again.log()


def test_killed_while_stages_are_starting(tmp_path, make_video, run_base) -> None:
    video = make_video(tmp_path / "clip.mp4", frames=24, size=(96, 96))
    out = tmp_path / "out"
    run = start(out, run_base, "--source", str(video))
    try:
        # sink, infer and decode spawned, still importing torch and loading the model
        # (the supervisor logs a stage just after spawning it: wait for the line, not the process)
        wait_for(lambda: "started stage decode-cam0" in run.log() and len(run_processes(str(run_base))) >= 3,
                 timeout=60, interval=0.02, what=f"the stages to spawn\n{run.log()}")
        ready = {p.name for p in run_base.glob("remembrall-*/ready/*")}
        kill_supervisor(run, run_base)
    finally:
        run.stop()
    assert "infer" not in ready, "infer had loaded its model: this is not a kill during start-up"
    assert_next_run_starts_cleanly(out, run_base, "--source", str(video), expect=24, killed_wrote=False)
