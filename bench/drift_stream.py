"""A drifting, labelled image stream built from Fashion-MNIST, written as PNG frames + a manifest.

The continual-learning benchmark needs a stream whose scene changes the way a camera's does: the
mix of classes shifts and so does the appearance (lighting inverted, objects rotated, out of
focus, sensor noise, coloured backgrounds, objects far away). Each segment draws its own class
priors and applies one appearance transform; everything is seeded, so a stream is reproducible.

Two kinds of stream: ``drifting`` (:func:`build_stream`: every segment a new scene) and
``recurring`` (:func:`build_recurring_stream`: a few scenes, each a fixed transform and class mix,
that come back in turn, A B C D A B C D …: what a memory of past scenes is for). Neither shows
an image twice.

Output folder::

    manifest.jsonl     {"image": "frames/000000.png", "label": "Coat", "id": "000000"} per frame
    segments.json      kind; per segment: name, scene, visit, transform, [start, end), class priors
    frames/*.png       RGB frames (``size`` x ``size``)

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` (IDX files, gzip) and is read with
numpy alone::

    python -m bench.drift_stream OUT_DIR [--size 96] [--frames-per-segment 700] [--seed 0] [--recurring ABCD…]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import recurring_schedule as common_schedule
from remembrall.atomic import atomic_write_bytes

FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]

#: The default drift schedule: (segment name, appearance transform). The first is clean: the base
#: head is trained on it. ``invert_colour`` and a return to ``clean`` are available for longer runs.
SCHEDULE = [
    ("clean", "clean"),
    ("inverted", "invert"),
    ("rotated", "rotate"),
    ("blurred+noisy", "blur_noise"),
    ("coloured background", "colour"),
    ("far away", "scale"),
]
TRANSFORMS = {"clean", "invert", "rotate", "blur_noise", "colour", "scale", "invert_colour"}


@dataclass(frozen=True)
class Scene:
    """A scene of the recurring stream: the same transform and class mix on every visit, so a
    return is a return (a model that kept the scene should be right at once)."""

    id: str
    title: str
    transform: str
    favoured: tuple[str, ...]  # classes that make up FAVOURED_MASS of the scene's items


#: The recurring stream's scenes. Transforms and favoured classes both differ: a head adapted to
#: one scene loses 40–60 points on the others (bench/scene_conflict.py; bench/CONTINUAL.md), and
#: favoured classes are look-alikes across scenes (shirt / T-shirt / pullover / coat, sneaker /
#: sandal / ankle boot), so what one scene teaches misleads another.
RECURRING_SCENES = (
    Scene("A", "clean", "clean", ("Shirt", "Pullover", "Sneaker")),
    Scene("B", "rotated", "rotate", ("T-shirt/top", "Coat", "Sandal")),
    Scene("C", "coloured background", "colour", ("Dress", "Shirt", "Ankle boot")),
    Scene("D", "far away", "scale", ("Pullover", "T-shirt/top", "Bag")),
)
FAVOURED_MASS = 0.8
#: Visit order of the full recurring stream (scene ids) and of its --smoke version.
RECURRING_ORDER = "ABCDABCDABCD"
SMOKE_RECURRING_ORDER = "ABAB"


class DatasetMissing(RuntimeError):
    """Fashion-MNIST is not installed where we look."""


@dataclass
class Segment:
    name: str
    transform: str
    start: int
    end: int
    priors: list[float]
    scene: str = ""  # scene id; a drifting stream's segments are each their own scene
    visit: int = 1  # 1 on a scene's first appearance, 2 on its first return, ...


# ------------------------------------------------------------------------------------- reading
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array; checks the header against the size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: cannot read IDX file: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic {data[:4].hex()})")
    ndim = data[3]
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX body has {body.size} bytes, header says {shape}")
    return body.reshape(shape)


def load_fashion_mnist(root: Path = FASHION_DIR, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images N×28×28 uint8, labels N int)`` of one split (``train`` or ``t10k``)."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}[split]
    files = [root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"]
    for f in files:
        if not f.is_file() and not f.with_suffix("").is_file():
            raise DatasetMissing(f"{f} not found: install Fashion-MNIST with "
                                 "`apt-get install dataset-fashion-mnist` (or set FASHION_MNIST_DIR)")
    images, labels = (read_idx(f if f.is_file() else f.with_suffix("")) for f in files)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    if labels.max(initial=0) >= len(CLASSES):
        raise ValueError(f"{root}: label {labels.max()} out of range for {len(CLASSES)} classes")
    return images, labels.astype(np.int64)


# ------------------------------------------------------------------------------------- writing
def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an H×W×3 uint8 array as a PNG (8-bit RGB, no filtering); stdlib only."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected H×W×3 uint8, got {rgb.dtype} {rgb.shape}")
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------- rendering
def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(round(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _affine(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate by ``angle`` (radians), shrink by ``scale`` (<1 = smaller) and shift (in [-1, 1] units)."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, -shift[:, 0] / scale], 1),
                         torch.stack([sin, cos, -shift[:, 1] / scale], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def render(images: np.ndarray, transform: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """28×28 grey garments → ``size``×``size`` RGB frames under one appearance transform."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; known: {sorted(TRANSFORMS)}")
    n = len(images)
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    if transform == "rotate":
        sign = torch.as_tensor(rng.choice([-1.0, 1.0], n), dtype=torch.float32)
        angle = sign * torch.as_tensor(rng.uniform(np.pi / 3, np.pi * 2 / 3, n), dtype=torch.float32)
        x = _affine(x, angle, torch.ones(n), torch.zeros(n, 2))
    elif transform == "scale":
        scale = torch.as_tensor(rng.uniform(0.4, 0.55, n), dtype=torch.float32)
        room = (1 - scale).unsqueeze(1).numpy()
        shift = torch.as_tensor(rng.uniform(-1, 1, (n, 2)) * room, dtype=torch.float32)
        x = _affine(x, torch.zeros(n), scale, shift)
    elif transform == "blur_noise":
        k = _gaussian_kernel(size / 28 * 1.0)
        pad = len(k) // 2
        x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="replicate"), k.view(1, 1, -1, 1))
        x = x + torch.as_tensor(rng.normal(0, 0.12, x.shape), dtype=torch.float32)
    alpha = x.clamp(0, 1)  # garment coverage
    if transform in ("invert", "invert_colour"):
        alpha = 1 - alpha if transform == "invert" else alpha
    rgb = alpha.expand(n, 3, size, size)
    if transform in ("colour", "invert_colour"):
        bg = torch.as_tensor(rng.uniform(0.15, 1.0, (n, 3, 1, 1)), dtype=torch.float32)
        fg = torch.as_tensor(rng.uniform(0.0, 1.0, (n, 3, 1, 1)), dtype=torch.float32)
        if transform == "invert_colour":  # a dark garment on a bright coloured background
            fg = fg * 0.35
            bg = 0.55 + 0.45 * bg
        rgb = bg * (1 - alpha) + fg * alpha
    out = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return out


def segment_priors(rng: np.random.Generator, index: int, n_classes: int) -> np.ndarray:
    """Class mix of a segment: the first is uniform; later ones favour a random handful of classes."""
    if index == 0:
        return np.full(n_classes, 1.0 / n_classes)
    favoured = rng.choice(n_classes, size=int(rng.integers(3, 6)), replace=False)
    p = np.full(n_classes, 0.02)
    p[favoured] = rng.dirichlet(np.full(len(favoured), 4.0)) * (1 - 0.02 * (n_classes - len(favoured)))
    return p / p.sum()


def scene_priors(scene: Scene) -> np.ndarray:
    """Class mix of a recurring scene: FAVOURED_MASS on its favoured classes, the rest spread evenly
    (every class still turns up, so a scene never teaches that a class is gone)."""
    favoured = [CLASSES.index(c) for c in scene.favoured]
    p = np.full(len(CLASSES), (1 - FAVOURED_MASS) / (len(CLASSES) - len(favoured)))
    p[favoured] = FAVOURED_MASS / len(favoured)
    return p


def recurring_schedule(order: str, scenes: tuple[Scene, ...] = RECURRING_SCENES) -> list[tuple[Scene, int]]:
    """``(scene, visit)`` per segment for a visit order of this stream's scene ids."""
    return common_schedule(order, scenes)


class ImagePool:
    """Fashion-MNIST training images drawn without replacement (per class, seeded): one pool per
    stream, so no image appears twice in it."""

    def __init__(self, seed: int, root: Path = FASHION_DIR) -> None:
        self.images, labels = load_fashion_mnist(root, "train")
        self.rng = np.random.default_rng(seed)
        self.by_class = [self.rng.permutation(np.flatnonzero(labels == c)).tolist() for c in range(len(CLASSES))]

    def frames(self, priors: np.ndarray, transform: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` frames (N×size×size×3) of classes drawn from ``priors`` under ``transform``, and their classes."""
        classes = self.rng.choice(len(CLASSES), size=n, p=priors)
        picks = []
        for c in classes:
            if not self.by_class[c]:
                raise ValueError(f"stream too long: class {CLASSES[c]} has no unused image left")
            picks.append(self.by_class[c].pop())
        return render(self.images[picks], transform, size, self.rng), classes


class _Writer:
    """Writes a stream's frames and manifest lines, segment by segment, from one :class:`ImagePool`."""

    def __init__(self, out: Path, size: int, seed: int, root: Path) -> None:
        if not 16 <= size <= 512:
            raise ValueError(f"size must be 16..512 pixels, got {size}")
        self.pool = ImagePool(seed, root)
        self.rng = self.pool.rng
        self.out, self.size = out, size
        (out / "frames").mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []

    def segment(self, priors: np.ndarray, transform: str, n: int) -> tuple[int, int]:
        """Write one segment of ``n`` frames; its ``[start, end)``."""
        frames, classes = self.pool.frames(priors, transform, n, self.size)
        start = len(self.lines)
        for j, (frame, c) in enumerate(zip(frames, classes, strict=True)):
            idx = start + j
            (self.out / "frames" / f"{idx:06d}.png").write_bytes(png_bytes(frame))
            self.lines.append(json.dumps({"image": f"frames/{idx:06d}.png", "label": CLASSES[int(c)],
                                          "id": f"{idx:06d}"}))
        return start, len(self.lines)

    def finish(self, kind: str, seed: int, segments: list[Segment], **extra: Any) -> dict:
        info = {"kind": kind, "classes": CLASSES, "size": self.size, "seed": seed, "frames": len(self.lines),
                "segments": [asdict(s) for s in segments], **extra}
        atomic_write_bytes(self.out / "manifest.jsonl", ("\n".join(self.lines) + "\n").encode())
        atomic_write_bytes(self.out / "segments.json", json.dumps(info, indent=1).encode())
        return info


def build_stream(out: Path, *, size: int = 96, frames_per_segment: int = 700, seed: int = 0,
                 schedule: list[tuple[str, str]] | None = None, root: Path = FASHION_DIR) -> dict:
    """Write a drifting stream's frames, ``manifest.jsonl`` and ``segments.json`` under ``out``;
    returns the segment info.

    Images are drawn without replacement from the Fashion-MNIST training split, so no frame is
    seen twice.
    """
    schedule = schedule or SCHEDULE
    if frames_per_segment < 1:
        raise ValueError("frames_per_segment must be >= 1")
    w = _Writer(out, size, seed, root)
    segments: list[Segment] = []
    for s_i, (name, transform) in enumerate(schedule):
        priors = segment_priors(w.rng, s_i, len(CLASSES))
        start, end = w.segment(priors, transform, frames_per_segment)
        segments.append(Segment(name, transform, start, end, [round(float(p), 4) for p in priors], scene=name))
    return w.finish("drifting", seed, segments)


def build_recurring_stream(out: Path, *, size: int = 96, frames_per_segment: int = 500, seed: int = 0,
                           order: str = RECURRING_ORDER, scenes: tuple[Scene, ...] = RECURRING_SCENES,
                           root: Path = FASHION_DIR) -> dict:
    """Write a recurring stream (scenes visited in ``order``, e.g. ``"ABCDABCD"``) like
    :func:`build_stream`; segment names read ``"<id> <title> #<visit>"``. A return brings the
    scene's transform and class mix back, never an image already shown."""
    if frames_per_segment < 1:
        raise ValueError("frames_per_segment must be >= 1")
    plan = recurring_schedule(order, scenes)
    w = _Writer(out, size, seed, root)
    segments: list[Segment] = []
    for scene, visit in plan:
        priors = scene_priors(scene)
        start, end = w.segment(priors, scene.transform, frames_per_segment)
        segments.append(Segment(f"{scene.id} {scene.title} #{visit}", scene.transform, start, end,
                                [round(float(p), 4) for p in priors], scene=scene.id, visit=visit))
    return w.finish("recurring", seed, segments, scenes=[asdict(s) for s in scenes if s.id in order])


def write_manifest_slice(manifest: Path, out: Path, start: int, end: int) -> int:
    """Write lines ``[start, end)`` of a manifest to ``out`` with image paths made absolute."""
    base = manifest.resolve().parent
    lines = []
    with manifest.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if start <= i < end and line.strip():
                item = json.loads(line)
                item["image"] = str(base / item["image"])
                lines.append(json.dumps(item))
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--frames-per-segment", type=int, default=700)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recurring", metavar="ORDER", help=f"a recurring stream in this scene order (e.g. {RECURRING_ORDER})")
    args = p.parse_args(argv)
    try:
        if args.recurring:
            info = build_recurring_stream(args.out, size=args.size, frames_per_segment=args.frames_per_segment,
                                          seed=args.seed, order=args.recurring)
        else:
            info = build_stream(args.out, size=args.size, frames_per_segment=args.frames_per_segment, seed=args.seed)
    except (DatasetMissing, ValueError) as exc:
        print(f"drift_stream: {exc}", file=sys.stderr)
        return 2
    for s in info["segments"]:
        print(f"{s['start']:6d}-{s['end']:6d}  {s['name']}")
    print(f"{info['frames']} frames in {args.out / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
