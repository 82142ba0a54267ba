"""A stage process on its own: a drain has a deadline, an orphan exits, a stuck orphan is ended.

The stage is a real decode process (``python -m remembrall.stages.worker``) reading a real
video in a loop into a real ZeroMQ socket that nobody reads, so it is blocked on backpressure —
the state in which a drain used to wait forever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import zmq

from remembrall.pipeline.lifeline import EXIT_ORPHANED
from tests.learning_harness import ipc, spec

REPO = Path(__file__).resolve().parents[1]


#: Stands in for the supervisor: starts the stage as the supervisor does (``die_with_parent``,
#: its own pid in the spec), prints the stage's pid, and waits.
PARENT = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    from remembrall.pipeline.lifeline import die_with_parent
    spec = Path(sys.argv[1])
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "supervisor_pid": os.getpid()}))
    log = open(sys.argv[2], "wb")
    stage = subprocess.Popen([sys.executable, "-m", "remembrall.stages.worker", str(spec)],
                             stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    print(stage.pid, flush=True)
    stage.wait()
""")


def _blocked_decoder(tmp_path: Path, make_video, parent: bool = False
                     ) -> tuple[subprocess.Popen, int, Path, zmq.Context, zmq.Socket]:
    """A decode stage whose consumer took one frame and reads no more: the next send blocks (a
    frame fills the socket's buffers). Returns (the process started, the stage's pid, its log, ...)."""
    video = make_video(tmp_path / "clip.mp4", frames=12, size=(320, 240))
    endpoint = ipc(tmp_path, "out")
    ctx = zmq.Context()
    consumer = ctx.socket(zmq.PULL)
    consumer.setsockopt(zmq.RCVHWM, 1)
    consumer.setsockopt(zmq.LINGER, 0)
    consumer.bind(endpoint)
    s = spec(tmp_path, "decode-cam", "decode", {}, {"out": f"push+connect:{endpoint}"},
             {"sources.0.id": "cam", "sources.0.uri": str(video), "sources.0.loop": 0,
              "decode.width": 320, "decode.height": 240, "transport.hwm": 1,
              "supervisor.drain_timeout_s": 2.0, "supervisor.orphan_exit_s": 2.0})
    spec_path = tmp_path / "decode.json"
    spec_path.write_text(s.to_json())
    log_path = tmp_path / "decode.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), REMEMBRALL_LOG_FORMAT="text")
    worker = [sys.executable, "-m", "remembrall.stages.worker", str(spec_path)]
    if parent:
        proc = subprocess.Popen([sys.executable, "-c", PARENT, str(spec_path), str(log_path)], env=env,
                                stdout=subprocess.PIPE, text=True)
        stage_pid = int(proc.stdout.readline())
    else:
        proc = subprocess.Popen(worker, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env)
        stage_pid = proc.pid
    try:
        assert consumer.poll(60_000, zmq.POLLIN), log_path.read_text()
    except BaseException:
        for pid in {proc.pid, stage_pid}:
            os.kill(pid, signal.SIGKILL)
        _finish(proc, ctx, consumer)
        raise
    consumer.recv_multipart()
    # 230 KB frames fill the socket's buffers in milliseconds; nothing outside tells "blocked"
    # apart from "sending", so give it ample time (a stage that was not blocked fails the tests)
    time.sleep(1.5)
    return proc, stage_pid, log_path, ctx, consumer


def _finish(proc: subprocess.Popen, ctx: zmq.Context, consumer: zmq.Socket) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    consumer.close()
    ctx.term()


def _alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return False


def test_a_drain_whose_consumer_never_reads_ends_at_the_drain_deadline(tmp_path, make_video) -> None:
    proc, _, log_path, ctx, consumer = _blocked_decoder(tmp_path, make_video)
    try:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # the supervisor asks for a drain: one signal, never a second
        rc = proc.wait(20)
        took = time.monotonic() - t0
    finally:
        _finish(proc, ctx, consumer)
    log = log_path.read_text()
    assert rc == 0, log
    # the blocked frame waits out the 2 s drain deadline, end-of-stream is not waited for past
    # it, and the socket's linger is the drain timeout too
    assert 1.5 <= took < 10, (took, log)
    assert "was not taken within the drain timeout" in log
    assert "exited without draining" not in log


def test_a_stage_whose_supervisor_is_killed_exits_at_once_and_keeps_its_progress(tmp_path, make_video) -> None:
    proc, stage_pid, log_path, ctx, consumer = _blocked_decoder(tmp_path, make_video, parent=True)
    try:
        proc.send_signal(signal.SIGKILL)  # the stand-in supervisor dies; the kernel tells the stage
        proc.wait(10)
        t0 = time.monotonic()
        while _alive(stage_pid) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        took = time.monotonic() - t0
    finally:
        if _alive(stage_pid):
            os.kill(stage_pid, signal.SIGKILL)
        _finish(proc, ctx, consumer)
    log = log_path.read_text()
    assert took < 2.0, (took, log)  # no drain: no 2 s drain deadline, no 2 s orphan deadline either
    assert "the supervisor is gone" in log and "exited without draining" in log, log
    assert json.loads((tmp_path / "progress" / "cam.json").read_text())["last_index"] >= 0


def test_a_stage_stuck_after_its_supervisor_died_is_ended_at_the_deadline(tmp_path) -> None:
    """A supervisor that died before its stage could ask for the death signal (no such process
    any more); the stage cannot react (its handler never gets to run): it still exits ``grace_s``
    later."""
    code = textwrap.dedent("""
        import signal, sys, time
        from remembrall.pipeline.lifeline import PARENT_DEATH_SIGNAL, Lifeline
        signal.signal(PARENT_DEATH_SIGNAL, lambda *_: None)  # noticed, but the stage is stuck
        Lifeline(supervisor_pid=int(sys.argv[1]), grace_s=1.0).start()
        time.sleep(60)
    """)
    gone = subprocess.Popen(["true"])
    gone.wait()
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code, str(gone.pid)], cwd=REPO, capture_output=True, text=True,
                       timeout=30)
    took = time.monotonic() - t0
    assert r.returncode == EXIT_ORPHANED, r.stderr
    assert "did not exit within 1.0 s: exiting now" in r.stderr
    assert took < 10
