"""Does a head adapted to one scene of the recurring stream lose on the others? The measurement
behind the recurring streams' choice of scenes (bench/CONTINUAL.md, "Recurring stream").

For every scene, ``--train`` + ``--test`` items are drawn the way the stream draws them (the
scene's class or topic mix, its transform or style, no item twice) and embedded with the
pipeline's frozen encoder (EfficientNet-Lite0 at the benchmark's size; MiniLM at its token
limit). A linear head (``fit_head``, what fit-base trains) is fitted on each scene's training
items and scored on every scene's test items; a joint head on all scenes' training items at
once shows what one head could hold if every scene's labels were at hand together.

    python -m bench.scene_conflict image|text [--train 150] [--test 300] [--seed 0] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, print_table, write_json


@dataclass
class SceneData:
    """One scene's embedded items: training and test split."""

    name: str
    x_train: np.ndarray
    y_train: list[str]
    x_test: np.ndarray
    y_test: list[str]


def _steps(n: int) -> int:
    """fit-base's training length for ``n`` items (about 60 passes, 200..2000 steps)."""
    return int(np.clip(60 * n / 128, 200, 2000))


def conflict(scenes: list[SceneData], classes: list[str], seed: int = 0) -> dict[str, Any]:
    """Accuracy of each scene's head on every scene (``matrix[train][test]``) and of a joint head.

    ``own``: mean of the diagonal (a head on its own scene); ``other``: mean off the diagonal (a
    head adapted to one scene, on another); ``joint``: the joint head, mean over scenes.
    """
    from remembrall.learning.trainer import accuracy, fit_head

    heads = [fit_head(s.x_train, s.y_train, classes=classes, steps=_steps(len(s.y_train)), seed=seed) for s in scenes]
    xj = np.concatenate([s.x_train for s in scenes])
    yj = [y for s in scenes for y in s.y_train]
    joint = fit_head(xj, yj, classes=classes, steps=_steps(len(yj)), seed=seed)
    matrix = [[round(accuracy(h, t.x_test, t.y_test), 4) for t in scenes] for h in heads]
    k = len(scenes)
    own = sum(matrix[i][i] for i in range(k)) / k
    other = (sum(map(sum, matrix)) - own * k) / (k * k - k) if k > 1 else None
    joint_acc = [round(accuracy(joint, s.x_test, s.y_test), 4) for s in scenes]
    return {"scenes": [s.name for s in scenes], "matrix": matrix, "joint": joint_acc, "own": round(own, 4),
            "other": round(other, 4) if other is not None else None,
            "joint_mean": round(sum(joint_acc) / k, 4),
            "train_per_scene": len(scenes[0].y_train), "test_per_scene": len(scenes[0].y_test)}


def image_scenes(n_train: int, n_test: int, seed: int) -> tuple[list[SceneData], list[str]]:
    """The recurring Fashion-MNIST scenes, rendered and embedded like the pipeline does."""
    from bench.continual import CONFIG
    from bench.drift_stream import CLASSES, RECURRING_SCENES, ImagePool, scene_priors
    from remembrall.config import load_config
    from remembrall.models.backbone import VisionBackbone

    cfg = load_config(str(CONFIG))
    size = cfg.decode.width or 96
    encoder = VisionBackbone("cpu", "no", cfg.infer.image_size, 0)
    pool = ImagePool(seed)
    out = []
    for scene in RECURRING_SCENES:
        frames, classes = pool.frames(scene_priors(scene), scene.transform, n_train + n_test, size)
        x = np.concatenate([encoder.embed(frames[i:i + 64]).cpu().numpy() for i in range(0, len(frames), 64)])
        y = [CLASSES[int(c)] for c in classes]
        out.append(SceneData(f"{scene.id} {scene.title}", x[:n_train], y[:n_train], x[n_train:], y[n_train:]))
    return out, list(CLASSES)


def text_scenes(n_train: int, n_test: int, seed: int) -> tuple[list[SceneData], list[str]]:
    """The recurring BBC News scenes, styled and embedded like the text pipeline does."""
    from bench.text import CONFIG
    from bench.text_stream import RECURRING_SCENES, TOPICS, ArticlePool, quota, style_text
    from remembrall.config import load_config
    from remembrall.models.text_encoder import TextEncoder

    cfg = load_config(str(CONFIG))
    encoder = TextEncoder("cpu", cfg.text.max_tokens, cfg.text.batch_size, 0)
    pool = ArticlePool(seed)
    out = []
    for scene in RECURRING_SCENES:
        arts = pool.take(quota(dict(scene.priors), n_train + n_test), scene.id)
        x = encoder.embed([style_text(a.text, scene.style, pool.rng) for a in arts])
        y = [a.topic for a in arts]
        out.append(SceneData(f"{scene.id} {scene.title}", x[:n_train], y[:n_train], x[n_train:], y[n_train:]))
    return out, list(TOPICS)


def print_conflict(res: dict[str, Any]) -> None:
    names = res["scenes"]
    rows = [[f"head of {n}", *row] for n, row in zip(names, res["matrix"], strict=True)]
    rows.append(["joint head", *res["joint"]])
    print_table(rows, ["accuracy on →", *names])
    print(f"own scene {res['own']:.3f}, another scene {res['other']:.3f}, joint head {res['joint_mean']:.3f} "
          f"({res['train_per_scene']} training / {res['test_per_scene']} test items per scene)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("modality", choices=["image", "text"])
    p.add_argument("--train", type=int, default=150, help="training items per scene (about 3 visits' labels)")
    p.add_argument("--test", type=int, help="test items per scene (default: image 300, text 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    build = image_scenes if args.modality == "image" else text_scenes
    try:
        scenes, classes = build(args.train, args.test or (300 if args.modality == "image" else 120), args.seed)
    except (RuntimeError, ValueError) as exc:
        print(f"scene_conflict: {exc}", file=sys.stderr)
        return 2
    res = conflict(scenes, classes, args.seed)
    res.update(modality=args.modality, seed=args.seed, seconds=round(time.perf_counter() - t0, 1), machine=machine())
    print_conflict(res)
    if args.json:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
