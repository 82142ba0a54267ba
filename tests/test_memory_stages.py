"""The infer stage with its episodic memory and zoo router: real EfficientNet embeddings, real
ZeroMQ sockets, real head files. A written label serves the very next batch; a returning scene
recalls its specialist within a batch."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import zmq

from remembrall.learning.zoo import SpecialistZoo
from remembrall.models.heads import ClassifierHead, HeadMeta
from remembrall.pipeline.messages import Message, decode_message, encode_message
from remembrall.stages.infer import InferStage
from tests.learning_harness import ipc, sample, spec, start
from tests.pipeline_helpers import wait_for

SIZE = 64


def frame(i: int, scene: str) -> Message:
    rng = np.random.default_rng(i)
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    if scene == "a":  # red noise
        img[..., 0] = rng.integers(120, 255, (SIZE, SIZE))
    else:  # blue stripes
        img[::4, :, 2] = 255
        img[:, :, 1] = rng.integers(0, 40, (SIZE, SIZE))
    return Message("frame", stream="cam", seq=i, fields={"id": f"cam:{i}"}, arrays=[img])


def infer_stage(tmp_path, extra: dict, inputs: dict) -> InferStage:
    overrides = {"learn": True, "infer.device": "cpu", "infer.image_size": SIZE, "infer.threads": 1,
                 "infer.max_wait_ms": 5, **extra}
    s = spec(tmp_path, "infer", "infer", inputs={"in": f"pull+bind:{ipc(tmp_path, 'in')}", **inputs},
             outputs={"predictions": f"push+connect:{ipc(tmp_path, 'preds')}"}, overrides=overrides)
    s.params = {"modalities": ["vision"]}
    return InferStage(s)


@pytest.fixture
def sockets(tmp_path):
    ctx = zmq.Context()
    feed = ctx.socket(zmq.PUSH)
    feed.connect(ipc(tmp_path, "in"))
    preds = ctx.socket(zmq.PULL)
    preds.bind(ipc(tmp_path, "preds"))
    yield ctx, feed, preds
    for sock in (feed, preds):
        sock.close(0)
    ctx.term()


def next_prediction(preds: zmq.Socket, timeout_s: float = 60) -> Message:
    assert preds.poll(int(timeout_s * 1000)), "no prediction"
    return decode_message(preds.recv_multipart())


def finish(feed: zmq.Socket, thread) -> None:
    feed.send_multipart(encode_message(Message("eos", stream="cam")))
    thread.join(60)
    assert thread.result.get("rc") == 0


def test_a_label_written_to_the_memory_serves_the_very_next_batch(tmp_path, sockets) -> None:
    ctx, feed, preds = sockets
    labels = ctx.socket(zmq.PUB)
    labels.bind(ipc(tmp_path, "memory"))
    stage = infer_stage(tmp_path, {"infer.head": "none", "infer.batch_size": 1, "zoo.enabled": False},
                        {"memory": f"sub+connect:{ipc(tmp_path, 'memory')}"})
    img = frame(1, "b")
    emb = stage.modalities["vision"].embed([img.arrays[0]]).cpu().numpy()[0]
    thread = start(stage)
    try:
        feed.send_multipart(encode_message(frame(0, "b")))
        assert next_prediction(preds).get("pred") is None  # cold start: nothing to say yet
        mem = stage.memory.memories["vision"]

        def stored() -> bool:  # PUB/SUB: resend until the subscription is up
            if not len(mem):
                labels.send_multipart(encode_message(sample(7, emb, label="zebra", stream="cam")))
            return len(mem) == 1

        wait_for(stored, timeout=30, interval=0.1, what="the label to reach the memory")
        feed.send_multipart(encode_message(img))
        pred = next_prediction(preds)
        assert pred.get("pred") == "zebra" and pred.get("top")[0][0] == "zebra"
        finish(feed, thread)
    finally:
        labels.close(0)
    # the memory was saved atomically on exit, and a restarted infer reloads it
    again = infer_stage(tmp_path, {"infer.head": "none", "zoo.enabled": False}, {})
    assert len(again.memory.memories["vision"]) == 1


def test_a_returning_scene_recalls_its_specialist_within_a_batch(tmp_path, sockets) -> None:
    ctx, feed, preds = sockets
    extra = {"infer.head": "none", "infer.batch_size": 4, "memory.enabled": False, "zoo.recall_window": 4,
             "zoo.recall_labels": 0, "zoo.prototypes": 2}
    probe = infer_stage(tmp_path, extra, {})
    embed = probe.modalities["vision"].embed
    zoo = SpecialistZoo(tmp_path / "zoo", "vision", probe.modalities["vision"].dim, prototypes=2)
    for version, scene, says in ((1, "a", 0), (2, "b", 1)):
        head = ClassifierHead(zoo.dim, ["x", "y"])
        with torch.no_grad():  # a head that always answers its scene's class
            head.net.weight.zero_()
            head.net.bias.copy_(torch.tensor([1.0, 0.0] if says == 0 else [0.0, 1.0]))
        emb = embed([frame(100 + i, scene).arrays[0] for i in range(8)]).cpu().numpy()
        zoo.add(head, HeadMeta(["x", "y"], zoo.dim, version=version), emb, ["cam"])
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "current-vision.json").write_text(json.dumps(
        {"version": 1, "path": str(zoo.dir / "spec-v1.pt"), "modality": "vision"}))
    del probe
    stage = infer_stage(tmp_path, extra, {})
    thread = start(stage)
    served = []

    def play(scene: str, start_seq: int) -> None:
        for b in range(3):  # a camera: batches of 4 a little apart
            for i in range(4):
                feed.send_multipart(encode_message(frame(start_seq + 4 * b + i, scene)))
            for _ in range(4):
                p = next_prediction(preds)
                served.append((scene, p.get("model_version"), p.get("pred")))
            time.sleep(0.2)

    play("a", 0)
    assert {v for s, v, _ in served} == {1}
    play("b", 100)
    after = [v for s, v, _ in served if s == "b"]
    # the first batch of the new scene fills the recent window; the next is served by v2
    assert after[:4] == [1, 1, 1, 1] and after[4:] == [2] * 8, after
    assert [p for s, _, p in served if s == "b"][4:] == ["y"] * 8
    finish(feed, thread)
    assert zoo.get(2) is not None
