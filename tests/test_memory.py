"""Episodic memory and specialist zoo as libraries: real FAISS search, real files, real heads."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from remembrall.learning.episodic import EpisodicMemory, MemoryFileError
from remembrall.learning.zoo import SpecialistZoo, ZooError
from remembrall.models.heads import ClassifierHead, HeadMeta, save_head


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float = 0.3) -> np.ndarray:
    idx = rng.integers(0, len(centres), n)
    return (centres[idx] + spread * rng.normal(size=(n, centres.shape[1]))).astype(np.float32), idx


def test_a_written_label_changes_the_next_vote_and_new_classes_are_predicted() -> None:
    mem = EpisodicMemory(dim=8, capacity=10)
    x = np.eye(8, dtype=np.float32)[3]
    probs, classes, used = mem.blend(x[None], np.array([[0.6, 0.4]], np.float32), ["cat", "dog"])
    assert classes == ["cat", "dog"] and not used.any()
    mem.write(x, "zebra", {"cat": 0.6, "dog": 0.4})
    probs, classes, used = mem.blend(x[None], None, [])
    assert classes == ["zebra"] and probs[0, 0] == pytest.approx(1.0)


def test_calibration_keeps_the_head_when_the_vote_is_worse_and_uses_the_vote_when_better() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    names = ["a", "b", "c"]
    # the head is always wrong (it says the next class); the memory's neighbours are right
    good = EpisodicMemory(dim=16, capacity=500, min_calibration=10)
    x, idx = clustered(rng, centres, 120)
    for e, i in zip(x, idx, strict=True):
        wrong = {n: (0.8 if j == (i + 1) % 3 else 0.1) for j, n in enumerate(names)}
        good.observe(e, names[i], wrong)
        good.write(e, names[i], wrong)
    assert good.calibration.alpha >= 0.5
    assert good.calibration.accuracy_blend > good.calibration.accuracy_head
    # the head is always right and the memory holds shuffled labels: the blend stays off
    bad = EpisodicMemory(dim=16, capacity=500, min_calibration=10)
    for e, i in zip(x, idx, strict=True):
        right = {n: (0.8 if j == i else 0.1) for j, n in enumerate(names)}
        bad.observe(e, names[i], right)
        bad.write(e, names[(i + int(rng.integers(1, 3))) % 3], right)
    assert bad.calibration.alpha == 0.0
    assert bad.calibration.accuracy_blend == bad.calibration.accuracy_head == 1.0


def test_surprise_first_eviction_and_duplicates() -> None:
    mem = EpisodicMemory(dim=4, capacity=3)
    eye = np.eye(4, dtype=np.float32)
    assert mem.write(eye[0], "a", {"a": 0.9}).stored  # known to the head: surprise 0.1
    assert mem.write(eye[1], "b", {"a": 0.9}).stored  # the head was wrong: surprise 1.0
    assert mem.write(eye[1] * 2, "b").reason == "duplicate"  # same direction, same label
    assert mem.write(eye[1] * 2, "c").stored  # same place, another label: kept
    res = mem.write(eye[2], "d", {"a": 0.9})
    assert res.stored and res.reason == "evicted_other"
    _, labels = mem.stored()
    assert sorted(labels) == ["b", "c", "d"]  # the item the head already knew went first, not the oldest surprise


def test_prune_forget_and_a_round_trip_through_a_file(tmp_path) -> None:
    mem = EpisodicMemory(dim=4, capacity=10)
    eye = np.eye(4, dtype=np.float32)
    mem.write(eye[0] * 3, "a", stream="cam0")
    mem.write(eye[1], "b", stream="cam1")
    mem.write(eye[2], "new", stream="cam0")
    raw, labels = mem.stored(raw=True)
    assert np.allclose(raw[0], eye[0] * 3)
    # a consolidated head that knows a and b: it gets a right with margin, b wrong; "new" is unknown to it
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]], np.float32)
    assert mem.prune(probs, ["a", "b"], margin=0.3) == 1
    assert mem.stored()[1] == ["b", "new"]
    path = tmp_path / "memory.npz"
    mem.save(path)
    again = EpisodicMemory(dim=4, capacity=10).load(path)
    assert again.stored()[1] == ["b", "new"] and again.streams_held() == {"cam1": 1, "cam0": 1}
    assert again.forget("cam0") == 1 and again.stored()[1] == ["b"]


def test_a_corrupt_memory_file_is_moved_aside_and_a_wrong_size_refused(tmp_path, caplog) -> None:
    path = tmp_path / "memory.npz"
    mem = EpisodicMemory(dim=4)
    mem.write(np.ones(4, np.float32), "a")
    mem.save(path)
    with pytest.raises(MemoryFileError, match="4-d memories"):
        EpisodicMemory(dim=8).load(path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        fresh = EpisodicMemory(dim=4).open(path)
    assert len(fresh) == 0 and not path.exists()
    assert list(tmp_path.glob("memory.npz.corrupt-*"))
    assert "memory.npz" in caplog.text and "empty episodic memory" in caplog.text


def test_ivf_search_past_its_threshold_finds_the_same_nearest_items() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 32)) * 2
    x, idx = clustered(rng, centres, 3000, spread=0.2)
    flat = EpisodicMemory(dim=32, capacity=3000, duplicate_similarity=1.1)
    ivf = EpisodicMemory(dim=32, capacity=3000, duplicate_similarity=1.1, ivf_min=1000)
    for e, i in zip(x, idx, strict=True):
        flat.write(e, str(i))
        ivf.write(e, str(i))
    q, qi = clustered(rng, centres, 50, spread=0.2)
    votes_flat, _ = flat.vote(q)
    votes_ivf, _ = ivf.vote(q)
    agree = (votes_flat.argmax(1) == votes_ivf.argmax(1)).mean()
    assert agree >= 0.95
    assert (np.array(flat.classes)[votes_flat.argmax(1)] == qi.astype(str)).mean() >= 0.95


def _head(classes: list[str], dim: int = 4, version: int = 1) -> tuple[ClassifierHead, HeadMeta]:
    return ClassifierHead(dim, classes), HeadMeta(classes, dim, version=version)


def test_the_zoo_matches_scenes_survives_a_reload_and_refuses_mismatches(tmp_path, caplog) -> None:
    rng = np.random.default_rng(2)
    scenes = np.eye(4, dtype=np.float32) * 5
    zoo = SpecialistZoo(tmp_path, "vision", dim=4, prototypes=2)
    for v in range(3):
        head, meta = _head(["a", "b"], version=v + 1)
        zoo.add(head, meta, scenes[v] + 0.1 * rng.normal(size=(16, 4)), [f"cam{v}"])
    assert [v for v, _ in zoo.match(scenes[2] + 0.1 * rng.normal(size=(8, 4)))][0] == 3
    reader = SpecialistZoo(tmp_path, "vision", dim=4, prototypes=2)
    assert reader.versions() == [1, 2, 3]
    zoo.note_recall(2)
    assert reader.reload() and reader.get(2).recalls == 1
    assert zoo.trained_only_on("cam1") == [2] and zoo.remove([2]) == [2]
    assert not (tmp_path / "vision" / "spec-v2.pt").exists()
    # an entry whose head has other classes or another size is refused and counted
    save_head(tmp_path / "vision" / "spec-v3.pt", ClassifierHead(4, ["x", "y"]), HeadMeta(["x", "y"], 4, version=3))
    with pytest.raises(ZooError):
        zoo.open_head(3, classes=["a", "b"])
    assert zoo.refused == 1
    (tmp_path / "vision" / "spec-v1.pt").write_bytes(b"garbage")
    with pytest.raises(ZooError):
        zoo.open_head(1)
    # a corrupt index is moved aside with a log line that names it; the zoo starts empty
    (tmp_path / "vision" / "index.npz").write_bytes(b"not a zoo")
    with caplog.at_level(logging.WARNING):
        broken = SpecialistZoo(tmp_path, "vision", dim=4, prototypes=2)
    assert len(broken) == 0 and "index.npz" in caplog.text
    with pytest.raises(ZooError, match="8-d zoo"):
        broken_dim = SpecialistZoo(tmp_path / "other", "vision", dim=8)
        broken_dim.add(*_head(["a"]), np.ones((2, 4)), ["cam"])


def test_quantized_zoo_keys_score_like_float_keys_and_an_older_float_index_still_loads(tmp_path) -> None:
    from remembrall.learning.archive import pack
    from remembrall.learning.vectors import unit_rows
    from remembrall.learning.zoo import FORMAT, FORMAT_VERSION, SCORE_CHUNK, scene_key

    rng = np.random.default_rng(5)
    dim, n = 64, SCORE_CHUNK + 7  # more specialists than one scoring chunk
    zoo = SpecialistZoo(tmp_path, "vision", dim=dim, prototypes=4)
    scenes = rng.normal(size=(n, dim)).astype(np.float32)
    for v in range(n):
        zoo.add(*_head(["a", "b"], dim=dim, version=v + 1), scenes[v] + 0.3 * rng.normal(size=(24, dim)), ["cam"],
                save=False)
    zoo.save()
    assert zoo.codes.dtype == np.int8 and zoo.index_bytes == n * 4 * (dim + 4)
    recent = scenes[n - 1] + 0.3 * rng.normal(size=(16, dim))
    keys = np.stack([zoo.key_of(v) for v in zoo.versions()])
    exact = (unit_rows(recent) @ keys.reshape(-1, dim).T).reshape(16, n, 4).max(2).mean(0)
    assert np.abs(zoo.scores(recent) - exact).max() < 1e-4  # chunked scoring = one product over all keys
    float_keys = np.stack([scene_key(scenes[v] + 0.3 * rng.normal(size=(24, dim)), 4) for v in range(n)])
    zoo_of_floats = SpecialistZoo(tmp_path / "f", "vision", dim=dim, prototypes=4)
    zoo_of_floats.dir.mkdir(parents=True)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "modality": "vision", "dim": dim,
            "entries": [{"version": v + 1, "file": f"spec-v{v + 1}.pt", "classes": ["a", "b"]} for v in range(n)]}
    zoo_of_floats.index_path.write_bytes(pack(meta, {"keys": float_keys}))
    assert zoo_of_floats.reload()
    float_scores = (unit_rows(recent) @ float_keys.reshape(-1, dim).T).reshape(16, n, 4).max(2).mean(0)
    assert np.abs(zoo_of_floats.scores(recent) - float_scores).max() < 0.01  # int8 keys move a cosine < 0.01
    assert zoo_of_floats.match(recent)[0][0] == n
