"""Text continual learning on a drifting or recurring BBC News stream: does learning on the device pay for text?

The drifting stream (bench/text_stream.py) starts with a segment of three of the five topics;
the base classifier (a head on all-MiniLM-L6-v2 embeddings) learns from it alone. The remaining
segments shift the topic priors and bring ``tech`` and ``entertainment`` in; they are what every
system is scored on (the base segment is the base's training data, so it is not replayed). With
``--stream recurring`` the stream is four scenes (a topic mix and a style each) that come back in
turn, A B C D A B C D A; the base learns from the first visit of A. Each system runs the real
pipeline (``remembrall run configs/text-bench.yaml``, every stage its own process) with the
oracle labeler at the same label budget:

* ``static``      the base head, never retrained (``learn: false``);
* ``uniform``     periodic, fixed-length retraining on uniformly sampled labels (Ekya-style);
* ``remembrall_no_memory``  the full system without episodic memory and specialist zoo;
* ``remembrall``  embedding-guided sampling, S_t early stopping, drift triggers, hot-swap, Reptile,
  episodic memory, specialist zoo;
* ``all_labels``  every document labelled and retrained on (the upper bound).

The learning systems are fed through a ZeroMQ PULL source at a steady rate below what the static
run's pipeline sustained (a live feed does not wait for the learner, and the retrainer only runs while inference
keeps up); ``static`` reads the stream file as fast as the pipeline takes it, which gives the
pipeline's throughput. Accuracy is prequential: each document's *served* ``pred`` vs its
``label`` in ``predictions.jsonl``.

Throughput: ``embed_docs_per_s`` is :meth:`TextEncoder.embed` alone on the same documents, same
``max_tokens``, batch and threads as the infer stage; ``pipeline_docs_per_s`` is documents per
second coming out of the sink (``predictions.jsonl``, read as it grows) in the static run, from
the first prediction to the last (start-up excluded).

``adaptation_accuracy`` and ``recall_ratio`` are as in bench/continual.py (bench/common.py
learning_metrics), over the replayed segments.

    python -m bench.text --json out/text.json --plot out/text.png [--smoke] [--stream recurring]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    learning_targets,
    machine,
    measure_rate,
    print_learning_report,
    write_json,
)
from bench.continual import (
    OVERRIDES,
    STREAMS,
    SYSTEMS,
    BenchError,
    buffer_overrides,
    plot,
    run_cli,
    set_args,
    summarize_system,
)
from bench.text_stream import (
    RECURRING_ORDER,
    SCHEDULE,
    SMOKE_RECURRING_ORDER,
    build_recurring_text_stream,
    build_text_stream,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "text-bench.yaml"
#: A small stream for ``--smoke``: the base mix, then both unseen topics.
SMOKE_SCHEDULE = [SCHEDULE[0], SCHEDULE[2], SCHEDULE[3]]
SMOKE_OVERRIDES = {"retrain.min_labels": 6, "retrain.every_labels": 6, "select.rate": 0.25, "select.window": 8,
                   "retrain.max_steps": 60, "retrain.min_holdout": 3, "buffer.holdout_every": 3,
                   "text.max_tokens": 32}
#: Docs/s fed in --smoke: the few labels must reach the retrainer while the stream still runs.
SMOKE_RATE = 15.0
#: Documents per segment by stream kind, full and --smoke (the recurring stream's nine segments
#: use 1,620 of the corpus's 2,125 articles).
DOCS_PER_SEGMENT = {"drifting": (300, 40), "recurring": (180, 120)}
#: Target for remembrall's mean accuracy on the drifting stream.
MIN_ACCURACY = 0.90
TITLES = {
    "drifting": "Drifting BBC News stream through the text pipeline: accuracy over time, same label budget",
    "recurring": "Recurring BBC News scenes (A B C D ...) through the text pipeline: accuracy over time, "
                 "same label budget",
}
#: The learning systems are fed at this share of the static run's pipeline rate (so inference keeps
#: up and the retrainer gets its turns), or of the encoder's rate without a static run.
PACE_SHARE = 0.8


# ------------------------------------------------------------------------------------ feeding
class ZmqFeed(threading.Thread):
    """A live producer: PUSHes the stream's lines to the pipeline's ``zmq+pull`` source at ``rate``
    documents per second, then ``{"eos": true}``.

    The first document goes alone and the pace starts once its prediction is out (the pipeline
    has loaded its models), so start-up does not pile up a backlog. The source blocks on
    backpressure (``text.backpressure: block``), so a pipeline that falls behind slows the feed
    (``late_s`` says by how much) instead of losing documents.
    """

    def __init__(self, stream: Path, port: int, rate: float, ready: Path) -> None:
        super().__init__(daemon=True, name="feed")
        self.lines = [ln for ln in stream.read_text(encoding="utf-8").splitlines() if ln.strip()]
        self.port, self.period, self.ready = port, 1.0 / rate, ready
        self.sent = 0
        self.late_s = 0.0
        self.error: str | None = None
        self._halt = threading.Event()

    def _send(self, sock: Any, data: str) -> None:
        import zmq

        while not self._halt.is_set():
            if sock.poll(100, zmq.POLLOUT):
                sock.send_string(data)
                return
        raise InterruptedError("feed stopped")

    def run(self) -> None:
        import zmq

        sock = zmq.Context.instance().socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 64)
        sock.setsockopt(zmq.LINGER, 5000)  # the last lines and the end marker still get out on close
        try:
            sock.connect(f"tcp://127.0.0.1:{self.port}")
            self._send(sock, self.lines[0])
            self.sent = 1
            while not self._halt.is_set() and not (self.ready.is_file() and self.ready.stat().st_size > 0):
                self._halt.wait(0.05)
            start = time.monotonic()
            for i, line in enumerate(self.lines[1:]):
                due = start + i * self.period
                now = time.monotonic()
                if due > now:
                    self._halt.wait(due - now)
                else:
                    self.late_s = max(self.late_s, now - due)
                self._send(sock, line)
                self.sent += 1
            self._send(sock, '{"eos": true}')
        except (InterruptedError, zmq.ZMQError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            sock.close()

    def stop(self) -> None:
        """End the thread (called by ``run_cli`` when the pipeline has exited)."""
        self._halt.set()
        self.join(10)


class SinkWatch(threading.Thread):
    """Counts lines of ``predictions.jsonl`` as the sink writes them (``sink.flush_every: 1``):
    documents per second where predictions come out, from the first one seen to the last."""

    def __init__(self, path: Path, period: float = 0.05) -> None:
        super().__init__(daemon=True, name="sink-watch")
        self.path, self.period = path, period
        self.first: tuple[float, int] | None = None  # (time, lines) when predictions first appeared
        self.last: tuple[float, int] | None = None  # when the count last grew
        self.done = threading.Event()

    def run(self) -> None:
        lines, pos = 0, 0
        while True:
            final = self.done.is_set()
            try:
                with self.path.open("rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
            except OSError:
                chunk = b""
            if chunk:
                n = chunk.count(b"\n")
                pos += chunk.rfind(b"\n") + 1 if n else 0
                if n:
                    lines += n
                    now = time.perf_counter()
                    if self.first is None:
                        self.first = (now, lines)
                    self.last = (now, lines)
            if final:
                return
            self.done.wait(self.period)

    def stop(self) -> None:
        self.done.set()
        self.join(5)

    def rate(self) -> float | None:
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])

    def seconds(self) -> float | None:
        return self.last[0] - self.first[0] if self.first and self.last else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------ stream + base
def _build(stream: Path, docs_per_segment: int, seed: int, smoke: bool, kind: str) -> dict[str, Any]:
    """The stream as asked (reused when ``stream`` already holds it: same kind, size, seed, segments)."""
    if kind == "recurring":
        order = SMOKE_RECURRING_ORDER if smoke else RECURRING_ORDER
        names = list(order)
    else:
        schedule = SMOKE_SCHEDULE if smoke else SCHEDULE
        names = [n for n, _ in schedule]
    want = {"kind": kind, "seed": seed, "docs": docs_per_segment * len(names), "names": names}
    try:
        info = json.loads((stream / "segments.json").read_text(encoding="utf-8"))
        have = {"kind": info.get("kind", "drifting"), "seed": info["seed"], "docs": info["docs"],
                "names": [s["scene"] if kind == "recurring" else s["name"] for s in info["segments"]]}
        if have == want and (stream / "stream.jsonl").is_file():
            return info
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(stream, ignore_errors=True)
    if kind == "recurring":
        return build_recurring_text_stream(stream, docs_per_segment=docs_per_segment, seed=seed, order=order)
    return build_text_stream(stream, docs_per_segment=docs_per_segment, seed=seed, schedule=schedule)


def prepare_stream(work: Path, docs_per_segment: int, seed: int, smoke: bool, kind: str = "drifting"
                   ) -> dict[str, Any]:
    """Build the stream (reused when already there) and split it: ``base.jsonl`` (segment 0, the
    base's training data) and ``eval.jsonl`` (the rest, replayed). Returns the info with
    ``eval_segments`` in replay positions."""
    stream = work / "stream"
    info = _build(stream, docs_per_segment, seed, smoke, kind)
    lines = (stream / "stream.jsonl").read_text(encoding="utf-8").splitlines()
    base_end = info["segments"][0]["end"]
    (work / "base.jsonl").write_text("\n".join(lines[:base_end]) + "\n", encoding="utf-8")
    (work / "eval.jsonl").write_text("\n".join(lines[base_end:]) + "\n", encoding="utf-8")
    info["eval_segments"] = [dict(s, start=s["start"] - base_end, end=s["end"] - base_end)
                             for s in info["segments"][1:]]
    info["eval_docs"] = len(lines) - base_end
    return info


def load_docs(path: Path) -> tuple[list[str], list[str]]:
    recs = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [r["text"] for r in recs], [r["label"] for r in recs]


def fit_text_base(cfg: Any, encoder: Any, base_src: Path, out: Path) -> dict[str, Any]:
    """The base head: ``remembrall.commands.fit_base.fit_base`` (what ``remembrall fit-base`` runs)
    on MiniLM embeddings of the base segment; ``fit-base`` itself reads only video/manifests."""
    from remembrall.commands.fit_base import fit_base
    from remembrall.models.heads import save_head

    texts, labels = load_docs(base_src)
    t0 = time.perf_counter()
    x = encoder.embed(texts)
    embed_s = time.perf_counter() - t0
    head, meta, report = fit_base(cfg, x, labels)
    meta.extra = {"source": "bench.text (fit_base on MiniLM embeddings)", "encoder": "all-MiniLM-L6-v2",
                  "max_tokens": encoder.max_tokens, "source_uri": str(base_src),
                  "train": report["train"], "holdout": report["holdout"], "steps": report["steps"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_head(out, head, meta)
    report["embed_seconds"] = round(embed_s, 2)
    return report


def embed_rate(encoder: Any, texts: list[str], batch: int, seconds: float) -> dict[str, Any]:
    """``TextEncoder.embed`` alone, in the infer stage's batches, cycling over ``texts``."""
    pos = [0]

    def step() -> int:
        i = pos[0]
        chunk = texts[i:i + batch] or texts[:batch]
        pos[0] = (i + len(chunk)) % len(texts)
        encoder.embed(chunk)
        return len(chunk)

    r = measure_rate(step, seconds=seconds, warmup_s=0.5, warmup_steps=2, min_items=batch)
    return {"docs_per_s": round(r.per_s, 2), "docs": r.items, "seconds": round(r.seconds, 2),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


# ------------------------------------------------------------------------------------ plot
# ------------------------------------------------------------------------------------ main
def run_system(name: str, work: Path, info: dict[str, Any], base: Path, extra: dict[str, Any], rate: float,
               timeout: float, buffer: dict[str, Any] | None = None) -> dict[str, Any]:
    """One pipeline run of ``name``; its summary (accuracy, labels, retraining, docs/s). ``buffer``:
    replay overrides (the recurring stream's bounded buffer)."""
    out_dir = work / name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    eval_src = work / "eval.jsonl"
    overrides: dict[str, Any] = {"infer.text_head": str(base), **extra, **OVERRIDES[name], **(buffer or {})}
    feed = None
    if name == "static":  # no learner to wait for: the file as fast as the pipeline takes it
        source = str(eval_src)
    else:
        port = free_port()
        source = f"zmq+pull+bind:tcp://127.0.0.1:{port}"
        feed = ZmqFeed(eval_src, port, rate, out_dir / "predictions.jsonl")
    watch = SinkWatch(out_dir / "predictions.jsonl")
    load_before = [round(x, 2) for x in os.getloadavg()]
    watch.start()
    t0 = time.perf_counter()
    try:
        rc, _, scraper = run_cli(["run", str(CONFIG), "--source", source, "--out", str(out_dir),
                                  *set_args(overrides)], out_dir / "log.jsonl", timeout, out_dir,
                                 feed)  # type: ignore[arg-type]  # a feed has the camera's start/stop
    finally:
        watch.stop()
    wall = time.perf_counter() - t0
    if feed is not None and (feed.error or feed.sent != len(feed.lines)):
        raise BenchError(f"{name}: the feed sent {feed.sent} of {len(feed.lines)} documents "
                         f"({feed.error or 'the pipeline stopped reading'}); see {out_dir / 'log.jsonl'}")
    if rc != 0:
        raise BenchError(f"{name}: remembrall run exited {rc}; see {out_dir / 'log.jsonl'}")
    res = summarize_system(name, out_dir, out_dir / "log.jsonl", scraper, info["eval_docs"], info["eval_segments"],
                           first_is_base=False)  # the base segment is not replayed
    res["infer_compute"] = res.pop("fps")  # infer stage compute rate (docs/s) with/without a run in flight
    res["docs"] = res.pop("frames")
    res["docs_missing"] = res.pop("frames_missing")
    res["docs_per_s"] = round(r, 2) if (r := watch.rate()) is not None else None
    res["docs_per_s_seconds"] = round(s, 1) if (s := watch.seconds()) is not None else None
    res["feed_docs_per_s"] = round(rate, 2) if feed is not None else None
    res["feed_max_lag_s"] = round(feed.late_s, 2) if feed is not None else None
    res["wall_seconds"] = round(wall, 1)
    res["loadavg_before"] = load_before
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    res["overrides"] = overrides
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--json", required=True, type=Path, help="where to write the results")
    p.add_argument("--plot", type=Path, help="accuracy-over-time PNG")
    p.add_argument("--smoke", action="store_true", help="a tiny stream: checks the machinery in under a minute")
    p.add_argument("--work", type=Path, help="working folder (stream, base head, runs); default next to --json")
    p.add_argument("--stream", choices=STREAMS, default="drifting",
                   help="drifting: topics shift and new ones arrive; recurring: scenes come back (A B C D ...)")
    p.add_argument("--docs-per-segment", type=int, help="default drifting 300 (smoke 40), recurring 180 (smoke 120)")
    p.add_argument("--buffer-capacity", type=int,
                   help="recurring stream: replay capacity of every learning system (default: two segments' "
                        "training labels at the system's label rate; 0: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    p.add_argument("--timeout", type=float, default=400.0, help="seconds allowed per pipeline run")
    p.add_argument("--rate", type=float, default=0.0,
                   help=f"documents/s fed to the learning systems (0: {PACE_SHARE} x the static run's docs/s)")
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or not systems:
        p.error(f"--systems: unknown {unknown}; choose from {SYSTEMS}")
    dps = args.docs_per_segment or DOCS_PER_SEGMENT[args.stream][args.smoke]
    kind = "" if args.stream == "drifting" else f"{args.stream}-"
    work = (args.work or args.json.parent / f"text-{kind}{'smoke' if args.smoke else 'work'}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    from remembrall.config import load_config
    from remembrall.models.text_encoder import TextEncoder

    extra = SMOKE_OVERRIDES if args.smoke else {}
    cfg = load_config(str(CONFIG))
    text_cfg, icfg = cfg.text, cfg.infer
    max_tokens = int(extra.get("text.max_tokens", text_cfg.max_tokens))
    try:
        info = prepare_stream(work, dps, args.seed, args.smoke, args.stream)
        print(f"{args.stream} stream: {info['docs']} documents, {len(info['segments'])} segments; base on the first "
              f"{info['segments'][0]['end']}, {info['eval_docs']} replayed", flush=True)
        encoder = TextEncoder(icfg.device, max_tokens, text_cfg.batch_size, icfg.threads)
        base = work / "base-text-head.pt"
        base_report = fit_text_base(cfg, encoder, work / "base.jsonl", base)
        print(f"base head: {base_report['classes']} classes, held-out accuracy "
              f"{base_report['holdout_accuracy']:.3f} ({base_report['train']} train)", flush=True)
        eval_texts, _ = load_docs(work / "eval.jsonl")
        embed_s = 1.0 if args.smoke else 12.0
        # the encoder alone right before and right after the static run (the pipeline's docs/s):
        # on a shared machine the load changes from minute to minute
        embeds = [embed_rate(encoder, eval_texts, icfg.batch_size, embed_s)]
        print(f"encoder alone: {embeds[0]['docs_per_s']:.1f} docs/s", flush=True)
        results: dict[str, dict[str, Any]] = {}
        rate = args.rate or (SMOKE_RATE if args.smoke else 0.0)
        for name in sorted(systems, key=SYSTEMS.index):  # static first: it sets the feed rate
            if name != "static" and not rate:
                measured = results["static"]["docs_per_s"] if "static" in results else None
                rate = PACE_SHARE * (measured or sum(e["docs_per_s"] for e in embeds) / len(embeds))
                print(f"learning systems fed at {rate:.1f} docs/s", flush=True)
            buffer = buffer_overrides(args.stream, args.buffer_capacity, dps, extra, OVERRIDES[name], cfg)
            res = run_system(name, work, info, base, extra, rate, args.timeout, buffer)
            results[name] = res
            print(f"{name}: accuracy {res['mean_accuracy']:.3f}, {res['labels_used']} labels, "
                  f"{res['retrain_runs']} runs / {res['retrain_seconds']:.1f} s retraining, {res['swaps']} swaps, "
                  f"{res['docs_per_s']} docs/s out, {res['wall_seconds']:.0f} s", flush=True)
            if name == "static":
                embeds.append(embed_rate(encoder, eval_texts, icfg.batch_size, embed_s))
                print(f"encoder alone: {embeds[-1]['docs_per_s']:.1f} docs/s", flush=True)
    except BenchError as exc:
        print(f"bench.text: {exc}", file=sys.stderr)
        return 1
    report = assemble(results, info, base_report, embeds, rate, max_tokens, cfg, started, args.smoke)
    write_json(args.json, report)
    write_json(work / "curves.json", {"kind": args.stream, "segments": info["eval_segments"],
                                      "systems": {n: {k: r[k] for k in ("seqs", "rolling", "mean_accuracy",
                                                                        "labels_used", "retrain_seconds")}
                                                  for n, r in results.items()}})
    if args.plot:
        plot(args.plot, results, info["eval_segments"], unit="document (after the base segment)",
             title=TITLES[args.stream])
    print_report(report)
    print(f"results: {args.json}" + (f", plot: {args.plot}" if args.plot else ""))
    return 0


def assemble(results: dict[str, dict[str, Any]], info: dict[str, Any], base_report: dict[str, Any],
             embeds: list[dict[str, Any]], rate: float, max_tokens: int, cfg: Any, started: float,
             smoke: bool) -> dict[str, Any]:
    """The JSON report: stream and settings, per-system results (curves left out), throughput, targets."""
    systems = {name: {k: v for k, v in res.items() if k not in ("rolling", "seqs")} for name, res in results.items()}
    embed = sum(e["docs_per_s"] for e in embeds) / len(embeds)
    pipeline = results["static"]["docs_per_s"] if "static" in results else None
    report: dict[str, Any] = {
        "benchmark": "text", "smoke": smoke, "machine": machine(),
        "stream": {"kind": info.get("kind", "drifting"), "docs": info["docs"], "base_docs": info["segments"][0]["end"],
                   "replayed_docs": info["eval_docs"], "seed": info["seed"], "topics": info["topics"],
                   "segments": info["segments"], **({"scenes": info["scenes"]} if "scenes" in info else {})},
        "settings": {"max_tokens": max_tokens, "infer_batch": cfg.infer.batch_size, "infer_threads": cfg.infer.threads,
                     "label_rate": float(results.get("remembrall", next(iter(results.values())))["overrides"]
                                         .get("select.rate", cfg.select.rate)),
                     "feed_docs_per_s": round(rate, 2), "config": str(CONFIG.relative_to(ROOT))},
        "base": base_report,
        "systems": systems,
        "embed_docs_per_s": round(embed, 2),  # mean of the runs right before and after the static run
        "embed_runs": embeds,
        "pipeline_docs_per_s": pipeline,
        "pipeline_measured_in": "static (file read as fast as the pipeline takes it; sink output, start-up excluded)",
        "seconds": round(time.time() - started, 1),
    }
    report["targets"] = targets(report)
    return report


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """Issues 4 and 9's targets, each with the measured figures and whether it was met."""
    drifting = report["stream"]["kind"] == "drifting"
    out = learning_targets(report["systems"], uniform_points=3, min_accuracy=MIN_ACCURACY if drifting else None)
    embed, pipe = report["embed_docs_per_s"], report["pipeline_docs_per_s"]
    out["pipeline_vs_embed_ratio"] = {"value": round(pipe / embed, 3) if pipe and embed else None,
                                      "target": ">= 0.9", "met": bool(pipe and embed and pipe >= 0.9 * embed)}
    return out


def print_report(report: dict[str, Any]) -> None:
    print_learning_report(report, [["embed_docs_per_s", report["embed_docs_per_s"]],
                                   ["pipeline_docs_per_s", report["pipeline_docs_per_s"]],
                                   ["max_tokens", report["settings"]["max_tokens"]],
                                   ["feed_docs_per_s", report["settings"]["feed_docs_per_s"]]],
                          extra_columns=["docs_per_s"], segment_name=lambda k: k.split(",")[0])


if __name__ == "__main__":
    raise SystemExit(main())
