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
from remembrall.pipeline.messages import Message, decode_message
from remembrall.stages.remote_trainer import (
    JobError,
    MissingRows,
    RemoteRun,
    RemoteTrainer,
    job_message,
    parse_job,
    row_hashes,
)
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
        run = remote.run("vision", start, xs, ys, xv, yv, SETTINGS, lambda: float(next(drifts)), "cpu")
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
        first = remote.run("vision", None, xs, ys, xv, yv, slow, lambda: 0.0, "cpu")
        deadline = time.monotonic() + 10
        while not first.acked and time.monotonic() < deadline:
            first.step_slice()
            time.sleep(0.02)
        assert first.acked
        first.stop("rollback")  # the edge gives it up: the server drops it
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and server.server.clients[b"cam-a/retrain"].jobs:
            remote.poll()
            time.sleep(0.02)
        assert not server.server.clients[b"cam-a/retrain"].jobs
        run = remote.run("vision", None, xs, ys, xv, yv, SETTINGS, lambda: 0.0, "cpu")
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
        run = remote.run("vision", None, xs, ys, xv, yv, SETTINGS, lambda: 0.0, "cpu")
        res = finish(run)
        assert run.local is not None and res.accepted and res.val_accuracy >= 0.9
    finally:
        remote.close()
        ctx.term()


def test_a_draining_pipeline_does_not_wait_for_a_missing_server(keys: Path, tmp_path: Path) -> None:
    """retrain.remote_fallback_s: 0 waits for the server while the stream goes on, but not once
    the pipeline drains (a file ended): then remote.timeout_s (2 s here) is all it waits."""
    ctx = zmq.Context()
    remote = trainer(keys, free_port(), ctx, tmp_path, remote_fallback_s=0)
    try:
        xs, ys, xv, yv = data(7)
        run = remote.run("vision", None, xs, ys, xv, yv, SETTINGS, lambda: 0.0, "cpu")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            assert run.step_slice() and run.local is None  # streaming: it waits
            time.sleep(0.02)
        while run.step_slice(draining=True) and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        assert run.local is not None and run.result().accepted and time.monotonic() - t0 < 10
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
        run = remote.run("vision", None, xs, ys, xv, yv, SETTINGS, lambda: 0.0, "cpu")
        res = finish(run)
        assert run.local is not None and res.accepted
    finally:
        remote.close()
        server.stop()
        ctx.term()


def job(xs, ys, xv, yv, start=None, known=frozenset()) -> Message:
    return job_message("r1", "vision", start, xs, ys, xv, yv, SETTINGS, row_hashes(np.concatenate([xs, xv])), known)


def test_a_job_carries_only_the_rows_the_server_does_not_hold() -> None:
    xs, ys, xv, yv = data(5)
    first = job(xs, ys, xv, yv)
    held = parse_job(first)
    assert held.ys == ys and held.yv == yv and np.array_equal(held.xs, xs)
    grown = np.concatenate([xs, xs[:5] + 1.0])  # the next run: the same buffer and five new samples
    second = job(grown, ys + ys[:5], xv, yv, known=set(held.rows))
    assert len(second.arrays[0]) == 5  # only the new rows travel
    again = parse_job(second, held.rows)
    assert np.array_equal(again.xs, grown) and again.ys == ys + ys[:5] and np.array_equal(again.xv, xv)
    with pytest.raises(MissingRows):  # a server that lost them (restarted) says so
        parse_job(second)


def test_the_edge_learns_what_the_server_holds_and_sends_less(keys: Path, tmp_path: Path) -> None:
    port = free_port()
    server = Server(keys, port, tmp_path)
    ctx = zmq.Context()
    remote = trainer(keys, port, ctx, tmp_path)
    try:
        xs, ys, xv, yv = data(6)
        finish(remote.run("vision", None, xs, ys, xv, yv, SETTINGS, lambda: 0.0, "cpu"))
        grown = np.concatenate([xs, xs[:3] + 1.0])
        run = remote.run("vision", None, grown, ys + ys[:3], xv, yv, SETTINGS, lambda: 0.0, "cpu")
        assert len(decode_message(run._wire()).arrays[0]) == 3  # three new rows travel, not sixty-three
        res = finish(run)
        assert res.accepted and run.local is None
        server.server.clients[b"cam-a/retrain"].rows.clear()  # the server forgets: the edge sends all again
        again = remote.run("vision", None, grown, ys + ys[:3], xv, yv, SETTINGS, lambda: 0.0, "cpu")
        assert finish(again).accepted and again.local is None
        assert value(m.REMOTE_RESENT, "retrain-cam-a", "missing_rows") >= 1
    finally:
        remote.close()
        server.stop()
        ctx.term()


def test_bad_jobs_are_refused_with_the_reason() -> None:
    xs, ys, xv, yv = data(4)
    good = job(xs, ys, xv, yv)
    assert parse_job(good).ys == ys

    def broken(**change: object) -> Message:
        msg = job(xs, ys, xv, yv, start=ClassifierHead(DIM, ["cat"]))
        arrays = list(msg.arrays)
        for key, val in change.items():
            if key.startswith("a"):
                arrays[int(key[1:])] = val
            else:
                msg.fields[key] = val
        return Message("control", fields=msg.fields, arrays=arrays)

    cases = {
        "class index": broken(a3=np.full(90, 7, np.int32)),
        "float32": broken(a0=xs.astype(np.float64)),
        "finite": broken(a0=np.full((90, DIM), np.nan, np.float32)),
        "settings": broken(settings={"lr": "fast"}),
        "settings.lr": broken(settings=dict(vars(SETTINGS), lr=float("inf"))),
        "checkpoint": broken(a4=np.frombuffer(b"not a checkpoint", np.uint8)),
        "classes": broken(classes=[]),
        "dim": broken(dim=0),
        "expected 5 arrays": Message("control", fields=good.fields, arrays=good.arrays[:3]),
    }
    for what, msg in cases.items():
        with pytest.raises(JobError, match=what):
            parse_job(msg)
    capped = parse_job(broken(settings=dict(vars(SETTINGS), max_steps=10**12, batch_size=10**9))).settings
    assert capped.max_steps == 100_000 and capped.batch_size == 65_536
