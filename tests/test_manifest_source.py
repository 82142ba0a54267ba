"""Labelled sources: JSONL manifests of images and per-frame sidecar labels for videos."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest

from remembrall.config import SourceConfig
from remembrall.io.errors import SourceError
from remembrall.io.frames import CountingStats, VideoFrame
from remembrall.io.video import open_source


def write_image(path: Path, rgb: np.ndarray) -> Path:
    """Encode a real png/jpg with PyAV (FFmpeg's image2 muxer)."""
    codec, pix = ("mjpeg", "yuvj420p") if path.suffix.lower() in (".jpg", ".jpeg") else ("png", "rgb24")
    with av.open(str(path), "w", format="image2", options={"update": "1"}) as c:
        s = c.add_stream(codec, rate=1)
        s.width, s.height = rgb.shape[1], rgb.shape[0]
        s.pix_fmt = pix
        for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def solid(color: tuple[int, int, int], h: int = 40, w: int = 60) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = color
    return img


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_manifest_good_and_bad_lines(tmp_path: Path, caplog) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    write_image(imgs / "red.png", solid((250, 0, 0)))
    write_image(imgs / "green.jpg", solid((0, 250, 0), 50, 70))
    blue = write_image(tmp_path / "blue.png", solid((0, 0, 250)))
    (imgs / "fake.png").write_text("not an image")
    manifest = write_jsonl(tmp_path / "set.jsonl", [
        {"image": "imgs/red.png", "label": "red", "id": "a1", "ts": 0.5},   # 1
        "{not json",                                                        # 2
        {"label": "orphan"},                                                # 3 no image
        {"image": "imgs/missing.png", "label": "x"},                        # 4 not found
        "",                                                                 # 5 blank: ignored
        {"image": "imgs/fake.png", "label": "x"},                           # 6 unreadable
        {"image": "imgs/green.jpg", "label": 7},                            # 7 int label ok
        {"image": "imgs/red.png", "label": {"nested": 1}},                  # 8 bad label
        [1, 2],                                                             # 9 not an object
        {"image": str(blue), "label": "blue", "id": 42},                    # 10 absolute path
        {"image": "imgs/red.png"},                                          # 11 unlabelled
    ])
    stats = CountingStats()
    caplog.set_level(logging.WARNING, logger="remembrall.io.manifest")
    src = open_source(SourceConfig(uri=str(manifest)), 32, 24, stats=stats)
    assert src.live is False
    frames: list[VideoFrame] = list(src)
    assert [(f.label, f.id) for f in frames] == [("red", "a1"), ("7", None), ("blue", "42"), (None, None)]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert frames[0].pts == 0.5 and frames[1].pts is None
    for f in frames:
        assert f.image.shape == (24, 32, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
    means = [f.image.reshape(-1, 3).mean(0) for f in frames[:3]]
    assert [int(np.argmax(m)) for m in means] == [0, 1, 2]  # real pixels: red, green, blue
    assert stats.errors == 6
    msgs = [r.getMessage() for r in caplog.records]
    for lineno in (2, 3, 4, 6, 8, 9):
        assert any(f"set.jsonl:{lineno}: skipped" in m for m in msgs), lineno
    assert any("not found" in m for m in msgs) and any("unreadable image" in m for m in msgs)
    assert any("6 bad line(s) skipped, 4 item(s) read" in m for m in msgs)


def test_manifest_native_size_and_loop(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", solid((10, 20, 30), 30, 50))
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "label": "a"}] * 3)
    frames = list(open_source(SourceConfig(uri=manifest.as_uri(), loop=2), None, None))
    assert len(frames) == 6 and [f.index for f in frames] == list(range(6))
    assert frames[0].image.shape == (30, 50, 3)
    assert np.abs(frames[0].image.astype(int) - [10, 20, 30]).max() <= 2  # png is lossless


def test_manifest_errors_at_open(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(SourceConfig(uri=str(tmp_path / "none.jsonl")), None, None)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(SourceError, match="binary"):
        open_source(SourceConfig(uri=str(binary)), None, None)


def test_manifest_with_nothing_usable_ends_cleanly(tmp_path: Path, caplog) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", ["garbage"] * 30)
    stats = CountingStats()
    caplog.set_level(logging.WARNING, logger="remembrall.io.manifest")
    assert list(open_source(SourceConfig(uri=str(manifest), loop=0), None, None, stats=stats)) == []
    assert stats.errors == 30
    per_line = [r for r in caplog.records if ": skipped:" in r.getMessage()]
    assert len(per_line) == 20  # the first ones individually, then only the summary
    assert any("no usable item" in r.getMessage() for r in caplog.records)


def test_sidecar_labels_by_frame_and_pts(tmp_path: Path, make_video) -> None:
    video = make_video(tmp_path / "clip.mp4", frames=20, fps=25)
    write_jsonl(tmp_path / "clip.mp4.labels.jsonl", [
        {"frame": 0, "label": "car", "id": "c0"},
        {"frame": 3, "label": "bus"},
        {"pts": 0.4, "label": "person"},  # frame 10
        "oops",
        {"frame": -1, "label": "bad"},
        {"label": "no position"},
    ])
    stats = CountingStats()
    frames = list(open_source(SourceConfig(uri=str(video), loop=2), 16, 16, stats=stats))
    assert len(frames) == 40
    labelled = {f.index: (f.label, f.id) for f in frames if f.label is not None}
    assert labelled == {0: ("car", "c0"), 3: ("bus", None), 10: ("person", None),
                        20: ("car", "c0"), 23: ("bus", None), 30: ("person", None)}  # per play
    assert stats.errors == 3


def test_sidecar_configured_path_and_stem_default(tmp_path: Path, make_video) -> None:
    video = make_video(tmp_path / "clip.mp4", frames=8)
    write_jsonl(tmp_path / "clip.labels.jsonl", [{"frame": 1, "label": "stem"}])
    assert [f.label for f in open_source(SourceConfig(uri=str(video)), 16, 16)][:2] == [None, "stem"]
    other = write_jsonl(tmp_path / "other.jsonl", [{"frame": 2, "label": "configured"}])
    frames = list(open_source(SourceConfig(uri=str(video), labels=str(other)), 16, 16))
    assert [f.label for f in frames][:3] == [None, None, "configured"]
    with pytest.raises(SourceError, match="labels file .* not found"):
        open_source(SourceConfig(uri=str(video), labels=str(tmp_path / "nope.jsonl")), 16, 16)
