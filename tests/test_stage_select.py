"""select → label → buffer as real stages on real ipc sockets (threads of this process)."""

from __future__ import annotations

import threading

import numpy as np
import zmq

from remembrall.learning.replay import ReplayMemory
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message
from remembrall.stages.buffer import BufferStage
from remembrall.stages.label import LabelStage
from remembrall.stages.select import SelectStage
from tests.learning_harness import collect_until_eos, ipc, pusher, sample, send, spec, start


def _dropped(stage: str, reason: str, stream: str = "cam") -> float:
    return m.DROPPED.labels(stage, stream, reason)._value.get()


def test_select_label_buffer_chain(tmp_path) -> None:
    ctx = zmq.Context()
    over = {"select.rate": 0.25, "select.window": 8, "label.classes": ["a", "b"],
            "buffer.capacity": 100, "buffer.holdout_every": 4, "buffer.persist_every": 5}
    sel = SelectStage(spec(tmp_path, "select", "select", {"samples": f"pull+bind:{ipc(tmp_path, 'sel')}"},
                           {"selected": f"push+connect:{ipc(tmp_path, 'lab')}"}, over))
    lab = LabelStage(spec(tmp_path, "label", "label", {"selected": f"pull+bind:{ipc(tmp_path, 'lab')}"},
                          {"labelled": f"push+connect:{ipc(tmp_path, 'buf')}"}, over))
    buf = BufferStage(spec(tmp_path, "buffer", "buffer", {"labelled": f"pull+bind:{ipc(tmp_path, 'buf')}"},
                           {"labelled": f"push+connect:{ipc(tmp_path, 'out')}"}, over))
    out = ctx.socket(zmq.PULL)
    out.bind(ipc(tmp_path, "out"))
    hold = threading.Event()  # stages close only once the chain has drained (the supervisor's release)
    threads = [start(s, hold) for s in (sel, lab, buf)]
    push = pusher(ctx, ipc(tmp_path, "sel"))
    rng = np.random.default_rng(0)
    static = rng.normal(size=1280)
    before_bad = _dropped("select", "bad_sample")
    before_unknown = _dropped("label", "unknown_class")
    for i in range(200):  # a static scene
        send(push, sample(i, static + 0.001 * rng.normal(size=1280), label="a"))
    for i in range(200, 400):  # a new, varied scene; some labels name a class nobody declared
        send(push, sample(i, rng.normal(size=1280), label="zebra" if i % 10 == 0 else "b",
                          entropy=float(i % 7)))
    for i in range(400, 440):  # text items share the stages: their own sampler and buffer file
        t = sample(i, rng.normal(size=384), label="b", image=False)
        t.fields["modality"] = "text"
        send(push, t)
    bad = sample(999, np.ones(1280))
    bad.arrays[0] = bad.arrays[0].astype(np.float64)
    send(push, bad)
    push.send_multipart([b"\xc1garbage"])
    send(push, Message("eos", stream="cam"))
    got = collect_until_eos(out)
    hold.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive() and t.result["rc"] == 0
    text = [msg for msg in got if msg.get("modality") == "text"]
    assert text and all(msg.arrays[0].shape == (384,) for msg in text)
    assert ReplayMemory.load(tmp_path / "buffer" / "replay-text.npz").dim == 384
    got = [msg for msg in got if msg.get("modality") != "text"]
    ids = [int(msg.get("id").split(":")[1]) for msg in got]
    assert sum(i < 200 for i in ids) <= 3                     # near-duplicates are not relabelled
    assert sum(i >= 200 for i in ids) >= 40                    # the new scene gets the budget
    assert len(ids) <= 0.25 * 400
    assert all(msg.get("label_source") == "oracle" and msg.get("selected_by") == "embedding" for msg in got)
    assert all(len(msg.arrays) == 2 and msg.get("split") in ("train", "holdout") for msg in got)
    assert _dropped("select", "bad_sample") == before_bad + 1
    assert _dropped("label", "unknown_class") > before_unknown
    assert not any(msg.get("label") == "zebra" for msg in got)
    mem = ReplayMemory.load(tmp_path / "buffer" / "replay.npz")  # persisted before eos went on
    assert len(mem) + mem.holdout_size == len(got) and mem.classes() <= ["a", "b"]
    # a restarted buffer reloads the file and refuses what it already holds
    buf2 = BufferStage(spec(tmp_path, "buffer", "buffer", {"labelled": f"pull+bind:{ipc(tmp_path, 'buf')}"},
                            {"labelled": f"push+connect:{ipc(tmp_path, 'out')}"}, over))
    assert len(buf2.memories["vision"]) == len(mem)
    push.close()
    out.close()
    ctx.term()


def test_buffer_stage_refuses_or_rebuilds_a_corrupt_file(tmp_path) -> None:
    import pytest

    from remembrall.learning.replay import ReplayError

    path = tmp_path / "buffer" / "replay.npz"
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 truncated by a crash of something that did not write atomically")
    io = ({"labelled": f"pull+bind:{ipc(tmp_path, 'b')}"}, {"labelled": f"push+connect:{ipc(tmp_path, 'o')}"})
    with pytest.raises(ReplayError, match="not a readable replay file"):
        BufferStage(spec(tmp_path, "buffer", "buffer", *io, {"buffer.on_corrupt": "error"}))
    stage = BufferStage(spec(tmp_path, "buffer", "buffer", *io, {"buffer.on_corrupt": "rebuild"}))
    assert len(stage.memories["vision"]) == 0 and list(path.parent.glob("replay.npz.corrupt-*"))
