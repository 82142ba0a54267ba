"""Training steps on a ``remembrall serve`` server (retrain.remote): real sockets and keys, real
training on both sides; the edge validates what comes back, resends to a restarted server and
trains here when the server is gone too long or cannot take the job."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from remembrall.config import load_config
from remembrall.learning.trainer import TrainingRun, TrainSettings
from remembrall.models.heads import ClassifierHead
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message
from remembrall.stages.remote_trainer import JobError, RemoteRun, RemoteTrainer, job_message, parse_job
from tests.broker_servers import free_port
from tests.remote_servers import Server, value

DIM = 16
SETTINGS = TrainSettings(max_steps=120, warmup_steps=20, steps_per_slice=10)


def data(seed: int = 0, n: int = 90) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Three well separated classes: any working training reaches high held-out accuracy."""
    rng = np.random.default_rng(seed)
    names = ["cat", "dog", "owl"]
    centers = 4 * np.eye(DIM, dtype=np.float32)[:3]
    y = [names[i % 3] for i in range(n)]
    x = np.stack([centers[i % 3] + rng.normal(scale=0.5, size=DIM) for i in range(n)]).astype(np.float32)
    return x[:60], y[:60], x[60:], y[60:]


def trainer(keys: Path, port: int, ctx: zmq.Context, tmp: Path, name: str = "cam-a", **retrain: object) -> RemoteTrainer:
    cfg = load_config(None, {"learn": True, "retrain.remote": f"tcp://127.0.0.1:{port}",
                             "remote.server_key": str(keys / "teacher.key"),
                             "remote.client_key": str(keys / f"{name}.key_secret"), "remote.name": name,
                             "remote.timeout_s": 2.0, **{f"retrain.{k}": v for k, v in retrain.items()}})
    return RemoteTrainer(cfg, ctx, f"retrain-{name}", str(tmp))


def finish(run: RemoteRun, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while run.step_slice() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.done, "the run did not finish"
    return run.result()


def test_a_run_trains_on_the_server_and_the_edge_validates_it(keys: Path, tmp_path: Path) -> None:
    port = free_port()
    server = Server(keys, port, tmp_path)
    ctx = zmq.Context()
    remote = trainer(keys, port, ctx, tmp_path)
    try:
        xs, ys, xv, yv = data()
        start = ClassifierHead(DIM, ["cat"])  # the serving head knows one class; the run grows it
        before = value(m.TRAIN_SERVER_JOBS, "cam-a/retrain", "trained")
        drifts = iter(np.linspace(0.0, 0.01, 1000))
        run = remote.run(start, xs, ys, xv, yv, SETTINGS, lambda: float(next(drifts)), "cpu")
        res = finish(run)
        assert run.local is None  # trained there, not here
        assert value(m.TRAIN_SERVER_JOBS, "cam-a/retrain", "trained") == before + 1
        assert res.accepted and res.classes == ["cat", "dog", "owl"] and res.val_accuracy >= 0.9
        assert res.steps > 0 and res.head.classes == res.classes
        local = TrainingRun(start, xs, ys, xv, yv, SETTINGS)  # the same run here reaches the same place
        while local.step_slice():
            pass
        assert abs(local.result().val_accuracy - res.val_accuracy) <= 0.1
        assert not remote.runs  # settled
    finally:
        remote.close()
        server.stop()
        ctx.term()


def test_a_restarted_server_gets_the_job_again(keys: Path, tmp_path: Path) -> None:
    port = free_port()
    ctx = zmq.Context()
    remote = trainer(keys, port, ctx, tmp_path, remote_fallback_s=0)  # 0: wait for the server
    server = Server(keys, port, tmp_path)
    try:
        xs, ys, xv, yv = data(1)
        slow = TrainSettings(max_steps=100_000, warmup_steps=100_000, steps_per_slice=1, early_stopping=False)
        first = remote.run(None, xs, ys, xv, yv, slow, lambda: 0.0, "cpu")
        deadline = time.monotonic() + 10
        while not first.acked and time.monotonic() < deadline:
            first.step_slice()
            time.sleep(0.02)
        assert first.acked
        first.stop("rollback")  # the edge gives it up: the server drops it
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and server.server.clients[b"cam-a/retrain"].job is not None:
            remote.poll()
            time.sleep(0.02)
        assert server.server.clients[b"cam-a/retrain"].job is None
        run = remote.run(None, xs, ys, xv, yv, SETTINGS, lambda: 0.0, "cpu")
        while not run.acked:
            run.step_slice()
            time.sleep(0.02)
        server.stop()  # gone with the job
        time.sleep(0.5)
        run.step_slice()
        assert not run.done
        server = Server(keys, port, tmp_path)  # a new life: the edge sends the job again
        res = finish(run)
        assert res.accepted and run.local is None
        assert value(m.REMOTE_RESENT, "retrain-cam-a", "restarted") >= 1
    finally:
        remote.close()
        server.stop()
        ctx.term()


def test_no_server_for_too_long_trains_here(keys: Path, tmp_path: Path) -> None:
    ctx = zmq.Context()
    remote = trainer(keys, free_port(), ctx, tmp_path, remote_fallback_s=1.0)  # nobody listens
    try:
        xs, ys, xv, yv = data(2)
        run = remote.run(None, xs, ys, xv, yv, SETTINGS, lambda: 0.0, "cpu")
        res = finish(run)
        assert run.local is not None and res.accepted and res.val_accuracy >= 0.9
    finally:
        remote.close()
        ctx.term()


def test_a_server_that_does_not_train_sends_the_run_home(keys: Path, tmp_path: Path) -> None:
    port = free_port()
    server = Server(keys, port, tmp_path, training=False)
    ctx = zmq.Context()
    remote = trainer(keys, port, ctx, tmp_path)
    try:
        xs, ys, xv, yv = data(3)
        run = remote.run(None, xs, ys, xv, yv, SETTINGS, lambda: 0.0, "cpu")
        res = finish(run)
        assert run.local is not None and res.accepted
    finally:
        remote.close()
        server.stop()
        ctx.term()


def test_bad_jobs_are_refused_with_the_reason() -> None:
    xs, ys, xv, yv = data(4)
    good = job_message("r1", None, xs, ys, xv, yv, SETTINGS)
    assert parse_job(good)[2] == ys

    def broken(**change: object) -> Message:
        msg = job_message("r1", ClassifierHead(DIM, ["cat"]), xs, ys, xv, yv, SETTINGS)
        arrays = list(msg.arrays)
        for key, val in change.items():
            if key.startswith("a"):
                arrays[int(key[1:])] = val
            else:
                msg.fields[key] = val
        return Message("control", fields=msg.fields, arrays=arrays)

    cases = {
        "class index": broken(a1=np.full(60, 7, np.int32)),
        "N×D float32": broken(a0=xs.astype(np.float64)),
        "finite": broken(a0=np.full_like(xs, np.nan)),
        "settings": broken(settings={"lr": "fast"}),
        "settings.lr": broken(settings=dict(vars(SETTINGS), lr=float("inf"))),
        "checkpoint": broken(a4=np.frombuffer(b"not a checkpoint", np.uint8)),
        "classes": broken(classes=[]),
        "expected 5 arrays": Message("control", fields=good.fields, arrays=good.arrays[:3]),
    }
    for what, msg in cases.items():
        with pytest.raises(JobError, match=what):
            parse_job(msg)
    capped = parse_job(broken(settings=dict(vars(SETTINGS), max_steps=10**12, batch_size=10**9)))[5]
    assert capped.max_steps == 100_000 and capped.batch_size == 65_536
