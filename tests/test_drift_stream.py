"""The drifting Fashion-MNIST stream: IDX reading, PNG writing, segments, determinism."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import av
import numpy as np
import pytest

from bench.drift_stream import (
    CLASSES,
    FASHION_DIR,
    DatasetMissing,
    build_stream,
    load_fashion_mnist,
    png_bytes,
    read_idx,
    render,
    write_manifest_slice,
)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture()
def fake_fashion(tmp_path: Path) -> Path:
    """A small Fashion-MNIST look-alike in the real file format: class c is a bar at height 2c."""
    root = tmp_path / "fm"
    root.mkdir()
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 40)
    images = np.zeros((len(labels), 28, 28), np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c + 3: 2 * c + 8, 4:24] = 200 + rng.integers(0, 55)
    _write_idx(root / "train-images-idx3-ubyte.gz", images)
    _write_idx(root / "train-labels-idx1-ubyte.gz", labels)
    return root


def _decode_png(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def test_png_roundtrip_through_ffmpeg(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 256, (20, 33, 3), dtype=np.uint8)
    (tmp_path / "x.png").write_bytes(png_bytes(img))
    assert np.array_equal(_decode_png(tmp_path / "x.png"), img)
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        png_bytes(img[..., 0])


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "good.gz"
    _write_idx(good, np.arange(12).reshape(3, 4))
    assert read_idx(good).tolist() == np.arange(12).reshape(3, 4).tolist()
    (tmp_path / "magic.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x01" + struct.pack(">I", 1) + b"\x00"))
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "magic.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x02" + struct.pack(">II", 3, 4) + b"\x00" * 5))
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "notgz.gz").write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match="cannot read"):
        read_idx(tmp_path / "notgz.gz")


def test_missing_dataset_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_transforms_change_appearance() -> None:
    rng = np.random.default_rng(0)
    img = np.zeros((4, 28, 28), np.uint8)
    img[:, 8:20, 8:20] = 255
    clean = render(img, "clean", 32, rng)
    assert clean.shape == (4, 32, 32, 3) and clean.dtype == np.uint8
    inverted = render(img, "invert", 32, rng)
    assert clean[:, 0, 0].max() == 0 and inverted[:, 0, 0].min() == 255  # background flips
    assert np.abs(render(img, "rotate", 32, rng).astype(int) - clean).mean() > 5
    small = render(img, "scale", 32, rng)
    assert (small > 0).mean() < 0.5 * (clean > 0).mean()  # the garment covers less of the frame
    coloured = render(img, "colour", 32, rng)
    assert (coloured[:, 0, 0] > 0).any(axis=1).all()  # backgrounds are no longer black
    with pytest.raises(ValueError, match="unknown transform"):
        render(img, "sepia", 32, rng)


def test_build_stream_writes_manifest_segments_and_is_seeded(fake_fashion: Path, tmp_path: Path) -> None:
    schedule = [("clean", "clean"), ("inverted", "invert"), ("coloured", "colour")]
    info = build_stream(tmp_path / "a", size=32, frames_per_segment=20, seed=3, schedule=schedule, root=fake_fashion)
    assert info["frames"] == 60
    assert [(s["start"], s["end"]) for s in info["segments"]] == [(0, 20), (20, 40), (40, 60)]
    assert info["segments"][0]["priors"] == [0.1] * 10  # the base segment sees every class
    lines = [json.loads(x) for x in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 60 and len({x["id"] for x in lines}) == 60
    assert all(x["label"] in CLASSES for x in lines)
    frame = _decode_png(tmp_path / "a" / lines[25]["image"])
    assert frame.shape == (32, 32, 3) and frame[0, 0].min() == 255  # an inverted frame: white background
    # the label matches the picture: fake class c is a bar at rows 2c+3..2c+8 (of 28)
    first = _decode_png(tmp_path / "a" / lines[0]["image"])
    rows = np.flatnonzero(first[..., 0].mean(axis=1) > 60) * 28 / 32
    c = CLASSES.index(lines[0]["label"])
    assert 2 * c + 1 <= rows.mean() <= 2 * c + 10
    again = build_stream(tmp_path / "b", size=32, frames_per_segment=20, seed=3, schedule=schedule, root=fake_fashion)
    assert again["segments"] == info["segments"]
    assert (tmp_path / "b" / "manifest.jsonl").read_text() == (tmp_path / "a" / "manifest.jsonl").read_text()
    assert (tmp_path / "b" / "frames" / "000033.png").read_bytes() == (tmp_path / "a" / "frames" / "000033.png").read_bytes()
    # slices for fit-base carry absolute image paths
    n = write_manifest_slice(tmp_path / "a" / "manifest.jsonl", tmp_path / "seg0.jsonl", 0, 20)
    sl = [json.loads(x) for x in (tmp_path / "seg0.jsonl").read_text().splitlines()]
    assert n == 20 and all(Path(x["image"]).is_absolute() and Path(x["image"]).is_file() for x in sl)


def test_stream_longer_than_the_dataset_is_refused(fake_fashion: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no unused image"):
        build_stream(tmp_path / "s", size=32, frames_per_segment=500, schedule=[("clean", "clean")], root=fake_fashion)


@pytest.mark.skipif(not (FASHION_DIR / "train-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_files() -> None:
    images, labels = load_fashion_mnist()
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert np.bincount(labels).tolist() == [6000] * 10
