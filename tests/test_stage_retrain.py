"""The retrain stage with real training, real checkpoints, real PUB/SUB, and a real killed process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from remembrall.learning.replay import ReplayMemory
from remembrall.learning.trainer import fit_head
from remembrall.models.heads import HeadMeta, load_head, save_head
from remembrall.pipeline.messages import Message, decode_message, encode_message
from remembrall.stages.retrain import RetrainStage
from tests.learning_harness import clusters, ipc, pusher, sample, send, spec, start

DIM = 64
FAST = {"retrain.min_labels": 30, "retrain.every_labels": 60, "retrain.max_steps": 150,
        "retrain.warmup_steps": 10, "retrain.share": 1.0, "retrain.republish_s": 0.2,
        "buffer.holdout_every": 5, "infer.head": "none"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _retrain(tmp: Path, over: dict) -> RetrainStage:
    return RetrainStage(spec(tmp, "retrain", "retrain",
                             {"labelled": f"pull+bind:{ipc(tmp, 'rt')}",
                              "infer_load": f"sub+connect:{ipc(tmp, 'load')}",
                              "control": f"pull+bind:{ipc(tmp, 'ctl')}"},
                             {"model_ready": f"pub+bind:{ipc(tmp, 'ready')}"}, {**FAST, **over}))


def _feed(mem: ReplayMemory, push: zmq.Socket, x: np.ndarray, y: list[str], start: int, path: Path) -> None:
    """Play the buffer stage: insert, persist, forward with the split."""
    for i, (v, lab) in enumerate(zip(x, y, strict=True)):
        split = mem.add(f"cam:{start + i}", v, lab, "cam")
        send(push, sample(start + i, v, label=lab, image=False, split=split))
    mem.save(path)


def _wait(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_cold_start_grow_announce_and_rollback(tmp_path) -> None:
    ctx = zmq.Context()
    stage = _retrain(tmp_path, {})
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(ipc(tmp_path, "ready"))
    thread = start(stage)
    push = pusher(ctx, ipc(tmp_path, "rt"))
    mem = ReplayMemory(capacity=500, holdout_every=5)
    bpath = tmp_path / "buffer" / "replay.npz"
    x, y = clusters(45, ["a", "b"], DIM, seed=1)
    _feed(mem, push, x, y, 0, bpath)
    _wait(lambda: len(stage.published) >= 1)
    first = stage.published[0].fields
    assert first["version"] == 1 and first["classes"] == ["a", "b"] and first["val_accuracy"] > 0.9
    head, meta = load_head(first["path"])          # a real, checked checkpoint
    assert meta.version == 1 and meta.extra["trained_seen"] >= 60 and meta.kind == "specialized"
    got = None
    deadline = time.monotonic() + 10
    while got is None and time.monotonic() < deadline:  # re-published: a late subscriber still hears it
        if sub.poll(200):
            got = decode_message(sub.recv_multipart())
    # what it hears is the model serving then: v1, or v2 when the rest of this feed already made one
    assert got is not None and got.kind == "model_ready"
    announced = {p.fields["version"]: p.fields for p in stage.published}
    assert got.get("version") in announced and got.get("path") == announced[got.get("version")]["path"]
    x2, y2 = clusters(30, ["a", "b", "c"], DIM, seed=2)   # a class nobody had: the head grows
    _feed(mem, push, x2, y2, 1000, bpath)
    # A run may start before the new class arrives (labels of the first feed that reached the
    # stage after v1 started count toward the next run, and the new scene trips the drift
    # trigger early): versions keep advancing until one knows "c".
    _wait(lambda: any("c" in p.fields["classes"] for p in stage.published), 60)
    grown = next(p.fields for p in stage.published if "c" in p.fields["classes"])
    assert grown["version"] >= 2 and grown["classes"] == ["a", "b", "c"]
    assert [p.fields["version"] for p in stage.published] == list(range(1, len(stage.published) + 1))
    assert Path(grown["base_path"]).exists()        # Reptile-updated base, also announced
    _wait(lambda: stage.states["vision"].run is None)
    latest = stage.published[-1].fields["version"]
    current = json.loads((tmp_path / "models" / "current.json").read_text())
    assert current["version"] == latest
    ctl = pusher(ctx, ipc(tmp_path, "ctl"))
    send(ctl, Message("rollback"))
    _wait(lambda: stage.published[-1].kind == "rollback")
    assert stage.published[-1].get("to_version") == latest - 1
    assert json.loads((tmp_path / "models" / "current.json").read_text())["version"] == latest - 1
    send(push, Message("eos", stream="cam"))
    thread.join(30)
    st = stage.states["vision"]
    assert not thread.is_alive() and thread.result["rc"] == 0, (stage.ends.streams, stage.ends.ended, st.run,
                                                                st.new_labels, st.retry_at, time.monotonic())
    for s in (push, ctl, sub):
        s.close(0)
    ctx.term()


def test_a_worse_head_is_not_published_and_backlog_preempts(tmp_path) -> None:
    x, y = clusters(60, ["a", "b"], DIM, seed=3)
    good = fit_head(x, y, steps=150)
    models = tmp_path / "models"
    save_head(models / "head-v1.pt", good, HeadMeta(["a", "b"], DIM, version=1, extra={"trained_seen": 0}))
    (models / "current.json").write_text(json.dumps({"version": 1, "path": str(models / "head-v1.pt")}))
    mem = ReplayMemory(capacity=500, holdout_every=4)
    for i, (v, lab) in enumerate(zip(x, y, strict=True)):
        mem.add(f"cam:{i}", v, lab)
    mem.train.labels = ["b" if lab == "a" else "a" for lab in mem.train.labels]  # a labeler gone wrong
    mem.save(tmp_path / "buffer" / "replay.npz")
    stage = _retrain(tmp_path, {"retrain.lr": 0.05})
    assert stage.states["vision"].resume and stage.states["vision"].serving_meta.version == 1
    ctx = zmq.Context()
    thread = start(stage)
    _wait(lambda: stage.rejected_runs == 1)            # it trained, validated, and refused
    assert stage.published == [] and not (models / "head-v2.pt").exists()
    assert load_head(models / "head-v1.pt")[1].version == 1
    # inference backlog: a new run gets no lease and is pre-empted, nothing is published
    stage.rcfg.preempt_s = 0.3
    pub = ctx.socket(zmq.PUB)
    pub.bind(ipc(tmp_path, "load"))
    push = pusher(ctx, ipc(tmp_path, "rt"))
    busy = encode_message(Message("control", fields={"event": "infer_load", "backlog": 500}))
    deadline = time.monotonic() + 20
    while stage.arbiter.backlog() == 0 and time.monotonic() < deadline:
        pub.send_multipart(busy)
        time.sleep(0.05)
    xb, yb = clusters(35, ["a", "b"], DIM, seed=4)
    for i, (v, lab) in enumerate(zip(xb, yb, strict=True)):
        send(push, sample(5000 + i, v, label=lab, image=False, split="train"))
    while stage.rejected_runs < 2 and time.monotonic() < deadline:
        pub.send_multipart(busy)
        time.sleep(0.05)
    assert stage.rejected_runs == 2 and stage.arbiter.denied["backlog"] > 0
    send(push, Message("eos", stream="cam"))
    thread.join(30)
    assert not thread.is_alive()
    for s in (pub, push):
        s.close(0)
    ctx.term()


def _proc(spec_path: Path, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    return subprocess.Popen([sys.executable, "-m", "remembrall.stages.worker", str(spec_path)],
                            stdout=log_path.open("ab"), stderr=subprocess.STDOUT, env=env)


def test_killed_mid_training_resumes_from_the_intact_buffer(tmp_path) -> None:
    x, y = clusters(60, ["a", "b", "c"], DIM, seed=5)
    mem = ReplayMemory(capacity=500, holdout_every=5)
    for i, (v, lab) in enumerate(zip(x, y, strict=True)):
        mem.add(f"cam:{i}", v, lab)
    bpath = tmp_path / "buffer" / "replay.npz"
    mem.save(bpath)
    before = bpath.read_bytes()
    slow = {"retrain.max_steps": 10_000_000, "retrain.patience": 10_000_000, "retrain.warmup_steps": 10_000_000}
    s = spec(tmp_path, "retrain", "retrain", {"labelled": f"pull+bind:{ipc(tmp_path, 'rt')}"},
             {"model_ready": f"pub+bind:{ipc(tmp_path, 'ready')}"}, {**FAST, **slow})
    spec_path = tmp_path / "retrain.json"
    spec_path.write_text(s.to_json())
    log_path = tmp_path / "retrain.log"
    proc = _proc(spec_path, log_path)
    try:
        _wait(lambda: b"training run started" in log_path.read_bytes(), timeout=60)
        time.sleep(0.5)                                  # let it take real optimizer steps
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert bpath.read_bytes() == before                 # the buffer is intact
    assert not list((tmp_path / "models").glob("head-v*.pt"))
    assert not list((tmp_path / "models").glob(".*.tmp"))
    s = spec(tmp_path, "retrain", "retrain", {"labelled": f"pull+bind:{ipc(tmp_path, 'rt')}"},
             {"model_ready": f"pub+bind:{ipc(tmp_path, 'ready')}"}, FAST)
    spec_path.write_text(s.to_json())
    proc = _proc(spec_path, log_path)                   # restart: resumes from the buffer
    ctx = zmq.Context()
    push = pusher(ctx, ipc(tmp_path, "rt"))
    try:
        _wait(lambda: (tmp_path / "models" / "current.json").exists(), timeout=60)
        send(push, Message("eos", stream="cam"))
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        push.close(0)
        ctx.term()
    current = json.loads((tmp_path / "models" / "current.json").read_text())
    head, meta = load_head(current["path"])
    assert meta.version == 1 and meta.classes == ["a", "b", "c"] and meta.val_accuracy > 0.9
