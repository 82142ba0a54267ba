"""Does fine-tuning the backbone's last block pay where frozen features are the ceiling? Issue 9,
item 8: measured against the episodic memory on the drifting Fashion-MNIST stream.

The stream is the one ``bench.continual`` plays (same frames, size and seed). Every frame is
encoded once up to three cut points of EfficientNet-Lite0: before its last MBConv block, before
its head convolution (``_conv_head``, 320 → 1280, the network's last layer) and the pooled
embedding the pipeline uses. A prequential learner then walks the stream after the first
segment: it predicts every item, takes every 10th label (the pipeline's 10 % budget) and
retrains every 32 new labels, warm-started, on at most the newest 2,000 labels. Variants:

- ``head``: the specialized linear head alone (what retrain trains today);
- ``conv_head``: the head convolution and its batch norm (statistics frozen) trained with the head;
- ``last_block``: the last MBConv block, the head convolution and the head;
- each of them with the episodic memory blended in (``+memory``, ``learning/episodic.py``).

Reported per variant: mean accuracy, ``adaptation_accuracy`` (first 200 items of every segment
after the first) and the training seconds (the compute share a retrain stage would spend).

    python -m bench.finetune_tail --json OUT [--work DIR] [--steps 300] [--tail-lr 1e-4] [--smoke]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.common import machine, print_table, write_json

#: variant -> how many trailing backbone pieces train (0: head only, 1: head conv, 2: + last block)
DEPTHS = {"head": 0, "conv_head": 1, "last_block": 2}


def encode(frames: list[Path], image_size: int, batch: int = 64) -> dict[str, np.ndarray]:
    """The stream's frames at the three cut points (float16 feature maps, float32 embeddings)."""
    import torch.nn.functional as F
    from PIL import Image

    from remembrall.models.backbone import VisionBackbone

    net = VisionBackbone("cpu", "no", image_size, 0).net
    before_block, before_conv, emb = [], [], []
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            imgs = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in frames[i:i + batch]])
            x = torch.as_tensor(imgs).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
            x = ((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)
            x = net._swish(net._bn0(net._conv_stem(x)))
            for block in net._blocks[:-1]:
                x = block(x)
            before_block.append(x.half().numpy())
            x = net._blocks[-1](x)
            before_conv.append(x.half().numpy())
            emb.append(net._swish(net._bn1(net._conv_head(x))).mean((2, 3)).numpy())
    return {"before_block": np.concatenate(before_block), "before_conv": np.concatenate(before_conv),
            "emb": np.concatenate(emb)}


class Tail(nn.Module):
    """The trainable end of the backbone: head convolution (+ the last block at depth 2)."""

    def __init__(self, net: nn.Module, depth: int) -> None:
        super().__init__()
        self.block = copy.deepcopy(net._blocks[-1]) if depth == 2 else None
        self.conv = copy.deepcopy(net._conv_head)
        self.bn = copy.deepcopy(net._bn1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.block is not None:
            x = self.block(x)
        return nn.functional.relu6(self.bn(self.conv(x))).mean((2, 3))

    def train(self, mode: bool = True) -> Tail:
        super().train(mode)
        for m in self.modules():  # a few hundred labels cannot re-estimate ImageNet's BN statistics
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


class Learner:
    """One variant walking the stream: predict, take labels, retrain every ``every_labels``."""

    def __init__(self, feats: dict[str, np.ndarray], y: np.ndarray, classes: list[str], depth: int,
                 memory: bool, base: nn.Linear, steps: int, tail_lr: float, seed: int) -> None:
        from remembrall.learning.episodic import EpisodicMemory
        from remembrall.models.efficientnet import load_efficientnet

        self.x = torch.from_numpy(feats[("emb", "before_conv", "before_block")[depth]].astype(np.float32))
        self.emb, self.y, self.classes = feats["emb"], y, classes
        self.head = copy.deepcopy(base)
        self.tail = Tail(load_efficientnet("efficientnet-lite0"), depth).eval() if depth else None
        self.memory = EpisodicMemory(self.emb.shape[1]) if memory else None
        self.steps, self.tail_lr, self.seed = steps, tail_lr, seed
        self.train_seconds = 0.0

    @torch.no_grad()
    def predict(self, i: int) -> int:
        z = self.x[i:i + 1] if self.tail is None else self.tail(self.x[i:i + 1])
        probs = torch.softmax(self.head(z), 1).numpy()
        if self.memory is None:
            return int(probs[0].argmax())
        blended, names, _ = self.memory.blend(self.emb[i:i + 1], probs, self.classes)
        return self.classes.index(names[int(blended[0].argmax())])

    def label(self, i: int) -> None:
        if self.memory is None:
            return
        with torch.no_grad():
            z = self.x[i:i + 1] if self.tail is None else self.tail(self.x[i:i + 1])
            probs = dict(zip(self.classes, torch.softmax(self.head(z), 1)[0].tolist(), strict=True))
        name = self.classes[int(self.y[i])]
        self.memory.observe(self.emb[i], name, probs)
        self.memory.write(self.emb[i], name, probs)

    def retrain(self, idx: np.ndarray) -> None:
        t0 = time.perf_counter()
        groups: list[dict[str, Any]] = [{"params": self.head.parameters(), "lr": 0.003}]
        if self.tail is not None:
            groups.append({"params": self.tail.parameters(), "lr": self.tail_lr})
            self.tail.train()
        opt = torch.optim.AdamW(groups, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(self.seed)
        x, y = self.x[idx], torch.from_numpy(self.y[idx])
        for _ in range(self.steps):
            b = torch.randint(0, len(idx), (min(64, len(idx)),), generator=gen)
            z = x[b] if self.tail is None else self.tail(x[b])
            loss = nn.functional.cross_entropy(self.head(z), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if self.tail is not None:
            self.tail.eval()
        self.train_seconds += time.perf_counter() - t0


def walk(learner: Learner, start: int, segments: list[dict[str, Any]], every: int = 10,
         every_labels: int = 32, window: int = 2000) -> dict[str, Any]:
    """Prequential accuracy from ``start`` on; labels every ``every``-th item."""
    correct, labelled, new = [], [], 0
    for i in range(start, len(learner.y)):
        correct.append(learner.predict(i) == int(learner.y[i]))
        if i % every == 0:
            learner.label(i)
            labelled.append(i)
            new += 1
            if new >= every_labels:
                new = 0
                learner.retrain(np.array(labelled[-window:]))
    c = np.array(correct, dtype=float)
    firsts = [c[s["start"] - start: s["start"] - start + 200].mean() for s in segments[1:]]
    return {"mean_accuracy": round(float(c.mean()), 4), "adaptation_accuracy": round(float(np.mean(firsts)), 4),
            "train_seconds": round(learner.train_seconds, 1), "labels_used": len(labelled)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("--work", type=Path, help="where the stream and its features are kept (default next to --json)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per retrain (retrain.max_steps)")
    p.add_argument("--tail-lr", type=float, default=1e-4, help="learning rate of the backbone's tail")
    p.add_argument("--variants", default="head,conv_head,last_block", help="from " + ",".join(DEPTHS))
    p.add_argument("--smoke", action="store_true", help="a tiny stream and few steps: checks the machinery")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from bench.continual import CONFIG, prepare_stream
    from bench.drift_stream import CLASSES
    from remembrall.config import load_config

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(DEPTHS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {sorted(DEPTHS)}")
    steps = 20 if args.smoke else args.steps
    work = args.work or args.json.parent / "finetune-tail-work"
    t0 = time.perf_counter()
    try:
        info = prepare_stream(work, 120 if args.smoke else 700, args.seed, args.smoke)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"finetune_tail: cannot build the stream: {exc}", file=sys.stderr)
        return 2
    recs = [json.loads(line) for line in (work / "stream" / "manifest.jsonl").read_text().splitlines() if line.strip()]
    cache = work / "features.npz"
    if cache.is_file() and len(np.load(cache)["emb"]) == len(recs):
        feats = dict(np.load(cache))
    else:
        feats = encode([work / "stream" / r["image"] for r in recs], load_config(str(CONFIG)).infer.image_size)
        np.savez(cache, **feats)
    classes = list(CLASSES)
    y = np.array([classes.index(r["label"]) for r in recs])
    segments = info["segments"]
    first = segments[0]
    from remembrall.learning.trainer import fit_head

    base_head = fit_head(feats["emb"][first["start"]:first["end"]],
                         [classes[i] for i in y[first["start"]:first["end"]]], classes, steps=400, seed=args.seed)
    base = base_head.net
    assert isinstance(base, nn.Linear)
    results: dict[str, Any] = {}
    for v in variants:
        for memory in (False, True):
            name = v + ("+memory" if memory else "")
            learner = Learner(feats, y, classes, DEPTHS[v], memory, base, steps, args.tail_lr, args.seed)
            results[name] = walk(learner, first["end"], segments, every_labels=8 if args.smoke else 32)
            print(name, results[name], flush=True)
    head_s = results.get("head", {}).get("train_seconds") or None
    rows = [[n, r["mean_accuracy"], r["adaptation_accuracy"], r["train_seconds"],
             round(r["train_seconds"] / head_s, 1) if head_s else None] for n, r in results.items()]
    print_table(rows, ["variant", "mean", "adaptation", "train s", "× head's compute"])
    write_json(args.json, {"variants": results, "steps": steps, "tail_lr": args.tail_lr, "seed": args.seed,
                           "frames": len(recs), "smoke": args.smoke, "seconds": round(time.perf_counter() - t0, 1),
                           "machine": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
