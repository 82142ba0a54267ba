"""The fleet learns together: does a specialist one camera learned save another camera's labels?

    python -m bench.fleet --json out/fleet.json [--smoke]

Three cameras, each its own labelled Fashion-MNIST stream (bench/drift_stream.py; different
images), see the same scenes in different orders — camera 1 ``BCD``, camera 2 ``CDB``, camera 3
``DBC`` — each through the real pipeline (``remembrall run``, continual-bench config, oracle
labels at 10 %), one after the other, on a base head fitted to scene A. Two systems:

* ``alone``: every camera with its own zoo, labelling and training on its own;
* ``fleet``: the zoo shared through a folder (``zoo.share``): what camera 1 learned is in the zoo
  camera 2 starts with, and so on; and one ``remembrall serve`` server, over CURVE tcp on loopback,
  labels for all three (``label.labeler: remote``; its labeler is the same annotation oracle, so
  the labels are identical and only the zoo can change how many are needed) and runs their
  training steps (``retrain.remote``). What it did is counted in ``shared_server``.

For every segment of cameras 2 and 3 (each a scene another camera had already learned in the
fleet run): ``labels_to_target`` — the labels the camera took, from the segment's start, until
its accuracy over the last 50 frames first reached ``--target`` (0.7; a segment that never does
counts all its labels) — and ``first100_accuracy``, accuracy over its first 100 frames.
``labels_saved_ratio`` = 1 − fleet's labels / alone's labels over those segments (target ≥ 0.3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import machine, print_table, write_json
from bench.continual import (
    CONFIG,
    BenchError,
    prequential,
    read_predictions,
    run_cli,
    run_system,
    set_args,
)
from bench.drift_stream import RECURRING_SCENES, build_recurring_stream, write_manifest_slice

CAMERAS = (("cam1", "BCD", 11), ("cam2", "CDB", 12), ("cam3", "DBC", 13))
ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("alone", "fleet")
WINDOW = 50  # frames the "reached the target" accuracy is measured over


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SharedServer:
    """``remembrall serve`` for the fleet: labels (the annotation oracle) and training, over CURVE."""

    def __init__(self, work: Path, timeout: float) -> None:
        from remembrall.io.curve import generate_keys

        self.keys = work / "keys"
        (self.keys / "allowed").mkdir(parents=True)
        generate_keys(self.keys, "server")
        for name, _, _ in CAMERAS:
            generate_keys(self.keys, name)
            (self.keys / "allowed" / f"{name}.key").write_bytes((self.keys / f"{name}.key").read_bytes())
        self.port, self.metrics_port = _free_port(), _free_port()
        cfg = work / "server.yaml"
        cfg.write_text(json.dumps({
            "serve": {"bind": f"tcp://127.0.0.1:{self.port}", "secret_key": str(self.keys / "server.key_secret"),
                      "allowed_keys": str(self.keys / "allowed"), "train_device": "cpu", "threads": 1},
            "label": {"labeler": "oracle"}, "out": str(work / "server")}))
        self.log = (work / "server.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "remembrall", "serve", str(cfg), "--metrics-port",
                                      str(self.metrics_port)], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, REMEMBRALL_LOG_FORMAT="json"))
        deadline = time.monotonic() + min(timeout, 120)
        while self.scrape() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"remembrall serve did not start; see {work / 'server.log'}")
            time.sleep(0.2)

    def overrides(self, camera: str) -> dict[str, Any]:
        address = f"tcp://127.0.0.1:{self.port}"
        return {"label.labeler": "remote", "label.remote": address, "retrain.remote": address,
                "retrain.remote_fallback_s": 0, "remote.name": camera,
                "remote.server_key": str(self.keys / "server.key"),
                "remote.client_key": str(self.keys / f"{camera}.key_secret")}

    def scrape(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=3) as resp:
                return resp.read().decode()
        except OSError:
            return None

    def counts(self) -> dict[str, dict[str, float]]:
        """What the server did for each camera: labels answered, training runs finished."""
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(self.scrape() or ""):
            for sample in family.samples:
                what = {"remembrall_label_server_requests_total": "labelled",
                        "remembrall_train_server_jobs_total": "trained"}.get(sample.name)
                if what and sample.labels.get("outcome") == what:
                    camera = sample.labels["client"].split("/")[0]
                    out.setdefault(camera, {"labelled": 0, "trained": 0})[what] += sample.value
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def labels_by_frame(out_dir: Path) -> list[int]:
    """Frame indices the label stage accepted a label for (OUT/events.jsonl), sorted."""
    frames = []
    path = out_dir / "events.jsonl"
    if not path.is_file():
        return frames
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ev = json.loads(line)
            if ev.get("event") == "accepted":
                frames.append(int(str(ev["id"]).rsplit(":", 1)[-1]))
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(frames)


def segment_figures(by_seq: dict[int, bool], labels: list[int], seg: dict[str, Any], target: float
                    ) -> dict[str, Any]:
    """Labels until the rolling accuracy reached ``target`` in this segment, and first-100 accuracy."""
    hits: list[bool] = []
    reached_at = None
    for i in range(seg["start"], seg["end"]):
        if i not in by_seq:
            continue
        hits.append(by_seq[i])
        last = hits[-WINDOW:]
        if reached_at is None and len(last) >= min(WINDOW, 20) and sum(last) / len(last) >= target:
            reached_at = i
    end = reached_at if reached_at is not None else seg["end"] - 1
    spent = sum(1 for f in labels if seg["start"] <= f <= end)
    first = hits[:100]
    return {"segment": seg["name"], "labels_to_target": spent, "reached": reached_at is not None,
            "frames_to_target": (reached_at - seg["start"]) if reached_at is not None else None,
            "first100_accuracy": round(sum(first) / len(first), 4) if first else None,
            "accuracy": round(sum(hits) / len(hits), 4) if hits else None,
            "labels": sum(1 for f in labels if seg["start"] <= f < seg["end"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("--smoke", action="store_true", help="short segments: checks the machinery")
    p.add_argument("--frames-per-segment", type=int, help="default 400 (smoke 100)")
    p.add_argument("--target", type=float, default=0.7, help="accuracy a segment must reach (over 50 frames)")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--work", type=Path)
    args = p.parse_args(argv)
    per = args.frames_per_segment or (100 if args.smoke else 400)
    work = (args.work or args.json.parent / f"fleet-{'smoke' if args.smoke else 'work'}").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.time()
    extra: dict[str, Any] = {"zoo.share_every_s": 1.0}
    if args.smoke:
        extra.update({"retrain.min_labels": 8, "retrain.every_labels": 8, "select.rate": 0.2,
                      "retrain.max_steps": 60, "buffer.holdout_every": 4})
    try:
        from remembrall.config import load_config

        size = load_config(str(CONFIG)).decode.width or 64
        base_stream = build_recurring_stream(work / "base-stream", size=size, frames_per_segment=per, seed=10,
                                             order="A")
        base_src = work / "base-train.jsonl"
        write_manifest_slice(work / "base-stream" / "manifest.jsonl", base_src, 0, base_stream["frames"])
        base = work / "base-head.pt"
        rc, out, _ = run_cli(["fit-base", str(CONFIG), "--source", str(base_src), "--output", str(base),
                              *set_args(extra)], work / "fit-base.log", args.timeout)
        if rc != 0:
            raise BenchError(f"fit-base failed (exit {rc}); see {work / 'fit-base.log'}")
        streams = {name: build_recurring_stream(work / name, size=size, frames_per_segment=per, seed=seed, order=order)
                   for name, order, seed in CAMERAS}
        results: dict[str, dict[str, Any]] = {}
        server = SharedServer(work, args.timeout)
        try:
            for system in SYSTEMS:
                results[system] = run_cameras(system, work, base, extra, streams, server, args)
            shared = server.counts()
        finally:
            server.stop()
    except BenchError as exc:
        print(f"bench.fleet: {exc}", file=sys.stderr)
        return 1
    report = assemble(results, args, per, started)
    report["shared_server"] = shared
    write_json(args.json, report)
    rows = [[s, c, seg["segment"], seg["labels_to_target"], "yes" if seg["reached"] else "no",
             seg["first100_accuracy"], seg["accuracy"]]
            for s in SYSTEMS for c in ("cam2", "cam3") for seg in results[s][c]["segments"]]
    print_table(rows, ["system", "camera", "segment", "labels to target", "reached", "first 100 acc", "acc"])
    print(f"labels saved by the shared zoo: {report['labels_saved_ratio']:.0%} (target ≥ 30 %); first-100 "
          f"accuracy {report['first100_accuracy']['alone']} alone → {report['first100_accuracy']['fleet']} fleet; "
          f"the shared server labelled and trained for the fleet: {shared}")
    return 0


def run_cameras(system: str, work: Path, base: Path, extra: dict[str, Any], streams: dict[str, Any],
                server: SharedServer, args: argparse.Namespace) -> dict[str, Any]:
    """The three cameras one after the other, alone or as a fleet."""
    cams: dict[str, Any] = {}
    for name, order, _ in CAMERAS:
        overrides = {"infer.head": str(base), **extra, "zoo.origin": name}
        if system == "fleet":
            overrides["zoo.share"] = str(work / "shared-zoo")
            overrides.update(server.overrides(name))
        info = streams[name]
        res = run_system(f"{system}/{name}", work / system / name, work / name / "manifest.jsonl",
                         overrides, info, args.fps, args.timeout)
        out_dir = work / system / name
        seqs, correct = prequential(read_predictions(out_dir / "predictions.jsonl"))
        by_seq = dict(zip(seqs, correct, strict=True))
        labels = labels_by_frame(out_dir)
        if not labels:  # e.g. the shared server never answered: the figures would flatter the fleet
            raise BenchError(f"{system}/{name} took no label at all; see {out_dir / 'log.jsonl'}")
        cams[name] = {"order": order, "mean_accuracy": res["mean_accuracy"], "labels_used": len(labels),
                      "segments": [segment_figures(by_seq, labels, s, args.target) for s in info["segments"]],
                      "wall_seconds": res["wall_seconds"]}
        print(f"{system}/{name} ({order}): accuracy {res['mean_accuracy']:.3f}, {len(labels)} labels, "
              f"{res['wall_seconds']:.0f} s", flush=True)
    return cams


def assemble(results: dict[str, dict[str, Any]], args: argparse.Namespace, per: int, started: float
             ) -> dict[str, Any]:
    later = ("cam2", "cam3")  # their every scene was learned by an earlier camera

    def total(system: str, key: str) -> list[Any]:
        return [seg[key] for c in later for seg in results[system][c]["segments"]]

    labels = {s: sum(total(s, "labels_to_target")) for s in SYSTEMS}
    first = {s: round(sum(v) / len(v), 4) if (v := [x for x in total(s, "first100_accuracy") if x is not None])
             else None for s in SYSTEMS}
    saved = 1 - labels["fleet"] / labels["alone"] if labels["alone"] else 0.0
    return {
        "bench": "fleet", "smoke": args.smoke, "frames_per_segment": per, "target_accuracy": args.target,
        "cameras": {name: order for name, order, _ in CAMERAS},
        "scenes": {s.id: s.title for s in RECURRING_SCENES},
        "labels_to_target": labels, "labels_saved_ratio": round(saved, 4),
        "first100_accuracy": first,
        "targets": {"labels_saved_ratio": {"target": 0.3, "met": saved >= 0.3}},
        "systems": results, "machine": machine(), "wall_s": round(time.time() - started, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
