"""``remembrall fit-base``: train the base head for the user's own classes from annotated footage.

A user's label set is not ImageNet's. Given a labelled source (a ``manifest.jsonl`` of
``{"image", "label"}`` lines, or a video with a sidecar of per-frame labels), this embeds every
labelled frame with the same backbone, decode size and image size the pipeline will use, trains a
:class:`~remembrall.models.heads.ClassifierHead` with the learning core's trainer
(:func:`~remembrall.learning.trainer.fit_head`) on a seeded split, reports held-out accuracy, and
writes the head atomically where ``--output`` or ``infer.head`` points. ``remembrall run`` then
serves it as the base head (``infer.head: PATH``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from remembrall.config import Config, ConfigError
from remembrall.io.errors import SourceError
from remembrall.models.heads import HeadMeta, save_head
from remembrall.models.modality import base_head_setting, open_modality

log = logging.getLogger(__name__)

#: Share of the labelled frames held out to measure the head (seeded, stratified by class).
HOLDOUT_FRACTION = 0.2
#: Below this many labelled frames per class nothing is held out for that class.
MIN_PER_CLASS_FOR_HOLDOUT = 5
EMBED_BATCH = 64


class FitBaseError(ValueError):
    """Input that cannot give a usable base head; the message says what to fix."""


def output_path(cfg: Config, output: str | None, modality: str = "vision") -> Path:
    """Where the head goes: ``--output``, else ``infer.head`` (``infer.text_head``) when a path."""
    if output:
        return Path(output).expanduser()
    key = base_head_setting(modality)
    value = getattr(cfg.infer, key.split(".", 1)[1])
    if value in ("imagenet", "none", ""):
        raise ConfigError(f"{key} is {value!r}, not a file: give --output PATH "
                          f"(and set {key} to that path to serve it)")
    return Path(value).expanduser()


def embed_labelled_text(cfg: Config, uri: str) -> tuple[np.ndarray, list[str], int]:
    """Embed every labelled record of a finite text source (JSON Lines with ``text`` and ``label``)
    with the encoder infer uses: ``(N×384 embeddings, labels, skipped records)``."""
    from remembrall.io.text import TextSourceError, open_text_source
    from remembrall.io.text.lines import TextStats

    src = copy.deepcopy(cfg.sources[0])
    src.uri, src.modality = uri, "text"
    tcfg = cfg.text
    stats = TextStats(tcfg.log_errors)
    try:
        source = open_text_source(src, tcfg, stats, lambda: False)
    except TextSourceError as exc:
        raise FitBaseError(f"cannot read {uri}: {exc}") from None
    if source.follows or source.live:
        source.close()
        raise FitBaseError(f"{uri} is a live text source; fit-base needs a finite labelled file")
    texts: list[str] = []
    labels: list[str] = []
    unlabelled = 0
    try:
        for item in source:
            if item.label is None:
                unlabelled += 1
                continue
            texts.append(item.text)
            labels.append(item.label)
    finally:
        source.close()
    if not labels:
        raise FitBaseError(f'{uri}: no labelled record ({unlabelled} unlabelled); a line is {{"text": ..., "label": NAME}}')
    encoder = open_modality("text", cfg)
    x = np.concatenate([encoder.embed(texts[i:i + EMBED_BATCH]).cpu().numpy()
                        for i in range(0, len(texts), EMBED_BATCH)])
    return x.astype(np.float32), labels, unlabelled + sum(stats.as_dict()["dropped"].values())


def embed_labelled_source(cfg: Config, uri: str) -> tuple[np.ndarray, list[str], int]:
    """Embed every labelled frame of ``uri``: ``(N×D embeddings, labels, skipped items)``.

    Frames are decoded and resized exactly as the decode stage does and embedded by the backbone
    infer uses, so the head sees at training time what it will see when served.
    """
    from remembrall.io.frames import CountingStats
    from remembrall.io.video import open_source

    src = copy.deepcopy(cfg.sources[0])
    src.uri = uri
    src.loop = 1  # one pass over the footage, even if the run config loops it
    stats = CountingStats()
    try:
        source = open_source(src, cfg.decode.width, cfg.decode.height, threads=cfg.decode.threads, stats=stats,
                             max_decode_errors=cfg.decode.max_decode_errors)
    except SourceError as exc:
        raise FitBaseError(f"cannot read {uri}: {exc}") from None
    if source.live:
        source.close()
        raise FitBaseError(f"{uri} is a live source; fit-base needs finite annotated footage "
                           "(a manifest.jsonl or a video with a sidecar labels file)")
    backbone = open_modality("vision", cfg)
    embeddings: list[np.ndarray] = []
    labels: list[str] = []
    unlabelled = 0
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            embeddings.append(backbone.embed(batch).cpu().numpy().astype(np.float32))
            batch.clear()

    try:
        for frame in source:
            if frame.label is None:
                unlabelled += 1
                continue
            if batch and batch[0].shape != frame.image.shape:
                flush()  # frames of another size (a manifest of mixed images without decode size)
            batch.append(frame.image)
            labels.append(frame.label)
            if len(batch) >= EMBED_BATCH:
                flush()
        flush()
    except SourceError as exc:
        raise FitBaseError(f"{uri}: reading failed: {exc}") from None
    finally:
        source.close()
    if not labels:
        raise FitBaseError(f"{uri}: no labelled frame ({unlabelled} unlabelled, {stats.errors} unreadable); "
                           'a manifest line is {"image": PATH, "label": NAME}')
    x = np.concatenate(embeddings)
    if not np.isfinite(x).all():
        raise FitBaseError(f"{uri}: the backbone produced non-finite embeddings")
    return x, labels, unlabelled + stats.errors


def split_holdout(labels: list[str], fraction: float = HOLDOUT_FRACTION, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, holdout)``: ``fraction`` of every class with enough examples, seeded."""
    rng = np.random.default_rng(seed)
    arr = np.array(labels, dtype=object)
    train: list[int] = []
    hold: list[int] = []
    for cls in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(arr == cls))
        k = int(round(len(idx) * fraction)) if len(idx) >= MIN_PER_CLASS_FOR_HOLDOUT else 0
        hold += idx[:k].tolist()
        train += idx[k:].tolist()
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(hold), dtype=np.int64)


def fit_base(cfg: Config, x: np.ndarray, labels: list[str], classes: list[str] | None = None,
             steps: int | None = None, seed: int = 0) -> tuple[Any, HeadMeta, dict[str, Any]]:
    """Train a base head on embeddings; returns ``(head, meta, report)``."""
    from remembrall.learning.trainer import accuracy, fit_head

    known = classes or sorted(set(labels))
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise FitBaseError(f"labels {unknown[:5]} are not in label.classes {known[:10]}; "
                           "fix the annotations or add the classes to label.classes")
    if len(set(labels)) < 2:
        raise FitBaseError(f"only one class ({labels[0]!r}) is labelled: a classifier needs at least two")
    tr, ho = split_holdout(labels, seed=seed)
    y = np.array(labels, dtype=object)
    # about 60 passes over small sets, at most 2,000 steps for large ones
    steps = steps or int(np.clip(60 * len(tr) / 128, 200, 2000))
    t0 = time.perf_counter()
    head = fit_head(x[tr], y[tr].tolist(), classes=known, steps=steps, seed=seed)
    seconds = time.perf_counter() - t0
    train_acc = accuracy(head, x[tr], y[tr].tolist())
    val_acc = accuracy(head, x[ho], y[ho].tolist()) if len(ho) else None
    counts = Counter(labels)
    report = {"frames": len(labels), "train": len(tr), "holdout": len(ho), "classes": len(known),
              "steps": steps, "train_accuracy": train_acc, "holdout_accuracy": val_acc,
              "train_seconds": round(seconds, 3), "per_class": dict(sorted(counts.items()))}
    meta = HeadMeta(classes=list(known), in_dim=int(x.shape[1]), version=0, kind="base", val_accuracy=val_acc,
                    created=time.time(),
                    extra={"source": "remembrall fit-base", "backbone": cfg.infer.backbone,
                           "image_size": cfg.infer.image_size,
                           "decode_size": [cfg.decode.width, cfg.decode.height],
                           "train": len(tr), "holdout": len(ho), "steps": steps})
    return head, meta, report


def fit_base_main(cfg: Config, args: argparse.Namespace) -> int:
    """CLI entry: ``remembrall fit-base CONFIG --source manifest.jsonl [--output PATH]``."""
    from remembrall.io.sources import detect_modality

    uri = getattr(args, "source", None) or cfg.sources[0].uri
    probe = copy.deepcopy(cfg.sources[0])
    probe.uri = uri
    modality = detect_modality(probe)
    out = output_path(cfg, getattr(args, "output", None), modality)
    classes = list(cfg.label.classes) or None
    try:
        t0 = time.perf_counter()
        embed = embed_labelled_text if modality == "text" else embed_labelled_source
        x, labels, skipped = embed(cfg, uri)
        embed_s = time.perf_counter() - t0
        head, meta, report = fit_base(cfg, x, labels, classes)
        meta.extra["source_uri"] = uri
        if modality == "text":
            meta.extra.update(backbone="all-MiniLM-L6-v2", image_size=None, decode_size=None)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_head(out, head, meta)
    except FitBaseError as exc:
        print(f"remembrall fit-base: {exc}")
        return 2
    val = report["holdout_accuracy"]
    print(f"fit-base: {report['frames']} labelled frames ({skipped} skipped), {report['classes']} classes, "
          f"embedded in {embed_s:.1f} s")
    print(f"  trained on {report['train']} for {report['steps']} steps in {report['train_seconds']:.1f} s: "
          f"train accuracy {report['train_accuracy']:.3f}, held-out accuracy "
          + (f"{val:.3f} on {report['holdout']}" if val is not None else "n/a (too few examples per class)"))
    print(f"  base head written to {out} (serve it with infer.head: {out})")
    return 0
