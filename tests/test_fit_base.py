"""``remembrall fit-base``: real images, the real backbone, a real trained and reloaded head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.drift_stream import png_bytes
from remembrall.cli import main
from remembrall.commands.fit_base import split_holdout
from remembrall.models.heads import load_head

CONFIG = """\
sources:
  - id: cam
    uri: unused.jsonl
decode: {width: 32, height: 32}
infer: {image_size: 32, head: %(head)s, device: cpu, threads: 1}
label: {classes: %(classes)s}
out: %(out)s
"""


def _image(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Three visually distinct kinds of frame, each with random clutter."""
    img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
    if kind == "stripes":
        img[::4] = 230
    elif kind == "disc":
        yy, xx = np.mgrid[:32, :32]
        img[(yy - 16) ** 2 + (xx - 16) ** 2 < 90] = (40, 200, 90)
    else:  # "corner"
        img[:12, :12] = (250, 40, 40)
    return img


def _manifest(tmp_path: Path, per_class: int, kinds: tuple[str, ...] = ("stripes", "disc", "corner"),
              extra_lines: list[str] | None = None, label: bool = True) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir(exist_ok=True)
    lines = []
    for i in range(per_class):
        for kind in kinds:
            name = f"img/{kind}-{i}.png"
            (tmp_path / name).write_bytes(png_bytes(_image(kind, rng)))
            item = {"image": name, "id": f"{kind}-{i}"}
            if label:
                item["label"] = kind
            lines.append(json.dumps(item))
    lines += extra_lines or []
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path: Path, head: str = "imagenet", classes: list[str] | None = None) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG % {"head": head, "classes": json.dumps(classes or []), "out": tmp_path / "out"})
    return cfg


def test_fit_base_trains_reports_and_saves_a_servable_head(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest(tmp_path, 10, extra_lines=['{"image": "img/missing.png", "label": "disc"}', "not json"])
    out = tmp_path / "heads" / "base.pt"
    out.parent.mkdir()
    out.write_bytes(b"an older head that must be replaced whole")
    rc = main(["fit-base", str(_config(tmp_path)), "--source", str(manifest), "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "30 labelled frames (2 skipped), 3 classes" in text
    head, meta = load_head(out)
    assert meta.kind == "base" and meta.classes == ["corner", "disc", "stripes"] and meta.in_dim == 1280
    assert meta.extra["holdout"] == 6 and meta.extra["train"] == 24 and meta.extra["image_size"] == 32
    assert meta.val_accuracy is not None and meta.val_accuracy >= 0.8  # these classes are easy
    assert f"held-out accuracy {meta.val_accuracy:.3f} on 6" in text
    assert [p.name for p in out.parent.iterdir()] == ["base.pt"]  # no temp file left behind


def test_fit_base_writes_to_infer_head_and_checks_class_list(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest(tmp_path, 3, kinds=("stripes", "disc"))
    target = tmp_path / "from-config.pt"
    # the configured class list fixes the head's class order, even for a class with no example
    cfg = _config(tmp_path, head=str(target), classes=["disc", "stripes", "corner"])
    assert main(["fit-base", str(cfg), "--source", str(manifest)]) == 0
    assert load_head(target)[1].classes == ["disc", "stripes", "corner"]
    assert "n/a (too few examples per class)" in capsys.readouterr().out  # 3 per class: nothing held out
    # a label outside label.classes is an error that names it
    cfg = _config(tmp_path, head=str(target), classes=["disc", "corner"])
    assert main(["fit-base", str(cfg), "--source", str(manifest)]) == 2
    assert "['stripes'] are not in label.classes" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["unlabelled", "one_class", "no_output", "missing_source"])
def test_fit_base_refuses_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    cfg = _config(tmp_path)
    out = tmp_path / "h.pt"
    if case == "unlabelled":
        args = ["--source", str(_manifest(tmp_path, 2, label=False)), "--output", str(out)]
        want = "no labelled frame (6 unlabelled"
    elif case == "one_class":
        args = ["--source", str(_manifest(tmp_path, 2, kinds=("disc",))), "--output", str(out)]
        want = "only one class ('disc')"
    elif case == "no_output":
        args = ["--source", str(_manifest(tmp_path, 1))]
        want = "give --output PATH"
    else:
        args = ["--source", str(tmp_path / "nope.jsonl"), "--output", str(out)]
        want = "nope.jsonl"
    rc = main(["fit-base", str(cfg), *args])
    captured = capsys.readouterr()
    assert rc == 2
    assert want in captured.out + captured.err
    assert not out.exists()


def test_split_holdout_is_stratified_and_seeded() -> None:
    labels = ["a"] * 50 + ["b"] * 20 + ["c"] * 4
    tr, ho = split_holdout(labels, 0.2, seed=1)
    assert sorted(tr.tolist() + ho.tolist()) == list(range(74))
    held = [labels[i] for i in ho]
    assert held.count("a") == 10 and held.count("b") == 4 and held.count("c") == 0  # too few c to hold out
    tr2, ho2 = split_holdout(labels, 0.2, seed=1)
    assert ho.tolist() == ho2.tolist()
    assert split_holdout(labels, 0.2, seed=2)[1].tolist() != ho.tolist()


def test_fit_base_trains_a_text_head_from_labelled_lines(tmp_path):
    """Text sources get a base head too: MiniLM embeddings, the same training, infer.text_head."""
    import json
    import subprocess
    import sys

    from remembrall.models.heads import load_head

    lines = []
    for i in range(24):
        lines.append({"text": f"the striker scored a late goal in match {i} of the league", "label": "sport"})
        lines.append({"text": f"shares fell as the central bank raised rates, report {i}", "label": "business"})
    src = tmp_path / "news.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json but plain text without a label\n")
    out = tmp_path / "text-base.pt"
    r = subprocess.run([sys.executable, "-m", "remembrall", "fit-base", "configs/text.yaml", "--source", str(src),
                        "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    head, meta = load_head(out)
    assert meta.in_dim == 384 and sorted(meta.classes) == ["business", "sport"]
    assert meta.extra["backbone"] == "all-MiniLM-L6-v2"
    assert meta.val_accuracy is not None and meta.val_accuracy >= 0.9
