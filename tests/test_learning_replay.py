"""Replay memory: policies, held-out slice, atomic persistence, corrupt and old-format files."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter

import numpy as np
import pytest

from remembrall.learning.replay import ReplayError, ReplayMemory


def _fill(mem: ReplayMemory, n: int, labels: list[str], dim: int = 8, start: int = 0) -> None:
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        mem.add(f"s:{i}", rng.normal(size=dim).astype(np.float32), labels[i % len(labels)], "cam", float(i))


def test_bounded_and_holdout_slice() -> None:
    mem = ReplayMemory(capacity=50, policy="reservoir", holdout_every=5, holdout_capacity=10)
    _fill(mem, 500, ["a", "b"])
    assert len(mem) == 50 and mem.holdout_size == 10 and mem.seen == 500
    x, y = mem.dataset("holdout")
    assert x.shape == (10, 8) and x.dtype == np.float32
    train_ids = set(mem.train.ids)
    assert not train_ids & set(mem.holdout.ids)                      # never trained on
    assert sorted(int(i.split(":")[1]) for i in mem.holdout.ids) == list(range(404, 500, 5)[-10:])
    assert mem.add("s:499", np.ones(8), "a") == "duplicate"
    # reservoir keeps a roughly uniform sample of history, not just the newest
    ages = [int(i.split(":")[1]) for i in train_ids]
    assert min(ages) < 250


def test_class_balanced_keeps_rare_classes() -> None:
    labels = ["common"] * 19 + ["rare"]
    bal = ReplayMemory(capacity=40, policy="class_balanced", holdout_every=1000)
    res = ReplayMemory(capacity=40, policy="reservoir", holdout_every=1000)
    _fill(bal, 2000, labels)
    _fill(res, 2000, labels)
    cb, cr = Counter(bal.train.labels), Counter(res.train.labels)
    assert cb["rare"] >= 15 > cr["rare"]  # 100 rare seen: balanced keeps many, reservoir ~2


def test_bad_inputs_are_refused() -> None:
    mem = ReplayMemory(capacity=4)
    with pytest.raises(ValueError, match="finite"):
        mem.add("x", np.array([np.inf, 0.0]), "a")
    with pytest.raises(ValueError, match="label"):
        mem.add("x", np.ones(2), "")
    mem.add("x", np.ones(2), "a")
    with pytest.raises(ValueError, match="dims"):
        mem.add("y", np.ones(3), "a")
    with pytest.raises(ValueError, match="policy"):
        ReplayMemory(policy="lru")


def test_round_trip_through_a_real_file(tmp_path) -> None:
    path = tmp_path / "buf" / "replay.npz"
    mem = ReplayMemory(capacity=30, policy="class_balanced", holdout_every=4, holdout_capacity=5, seed=3)
    _fill(mem, 100, ["a", "b", "c"])
    mem.save(path)
    back = ReplayMemory.open(path)
    assert back.train.ids == mem.train.ids and back.holdout.ids == mem.holdout.ids
    assert np.array_equal(back.dataset()[0], mem.dataset()[0]) and back.dataset()[1] == mem.dataset()[1]
    assert back.seen == 100 and back.classes() == ["a", "b", "c"]
    # the restored RNG continues exactly where the saved one stopped
    _fill(mem, 50, ["a", "b", "c"], start=100)
    _fill(back, 50, ["a", "b", "c"], start=100)
    assert back.train.ids == mem.train.ids
    assert not list(path.parent.glob(".*.tmp"))  # no temp file left behind
    assert ReplayMemory.open(tmp_path / "missing.npz", capacity=7).capacity == 7


def test_corrupt_file_is_an_error_or_a_logged_rebuild(tmp_path, caplog) -> None:
    path = tmp_path / "replay.npz"
    mem = ReplayMemory(capacity=10)
    _fill(mem, 20, ["a", "b"])
    data = mem.to_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated, as by a crash without atomic writes
    with pytest.raises(ReplayError, match="not a readable replay file"):
        ReplayMemory.open(path)
    with caplog.at_level(logging.WARNING):
        fresh = ReplayMemory.open(path, on_corrupt="rebuild", capacity=10)
    assert len(fresh) == 0 and not path.exists()
    assert list(tmp_path.glob("replay.npz.corrupt-*"))
    assert "started an empty replay buffer" in caplog.text
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(ReplayError):
        ReplayMemory.load(path)


def _rewrite(data: bytes, **changes: object) -> bytes:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    meta = json.loads(files["meta"].tobytes())
    meta.update(changes)
    files["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **files)
    return buf.getvalue()


def test_older_format_and_inconsistent_contents(tmp_path) -> None:
    mem = ReplayMemory(capacity=10)
    _fill(mem, 20, ["a", "b"])
    with pytest.raises(ReplayError, match="format version 0"):
        ReplayMemory.from_bytes(_rewrite(mem.to_bytes(), version=0))
    with pytest.raises(ReplayError, match="disagree in length"):
        ReplayMemory.from_bytes(_rewrite(mem.to_bytes(), train_ids=["x"]))
    with pytest.raises(ReplayError, match="not a remembrall replay"):
        ReplayMemory.from_bytes(_rewrite(mem.to_bytes(), format="other"))
    buf = io.BytesIO()
    np.savez(buf, meta=np.array([object()], dtype=object))  # a pickle inside: must not be loaded
    with pytest.raises(ReplayError):
        ReplayMemory.from_bytes(buf.getvalue())
