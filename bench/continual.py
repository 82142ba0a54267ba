"""Continual learning on a drifting or recurring labelled stream: does learning on the device pay, and at what cost?

One Fashion-MNIST stream (bench/drift_stream.py) is replayed through the real pipeline
(``remembrall run``, every stage its own process) once per system, on the same label budget. The
stream is ``drifting`` (segments that shift class priors and appearance, each a new scene) or,
with ``--stream recurring``, ``recurring`` (four scenes, each a transform and a class mix, that
come back in turn: A B C D A B C D A B C D, no image twice). Systems:

* ``static``      the base head (``remembrall fit-base`` on the first, clean segment), never retrained;
* ``uniform``     periodic retraining on uniformly sampled labels, fixed training length (Ekya-style);
* ``remembrall_no_memory``  the full system without episodic memory and specialist zoo;
* ``remembrall``  the full system: embedding-guided sampling, S_t early stopping, drift-triggered
  runs under a compute share, hot-swap, Reptile base update, episodic memory, specialist zoo;
* ``all_labels``  every frame labelled and retrained on (the upper bound).

Besides mean accuracy: ``adaptation_accuracy`` (the first 200 frames of every segment after the
first, pooled: recovery after a change) and, on the recurring stream, ``recall_ratio`` (per
return of a scene, accuracy over its first 100 frames / accuracy over the last 100 of the
scene's previous visit, averaged; returns to the base head's own training segment left out).

Accuracy is prequential: each frame's *served* prediction (``predictions.jsonl``: ``pred`` vs
``label``), made before its label could reach the learner. Retraining compute comes from the
retrain stage (its per-run compute seconds, the values it observes into
``remembrall_retrain_seconds``), labels from the label stage, swap stalls from the
``remembrall_swap_seconds`` histogram, inference speed from the infer stage's per-item compute
time (``remembrall_stage_latency_seconds``) scraped every half second and split into intervals
with and without a retraining run in flight.

    python -m bench.continual --json out/continual.json --plot out/continual.png [--smoke] [--stream recurring]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    learning_metrics,
    learning_targets,
    machine,
    print_learning_report,
    recurring_buffer,
    write_json,
)
from bench.drift_stream import (
    RECURRING_ORDER,
    SCHEDULE,
    SMOKE_RECURRING_ORDER,
    build_recurring_stream,
    build_stream,
    write_manifest_slice,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "continual-bench.yaml"
SYSTEMS = ["static", "uniform", "remembrall_no_memory", "remembrall", "all_labels"]
STREAMS = ("drifting", "recurring")
#: Ablation, run only when asked (--systems ...,remembrall_uniform_sampler): the full system's
#: retraining (early stopping, drift trigger, base update) fed by the uniform sampler.
ABLATIONS = ["remembrall_uniform_sampler"]

#: Episodic memory and specialist zoo off: the full system as it was before them, and the
#: baselines as they were measured (Ekya-style retraining has neither).
NO_MEMORY = {"memory.enabled": False, "zoo.enabled": False}
#: Per-system overrides of configs/continual-bench.yaml (the config itself is the full system).
#: ``uniform`` and ``all_labels`` retrain on a fixed cadence for a fixed number of steps
#: (``retrain.max_steps``): no drift trigger, no early stopping, no base update, no memory or zoo.
FIXED_LENGTH = {"retrain.drift_trigger": 2.0, "retrain.early_stopping": False, "retrain.reptile": False,
                **NO_MEMORY}
OVERRIDES: dict[str, dict[str, Any]] = {
    "static": {"learn": False},
    "uniform": {"select.sampler": "uniform", "select.uniform_mode": "every", **FIXED_LENGTH},
    "remembrall_no_memory": NO_MEMORY,
    "remembrall": {},
    "all_labels": {"select.sampler": "uniform", "select.rate": 1.0, **FIXED_LENGTH},
    "remembrall_uniform_sampler": {"select.sampler": "uniform", "select.uniform_mode": "every"},
}
SMOKE_SCHEDULE = [("clean", "clean"), ("inverted", "invert"), ("coloured background", "colour")]
SMOKE_OVERRIDES = {"retrain.min_labels": 8, "retrain.every_labels": 8, "select.rate": 0.2,
                   "retrain.max_steps": 60, "buffer.holdout_every": 4}
#: Frames per segment by stream kind, full and --smoke.
FRAMES_PER_SEGMENT = {"drifting": (700, 120), "recurring": (500, 120)}
ROLLING = 200
#: Plot titles by stream kind.
TITLES = {
    "drifting": "Drifting Fashion-MNIST stream through the pipeline: accuracy over time, same label budget",
    "recurring": "Recurring Fashion-MNIST scenes (A B C D ...) through the pipeline: accuracy over time, same label budget",
}
#: Target for remembrall's mean accuracy on the drifting stream.
MIN_ACCURACY = 0.75


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and where its log is."""


# ------------------------------------------------------------------------------------ scraping
def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition → ``{sample name: [(labels, value), ...]}``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def metric_sum(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    """Sum of a sample over every label set matching ``match``."""
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == val for k, val in match.items()))


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Upper bound of the histogram bucket holding the ``q`` quantile (conservative: a p99 inside
    the first 0.5 ms bucket reads 0.5 ms); None for an empty histogram. When the quantile falls in
    the +Inf bucket the largest finite bound is returned (then it is only a lower bound)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    finite = [le for le, _ in buckets if not math.isinf(le)]
    for le, c in buckets:
        if c >= rank:
            return le if not math.isinf(le) else (finite[-1] if finite else None)
    return None


class Scraper(threading.Thread):
    """Scrapes a running pipeline's /metrics (URL from ``OUT/status.json``) every ``period`` s."""

    def __init__(self, out_dir: Path, period: float = 0.5) -> None:
        super().__init__(daemon=True, name="scraper")
        self.out_dir, self.period = out_dir, period
        self.scrapes: list[tuple[float, dict[str, list[tuple[dict[str, str], float]]]]] = []
        self.done = threading.Event()
        self.url: str | None = None

    def run(self) -> None:
        while not self.done.is_set():
            if self.url is None:
                try:
                    status = json.loads((self.out_dir / "status.json").read_text(encoding="utf-8"))
                    self.url = status.get("metrics_url")
                except (OSError, ValueError):
                    pass
            if self.url:
                try:
                    with urllib.request.urlopen(self.url.rstrip("/") + "/metrics", timeout=2) as resp:
                        text = resp.read().decode("utf-8", "replace")
                    self.scrapes.append((time.time(), parse_metrics(text)))
                except (OSError, ValueError):
                    pass  # not up yet, or going away at the end
            self.done.wait(self.period)


# ------------------------------------------------------------------------------------ running
class PacedCamera(threading.Thread):
    """Plays a manifest like a camera: one line every ``1/fps`` s through a named pipe.

    A file replay runs as fast as the pipeline takes it, so a system that retrains more slows the
    stream down and gets more learning time per frame; a camera does not wait. The pipeline reads
    the pipe as an ordinary manifest (a ``.jsonl`` source: file semantics, nothing dropped). The
    manifest source first probes the file (reads up to 64 KiB), then reopens it for the lines: the
    probe gets 64 KiB of blank lines, and a write that finds no reader waits for the next opener
    while still holding the pipe open, so no line is lost between the two opens.
    """

    PROBE = 65536

    def __init__(self, manifest: Path, fifo: Path, fps: float) -> None:
        super().__init__(daemon=True, name="camera")
        self.lines = [ln.rstrip("\n") + "\n" for ln in manifest.read_text(encoding="utf-8").splitlines()
                      if ln.strip()]
        self.fifo, self.period = fifo, 1.0 / fps
        self.sent = 0
        self.late_s = 0.0  # how far behind schedule the pipeline pushed the camera in total
        self.error: str | None = None
        self._halt = threading.Event()
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)

    def _write(self, fd: int, data: bytes) -> int:
        while data:
            try:
                n = os.write(fd, data)
            except BrokenPipeError:  # the probe closed; wait for the reader of the lines
                new = os.open(self.fifo, os.O_WRONLY)
                os.close(fd)
                fd = new
                continue
            data = data[n:]
        return fd

    def run(self) -> None:
        fd = -1
        try:
            fd = os.open(self.fifo, os.O_WRONLY)  # blocks until the decode stage opens the source
            fd = self._write(fd, b"\n" * self.PROBE)
            start = time.monotonic()
            for i, line in enumerate(self.lines):
                if self._halt.is_set():
                    break
                due = start + i * self.period
                now = time.monotonic()
                if due > now:
                    self._halt.wait(due - now)
                else:
                    self.late_s = max(self.late_s, now - due)
                fd = self._write(fd, line.encode())
                self.sent += 1
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if fd >= 0:
                os.close(fd)  # end of stream

    def stop(self) -> None:
        """Unblock and end the thread (e.g. the pipeline died before opening the pipe)."""
        self._halt.set()
        try:  # a reader that opens and closes releases a writer blocked in open()
            os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        self.join(5)
        self.fifo.unlink(missing_ok=True)


def run_cli(args: list[str], log_path: Path, timeout: float, out_dir: Path | None = None,
            camera: PacedCamera | None = None) -> tuple[int, str, Scraper | None]:
    """Run ``python -m remembrall ARGS`` (JSON logs to ``log_path``), scraping metrics if ``out_dir``,
    fed by ``camera`` if given."""
    env = dict(os.environ, REMEMBRALL_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    scraper = Scraper(out_dir) if out_dir is not None else None
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "remembrall", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        if scraper is not None:
            scraper.start()
        if camera is not None:
            camera.start()
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the supervisor drains and stops its stages
            try:
                stdout, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, _ = proc.communicate()
            raise BenchError(f"remembrall {args[0]} ran over {timeout:.0f} s (log: {log_path})") from None
        finally:
            if scraper is not None:
                scraper.done.set()
                scraper.join(5)
            if camera is not None:
                camera.stop()
    return proc.returncode, stdout, scraper


def set_args(overrides: dict[str, Any]) -> list[str]:
    out = []
    for key, value in overrides.items():
        out += ["--set", f"{key}={json.dumps(value)}"]
    return out


# ------------------------------------------------------------------------------------ analysis
def read_predictions(path: Path) -> list[dict[str, Any]]:
    """Prediction records in stream order (one per seq; a duplicate after a restart keeps the first)."""
    recs: dict[int, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec.get("seq"), int):
                recs.setdefault(rec["seq"], rec)
    return [recs[k] for k in sorted(recs)]


def read_logs(path: Path) -> list[dict[str, Any]]:
    out = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "msg" in entry:
                out.append(entry)
    return out


_COMPUTE = re.compile(r"([0-9.]+) s compute")
_LABELLED = re.compile(r"labelled (\d+) samples")


@dataclass
class RetrainRun:
    start: float
    end: float | None = None
    compute_s: float = 0.0
    accepted: bool = False


@dataclass
class Retrains:
    runs: list[RetrainRun] = field(default_factory=list)
    labels_used: int | None = None


def parse_retrains(logs: list[dict[str, Any]]) -> Retrains:
    """Retraining runs (wall interval, compute seconds, accepted?) and labels used, from stage logs."""
    out = Retrains()
    open_run: RetrainRun | None = None
    for e in logs:
        msg, comp = e["msg"], e.get("component", "")
        if comp == "retrain" and "training run started" in msg:
            open_run = RetrainRun(start=float(e["ts"]))
            out.runs.append(open_run)
        elif comp == "retrain" and ("accepted and announced" in msg or "run rejected" in msg):
            m = _COMPUTE.search(msg)
            run = open_run or RetrainRun(start=float(e["ts"]))
            if open_run is None:
                out.runs.append(run)
            run.end, run.accepted = float(e["ts"]), "accepted" in msg
            run.compute_s = float(m.group(1)) if m else 0.0
            open_run = None
        elif comp == "label":
            m = _LABELLED.search(msg)
            if m:
                out.labels_used = (out.labels_used or 0) + int(m.group(1))
    return out


def prequential(recs: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
    seqs, correct = [], []
    for r in recs:
        if r.get("label") is not None:
            seqs.append(int(r["seq"]))
            correct.append(r.get("pred") == r["label"])
    return seqs, correct


def rolling(values: list[bool], window: int) -> list[float]:
    out, acc = [], 0
    for i, v in enumerate(values):
        acc += int(v)
        if i >= window:
            acc -= int(values[i - window])
        out.append(acc / min(i + 1, window))
    return out


def swap_gaps(recs: list[dict[str, Any]], total: int, around: int = 64) -> tuple[list[int], int, int]:
    """Swap points (seq where the served version changes), frames missing near swaps, missing in all."""
    have = {int(r["seq"]) for r in recs}
    missing = [s for s in range(total) if s not in have]
    swaps = [int(b["seq"]) for a, b in zip(recs, recs[1:], strict=False)
             if b.get("model_version") != a.get("model_version")]
    near = sum(1 for s in missing if any(abs(s - w) <= around for w in swaps))
    return swaps, near, len(missing)


def infer_fps(scrapes: list[tuple[float, dict]], runs: list[RetrainRun], stage: str = "infer"
              ) -> dict[str, float | None]:
    """Inference speed in scrape intervals without / with a retraining run in flight.

    ``capacity``: frames per second of infer compute (per-item compute time from
    ``remembrall_stage_latency_seconds``: what inference could sustain); ``wall``: frames
    inferred per wall-clock second (what the replay actually got; includes input waits).
    """
    busy = [(r.start, r.end if r.end is not None else math.inf) for r in runs]
    acc = {"idle": [0.0, 0.0, 0.0], "retraining": [0.0, 0.0, 0.0]}  # frames, compute s, wall s
    for (t0, a), (t1, b) in zip(scrapes, scrapes[1:], strict=False):
        n = metric_sum(b, "remembrall_stage_latency_seconds_count", stage=stage) - \
            metric_sum(a, "remembrall_stage_latency_seconds_count", stage=stage)
        s = metric_sum(b, "remembrall_stage_latency_seconds_sum", stage=stage) - \
            metric_sum(a, "remembrall_stage_latency_seconds_sum", stage=stage)
        if n <= 0 or s <= 0:
            continue  # nothing inferred (start-up, drain)
        overlap = sum(max(0.0, min(t1, e) - max(t0, st)) for st, e in busy)
        kind = "retraining" if overlap >= 0.5 * (t1 - t0) else ("idle" if overlap == 0 else None)
        if kind:
            acc[kind][0] += n
            acc[kind][1] += s
            acc[kind][2] += t1 - t0
    out: dict[str, float | None] = {}
    for kind, (n, s, w) in acc.items():
        out[f"frames_{kind}"], out[f"compute_s_{kind}"] = n, round(s, 3)
        out[f"capacity_{kind}"] = n / s if s > 0 else None
        out[f"wall_{kind}"] = n / w if w > 0 else None
        out[f"seconds_{kind}"] = round(w, 1)
    return out


def summarize_system(name: str, out_dir: Path, log_path: Path, scraper: Scraper | None, total: int,
                     segments: list[dict[str, Any]], first_is_base: bool = True) -> dict[str, Any]:
    """One run's figures. ``first_is_base``: the first segment is the base head's training data, so
    it is no change to adapt to and no fair reference for a return (learning_metrics skips it)."""
    recs = read_predictions(out_dir / "predictions.jsonl")
    seqs, correct = prequential(recs)
    if not correct:
        raise BenchError(f"{name}: no labelled prediction in {out_dir / 'predictions.jsonl'}")
    logs = read_logs(log_path)
    rt = parse_retrains(logs)
    scrapes = scraper.scrapes if scraper is not None else []
    last = scrapes[-1][1] if scrapes else {}
    swaps, near, missing = swap_gaps(recs, total)
    by_seq = dict(zip(seqs, correct, strict=True))
    per_segment = {}
    for s in segments:
        vals = [by_seq[i] for i in range(s["start"], s["end"]) if i in by_seq]
        per_segment[s["name"]] = round(sum(vals) / len(vals), 4) if vals else None
    buckets = [(float(lab["le"]), v) for lab, v in last.get("remembrall_swap_seconds_bucket", [])
               if lab.get("stage") == "infer"]
    labels_used = rt.labels_used
    if labels_used is None and last:
        labels_used = int(metric_sum(last, "remembrall_frames_total", stage="label"))
    res = {
        "mean_accuracy": round(sum(correct) / len(correct), 4),
        "labels_used": int(labels_used or 0),
        "retrain_seconds": round(sum(r.compute_s for r in rt.runs), 3),
        "retrain_seconds_metric": round(metric_sum(last, "remembrall_retrain_seconds_sum"), 3) if last else None,
        "retrain_runs": len(rt.runs),
        "accepted_runs": sum(r.accepted for r in rt.runs),
        "frames": len(recs),
        "frames_missing": missing,
        "swaps": len(swaps),
        "swap_frames_dropped": near,
        "swap_stall_ms_p99": (round(q * 1000, 4) if (q := histogram_quantile(0.99, buckets)) is not None
                              else None),
        "swap_seconds_count": int(max((v for lab, v in buckets if math.isinf(float(lab))), default=0)),
        "model_versions": sorted({r.get("model_version") for r in recs if r.get("model_version") is not None}),
        "per_segment_accuracy": per_segment,
        **learning_metrics(by_seq, segments[1:] if first_is_base else segments),
        "fps": infer_fps(scrapes, rt.runs),
        "scrapes": len(scrapes),
        "rolling": rolling(correct, ROLLING),
        "seqs": seqs,
    }
    return res


# ------------------------------------------------------------------------------------ plot
def plot(path: Path, results: dict[str, dict[str, Any]], segments: list[dict[str, Any]], *,
         unit: str = "frame",
         title: str = "Drifting Fashion-MNIST stream through the pipeline: accuracy over time, same label budget",
         ) -> None:
    """Accuracy over time, one curve per system, segment boundaries marked (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.4), dpi=110)
    styles = {"static": ("#888888", "-"), "uniform": ("#1f77b4", "-"), "remembrall": ("#d62728", "-"),
              "remembrall_no_memory": ("#9467bd", "-"), "all_labels": ("#2ca02c", "--"),
              "remembrall_uniform_sampler": ("#ff7f0e", ":")}
    for name, res in results.items():
        color, ls = styles.get(name, (None, "-"))
        ax.plot(res["seqs"], res["rolling"], ls, color=color, lw=1.6,
                label=f"{name}: mean {res['mean_accuracy']:.3f}, {res['labels_used']} labels, "
                      f"{res['retrain_seconds']:.1f} s retraining")
    recurring = any(s.get("visit", 1) > 1 for s in segments)
    shown: set[str] = set()
    for s in segments:
        ax.axvline(s["start"], color="#bbbbbb", lw=0.8)
        label = segment_label(s, titled=s.get("scene") not in shown) if recurring else s["name"]
        shown.add(s.get("scene", ""))
        ax.text(s["start"] + 5, 1.03, label, fontsize=7, va="top", color="#444444")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(0, segments[-1]["end"])
    ax.set_xlabel(unit)
    ax.set_ylabel(f"prequential accuracy (rolling {ROLLING} {unit.split()[0]}s)")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def segment_label(s: dict[str, Any], titled: bool = False) -> str:
    """A recurring segment's plot label: scene and visit (``A #2``), with the scene's title under it
    if ``titled`` (the scene's first segment on the plot); full names would overlap."""
    scene, visit = s.get("scene") or s["name"], s.get("visit", 1)
    title = s["name"].removeprefix(f"{scene} ").removesuffix(f" #{visit}")
    return f"{scene} #{visit}" + (f"\n{title}" if titled and title != s["name"] else "")


# ------------------------------------------------------------------------------------ main
def run_system(name: str, out_dir: Path, manifest: Path, overrides: dict[str, Any], info: dict[str, Any],
               fps: float, timeout: float) -> dict[str, Any]:
    """One pipeline run of ``name`` on the stream (played by a camera at ``fps``, 0: as fast as it
    goes); its summary."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    camera = PacedCamera(manifest, manifest.with_name("camera.jsonl"), fps) if fps > 0 else None
    source = camera.fifo if camera is not None else manifest
    t0 = time.perf_counter()
    rc, _, scraper = run_cli(["run", str(CONFIG), "--source", str(source), "--out", str(out_dir),
                              *set_args(overrides)], out_dir / "log.jsonl", timeout, out_dir, camera)
    wall = time.perf_counter() - t0
    if camera is not None and (camera.error or camera.sent != len(camera.lines)):
        raise BenchError(f"{name}: the paced camera sent {camera.sent} of {len(camera.lines)} frames "
                         f"({camera.error or 'the pipeline stopped reading'}); see {out_dir / 'log.jsonl'}")
    if rc != 0:
        raise BenchError(f"{name}: remembrall run exited {rc}; see {out_dir / 'log.jsonl'}")
    res = summarize_system(name, out_dir, out_dir / "log.jsonl", scraper, info["frames"], info["segments"])
    res["wall_seconds"] = round(wall, 1)
    res["camera_fps"] = fps or None
    res["camera_max_lag_s"] = round(camera.late_s, 2) if camera is not None else None
    res["overrides"] = overrides
    return res


def prepare_stream(work: Path, frames_per_segment: int, seed: int, smoke: bool, kind: str = "drifting"
                   ) -> dict[str, Any]:
    """Build the stream once per (kind, size, seed, schedule); reuse it when it is already there."""
    from remembrall.config import load_config

    size = load_config(str(CONFIG)).decode.width or 64  # frames at the size the pipeline decodes to
    stream = work / "stream"
    if kind == "recurring":
        order = SMOKE_RECURRING_ORDER if smoke else RECURRING_ORDER
        segments = len(order)
    else:
        schedule = SMOKE_SCHEDULE if smoke else SCHEDULE
        segments = len(schedule)
    want = {"kind": kind, "seed": seed, "frames": frames_per_segment * segments, "size": size,
            "order": order if kind == "recurring" else [n for n, _ in schedule]}
    try:
        info = json.loads((stream / "segments.json").read_text(encoding="utf-8"))
        have = {"kind": info.get("kind", "drifting"), "seed": info["seed"], "frames": info["frames"],
                "size": info["size"], "order": ("".join(s["scene"] for s in info["segments"]) if kind == "recurring"
                                                else [s["name"] for s in info["segments"]])}
        if have == want and (stream / "manifest.jsonl").is_file():
            return info
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(stream, ignore_errors=True)
    if kind == "recurring":
        return build_recurring_stream(stream, size=size, frames_per_segment=frames_per_segment, seed=seed, order=order)
    return build_stream(stream, size=size, frames_per_segment=frames_per_segment, seed=seed, schedule=schedule)


def buffer_overrides(kind: str, capacity: int | None, per_segment: int, extra: dict[str, Any],
                     system: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """``buffer.capacity`` for one system on the recurring stream: ``capacity`` if given (0: the
    config's), else two segments' training labels at the system's label rate (common.recurring_buffer).
    The episodic memory gets the same capacity: every system keeps the same number of labels, so
    a returning scene is recalled by the zoo, not by a memory that simply holds every label."""
    if kind != "recurring" or capacity == 0 or system.get("learn") is False:
        return {}
    if capacity is None:
        rate = float({**extra, **system}.get("select.rate", cfg.select.rate))
        capacity = recurring_buffer(per_segment, rate, int(extra.get("buffer.holdout_every", cfg.buffer.holdout_every)))
    return {"buffer.capacity": capacity, "memory.capacity": capacity}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, type=Path, help="where to write the results")
    p.add_argument("--plot", type=Path, help="accuracy-over-time PNG")
    p.add_argument("--smoke", action="store_true", help="a tiny stream: checks the machinery in about a minute")
    p.add_argument("--work", type=Path, help="working folder (stream, base head, runs); default next to --json")
    p.add_argument("--stream", choices=STREAMS, default="drifting",
                   help="drifting: every segment a new scene; recurring: scenes come back (A B C D A B C D ...)")
    p.add_argument("--frames-per-segment", type=int, help="default drifting 700, recurring 500 (smoke: 120)")
    p.add_argument("--buffer-capacity", type=int,
                   help="recurring stream: replay capacity of every learning system (default: two segments' "
                        "training labels at the system's label rate; 0: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from " + ",".join(SYSTEMS + ABLATIONS))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per pipeline run")
    p.add_argument("--fps", type=float, default=30.0,
                   help="camera rate the stream is played at (0: as fast as the pipeline takes it)")
    p.add_argument("--replot", type=Path, metavar="CURVES_JSON",
                   help="only redraw --plot from a previous run's WORK/curves.json")
    args = p.parse_args(argv)
    if args.replot:
        if not args.plot:
            p.error("--replot needs --plot")
        curves = json.loads(args.replot.read_text(encoding="utf-8"))
        plot(args.plot, curves["systems"], curves["segments"], title=TITLES[curves.get("kind", "drifting")])
        return 0
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS) - set(ABLATIONS))
    if unknown or not systems:
        p.error(f"--systems: unknown {unknown}; choose from {SYSTEMS + ABLATIONS}")
    fps = args.frames_per_segment or FRAMES_PER_SEGMENT[args.stream][args.smoke]
    kind = "" if args.stream == "drifting" else f"{args.stream}-"
    work = (args.work or args.json.parent / f"continual-{kind}{'smoke' if args.smoke else 'work'}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        t0 = time.perf_counter()
        info = prepare_stream(work, fps, args.seed, args.smoke, args.stream)
        manifest = work / "stream" / "manifest.jsonl"
        seg0 = info["segments"][0]
        base_src = work / "base-train.jsonl"
        write_manifest_slice(manifest, base_src, seg0["start"], seg0["end"])
        print(f"{args.stream} stream: {info['frames']} frames, {len(info['segments'])} segments "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        base = work / "base-head.pt"
        extra = SMOKE_OVERRIDES if args.smoke else {}
        from remembrall.config import load_config

        cfg = load_config(str(CONFIG))
        rc, out, _ = run_cli(["fit-base", str(CONFIG), "--source", str(base_src), "--output", str(base),
                              *set_args(extra)], work / "fit-base.log", args.timeout)
        print(out.strip(), flush=True)
        if rc != 0:
            raise BenchError(f"fit-base failed (exit {rc}); see {work / 'fit-base.log'}")
        results: dict[str, dict[str, Any]] = {}
        for name in systems:
            overrides = {"infer.head": str(base), **extra, **OVERRIDES[name],
                         **buffer_overrides(args.stream, args.buffer_capacity, fps, extra, OVERRIDES[name], cfg)}
            res = run_system(name, work / name, manifest, overrides, info, args.fps, args.timeout)
            results[name] = res
            print(f"{name}: accuracy {res['mean_accuracy']:.3f}, {res['labels_used']} labels, "
                  f"{res['retrain_runs']} runs / {res['retrain_seconds']:.1f} s retraining, {res['swaps']} swaps, "
                  f"{res['wall_seconds']:.0f} s", flush=True)
    except BenchError as exc:
        print(f"bench.continual: {exc}", file=sys.stderr)
        return 1
    report = assemble(results, info, machine(), started, args.smoke)
    write_json(args.json, report)
    write_json(work / "curves.json", {"kind": args.stream, "segments": info["segments"],
                                      "systems": {n: {k: r[k] for k in ("seqs", "rolling", "mean_accuracy",
                                                                        "labels_used", "retrain_seconds")}
                                                  for n, r in results.items()}})
    if args.plot:
        plot(args.plot, results, info["segments"], title=TITLES[args.stream])
    print_report(report)
    print(f"results: {args.json}" + (f", plot: {args.plot}" if args.plot else ""))
    return 0


def assemble(results: dict[str, dict[str, Any]], info: dict[str, Any], where: dict[str, Any], started: float,
             smoke: bool) -> dict[str, Any]:
    """The JSON report: per-system results (curves left out), the hot-swap/fps figures, targets."""
    systems = {name: {k: v for k, v in res.items() if k not in ("rolling", "seqs")} for name, res in results.items()}
    swaps_src = [r for n, r in results.items() if n != "static"]
    # pooled over every learning run: remembrall's own runs are short, so its retraining intervals
    # alone are too few seconds to measure a rate
    fps: dict[str, float | None] = {}
    for kind in ("idle", "retraining"):
        n = sum(r["fps"][f"frames_{kind}"] for r in swaps_src)
        c = sum(r["fps"][f"compute_s_{kind}"] for r in swaps_src)
        w = sum(r["fps"][f"seconds_{kind}"] for r in swaps_src)
        fps[f"capacity_{kind}"] = n / c if c > 0 else None
        fps[f"wall_{kind}"] = n / w if w > 0 else None
    report: dict[str, Any] = {
        "benchmark": "continual", "smoke": smoke, "machine": where,
        "stream": {"kind": info.get("kind", "drifting"), "frames": info["frames"], "size": info["size"],
                   "seed": info["seed"], "segments": info["segments"],
                   **({"scenes": info["scenes"]} if "scenes" in info else {})},
        "systems": systems,
        "infer_fps_idle": _r(fps.get("capacity_idle")),
        "infer_fps_while_retraining": _r(fps.get("capacity_retraining")),
        "infer_fps_static_run": _r(results["static"]["fps"].get("capacity_idle")) if "static" in results else None,
        "pipeline_fps_idle": _r(fps.get("wall_idle")),
        "pipeline_fps_while_retraining": _r(fps.get("wall_retraining")),
        "swaps": sum(r["swaps"] for r in swaps_src),
        "swap_frames_dropped": sum(r["swap_frames_dropped"] for r in swaps_src),
        "swap_stall_ms_p99": max((r["swap_stall_ms_p99"] for r in swaps_src if r["swap_stall_ms_p99"] is not None),
                                 default=None),
        "seconds": round(time.time() - started, 1),
    }
    report["targets"] = targets(report)
    return report


def _r(x: float | None) -> float | None:
    return round(x, 1) if x is not None else None


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured figures and whether it was met."""
    drifting = report["stream"]["kind"] == "drifting"
    out = learning_targets(report["systems"], uniform_points=3, min_accuracy=MIN_ACCURACY if drifting else None)
    out["swap_frames_dropped"] = {"value": report["swap_frames_dropped"], "target": "0",
                                  "met": report["swap_frames_dropped"] == 0 and report["swaps"] > 0}
    idle, busy = report["infer_fps_idle"], report["infer_fps_while_retraining"]
    out["infer_fps_ratio"] = {"value": round(busy / idle, 3) if idle and busy else None, "target": ">= 0.8",
                              "met": bool(idle and busy and busy >= 0.8 * idle)}
    return out


def print_report(report: dict[str, Any]) -> None:
    print_learning_report(report, [[k, report[k]] for k in (
        "infer_fps_idle", "infer_fps_while_retraining", "infer_fps_static_run", "pipeline_fps_idle",
        "pipeline_fps_while_retraining", "swaps", "swap_frames_dropped", "swap_stall_ms_p99")])


if __name__ == "__main__":
    raise SystemExit(main())
