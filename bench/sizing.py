"""Size a fleet on paper from measured costs: how many devices, server cores (or GPUs) and broker
throughput N cameras need.

    python -m bench.sizing --json out/sizing.json [--cameras 100] [--fps 15] [--label-rate 0.05]

Measured here, on this machine's CPU:

- ``teacher_ms_per_label``: one selected frame labelled by the teacher as ``remembrall serve``
  runs it (EfficientNet-Lite0 at 320 px and, where its weights package is installed, Lite2 at
  260 px; flip TTA), per thread count;
- ``train_ms_per_run``: one retraining run (``TrainingRun``, the default settings, early
  stopping on) on a full default buffer (2,000 train + 50 held-out 1,280-d embeddings, 10 classes);
- ``head_bytes``: a specialist as the shared zoo stores it (10 and 1,000 classes);
- ``label_request_bytes`` / ``train_job_bytes``: what an edge sends the server for one label (a
  224×224 frame, its embedding and 1,000-class probabilities) and for one training run on a full
  default buffer, encoded as on the wire: the first run (every row) and a following one
  (``--every-labels`` new rows; the server holds the rest).

Taken from other benchmarks' results (``bench/results``): inference and decode CPU per frame
(``throughput.json``) and the MQTT publisher's confirmed lines per second
(``mqtt_publish_per_s``, ``throughput-mqtt.json``). The per-camera demand comes from the
arguments: ``--fps`` frames per camera, ``--label-rate`` of them selected for a label,
``--every-labels`` new labels per retraining run (``retrain.every_labels``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, print_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def teacher_cost(model: str, threads: int, n: int = 20) -> float:
    """Milliseconds per label of the teacher (224×224 frames, TTA on, as configured by default)."""
    import torch

    from remembrall.learning.labelers import LabelRequest, TeacherLabeler

    torch.set_num_threads(threads)
    teacher = TeacherLabeler(model=model, min_confidence=0.0, threads=threads)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (224, 224, 3), np.uint8) for _ in range(4)]
    teacher.submit(LabelRequest("warm", image=frames[0]))
    t0 = time.perf_counter()
    for i in range(n):
        teacher.submit(LabelRequest(f"s{i}", image=frames[i % 4]))
    return 1000 * (time.perf_counter() - t0) / n


def train_cost(threads: int, runs: int = 3) -> tuple[float, float]:
    """Milliseconds per retraining run on a full default buffer, and its optimizer steps."""
    import torch

    from remembrall.config import RetrainConfig
    from remembrall.learning.trainer import TrainingRun, TrainSettings

    torch.set_num_threads(threads)
    rng = np.random.default_rng(1)
    classes = [f"c{i}" for i in range(10)]
    centers = rng.normal(size=(10, 1280)).astype(np.float32)
    y = rng.integers(0, 10, 2050)
    x = (centers[y] + rng.normal(scale=2.0, size=(2050, 1280))).astype(np.float32)
    labels = [classes[i] for i in y]
    spent, steps = [], []
    defaults = TrainSettings.from_config(RetrainConfig())
    for seed in range(runs):
        run = TrainingRun(None, x[:2000], labels[:2000], x[2000:], labels[2000:], replace(defaults, seed=seed))
        t0 = time.perf_counter()
        while run.step_slice():
            pass
        spent.append(time.perf_counter() - t0)
        steps.append(run.steps)
    return 1000 * float(np.median(spent)), float(np.median(steps))


def head_bytes(classes: int) -> int:
    from remembrall.models.heads import ClassifierHead, HeadMeta
    from remembrall.models.heads import head_bytes as to_bytes

    head = ClassifierHead(1280, [f"c{i}" for i in range(classes)])
    return len(to_bytes(head, HeadMeta(list(head.classes), head.in_dim)))


def wire_bytes(new_rows: int) -> tuple[int, int, int]:
    """Encoded sizes of one label request, a first training job and a following one."""
    from remembrall.config import RetrainConfig
    from remembrall.learning.labelers import LabelRequest
    from remembrall.learning.trainer import TrainSettings
    from remembrall.pipeline.messages import Message
    from remembrall.pipeline.remote import encode_once
    from remembrall.stages.remote_labeler import request_message
    from remembrall.stages.remote_trainer import job_message, row_hashes

    sample = Message("sample", stream="cam0", seq=1, fields={"id": "cam0:1", "entropy": 1.0},
                     arrays=[np.zeros(1280, np.float32), np.zeros(1000, np.float32)])
    request = LabelRequest("cam0:1", image=np.zeros((224, 224, 3), np.uint8), payload=sample)
    label = sum(len(p) for p in encode_once(request_message(request)))
    rows = np.random.default_rng(2).normal(size=(2050, 1280)).astype(np.float32)
    labels = [f"c{i % 10}" for i in range(2050)]
    hashes = row_hashes(rows)
    settings = TrainSettings.from_config(RetrainConfig())

    def size(known: set[int]) -> int:
        job = job_message("r", "vision", None, rows[:2000], labels[:2000], rows[2000:], labels[2000:], settings,
                          hashes, known)
        return sum(len(p) for p in encode_once(job))

    return label, size(set()), size(set(hashes[new_rows:].tolist()))


def _load(name: str) -> dict[str, Any]:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sizing", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("--cameras", type=int, default=100)
    p.add_argument("--fps", type=float, default=15.0, help="frames per second per camera")
    p.add_argument("--label-rate", type=float, default=0.05, help="share of frames selected for a label")
    p.add_argument("--every-labels", type=int, default=32, help="new labels per retraining run")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the teacher and training")
    p.add_argument("--prediction-bytes", type=int, default=400, help="one prediction line")
    args = p.parse_args(argv)
    from remembrall.models.efficientnet import has_weights

    teachers = {"efficientnet-lite0": teacher_cost("efficientnet-lite0", args.threads)}
    if has_weights("efficientnet-lite2"):
        teachers["efficientnet-lite2"] = teacher_cost("efficientnet-lite2", args.threads)
    train_ms, train_steps = train_cost(args.threads)
    label_bytes, first_job_bytes, job_bytes = wire_bytes(args.every_labels)
    thr, mqtt = _load("throughput.json"), _load("throughput-mqtt.json")
    infer_ms = thr.get("stage_cpu_ms_per_item", {}).get("infer")
    decode_ms = next((v for k, v in thr.get("stage_cpu_ms_per_item", {}).items() if k.startswith("decode")), None)
    publish_per_s = mqtt.get("mqtt_publish_per_s")

    n, fps = args.cameras, args.fps
    frames_s = n * fps
    labels_s = frames_s * args.label_rate
    runs_s = labels_s / args.every_labels
    teacher = max(teachers, key=lambda k: k.endswith("lite2"))  # the stronger one when installed
    teacher_cores = labels_s * teachers[teacher] / 1000 * args.threads
    train_cores = runs_s * train_ms / 1000 * args.threads
    edge_cores = frames_s * ((infer_ms or 0) + (decode_ms or 0)) / 1000 if infer_ms else None
    report = {
        "bench": "sizing", "cameras": n, "fps_per_camera": fps, "label_rate": args.label_rate,
        "every_labels": args.every_labels, "threads": args.threads,
        "measured": {"teacher_ms_per_label": {k: round(v, 1) for k, v in teachers.items()},
                     "train_ms_per_run": round(train_ms, 1), "train_steps_per_run": train_steps,
                     "head_bytes": {"10 classes": head_bytes(10), "1000 classes": head_bytes(1000)},
                     "label_request_bytes": label_bytes,
                     "train_job_bytes": {"first": first_job_bytes, "following": job_bytes}},
        "from_results": {"infer_cpu_ms_per_frame": infer_ms, "decode_cpu_ms_per_frame": decode_ms,
                         "mqtt_publish_per_s": publish_per_s},
        "demand": {"frames_per_s": frames_s, "labels_per_s": labels_s, "runs_per_s": round(runs_s, 3),
                   "predictions_per_s": frames_s, "broker_bytes_per_s": frames_s * args.prediction_bytes,
                   "to_server_bytes_per_s": round(labels_s * label_bytes + runs_s * job_bytes)},
        "need": {"teacher": teacher, "server_cpu_cores_teacher": round(teacher_cores, 2),
                 "server_cpu_cores_training": round(train_cores, 3),
                 "edge_cpu_cores_per_camera": round(fps * ((infer_ms or 0) + (decode_ms or 0)) / 1000, 2)
                 if infer_ms else None,
                 "edge_cpu_cores_total": round(edge_cores, 1) if edge_cores else None,
                 "mqtt_sink_processes_per_broker_share": math.ceil(frames_s / publish_per_s) if publish_per_s else None},
        "machine": machine(),
    }
    write_json(args.json, report)
    rows = [("cameras × fps", f"{n} × {fps:g} = {frames_s:g} frames/s"),
            ("labels/s (selected)", f"{labels_s:g}"),
            (f"teacher ({teacher}) ms/label, {args.threads} threads", f"{teachers[teacher]:.1f}"),
            ("server CPU cores for the teacher", f"{teacher_cores:.1f}"),
            ("training ms/run (2,000 samples)", f"{train_ms:.0f}"),
            ("server CPU cores for training", f"{train_cores:.2f}"),
            ("edge CPU cores per camera (x86, no GPU)", report["need"]["edge_cpu_cores_per_camera"]),
            ("broker: predictions/s", f"{frames_s:g} ({frames_s * args.prediction_bytes / 1e6:.2f} MB/s)"),
            ("edges → server (labels + training jobs)",
             f"{(labels_s * label_bytes + runs_s * job_bytes) / 1e6:.1f} MB/s "
             f"({label_bytes / 1e3:.0f} kB/label, {job_bytes / 1e3:.0f} kB/run; a first run {first_job_bytes / 1e6:.1f} MB)"),
            ("one sink's MQTT publisher, lines/s", publish_per_s)]
    print_table(rows, header=("sizing", "value"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
