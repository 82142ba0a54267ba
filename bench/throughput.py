"""Throughput of the video path: each stage alone, the whole multi-process pipeline, the transport.

    python -m bench.throughput --json out/throughput.json [--video FILE] [--smoke]

Measured in one run, warm-up excluded, on ``builtin:vtest`` (opencv-doc's vtest.avi; set
``$REMEMBRALL_OPENCV_DATA``) or, where it is absent, a generated 720p H.264 clip:

- ``decode_fps``: ``open_source`` with the pipeline's decode config (resize in the decoder), alone.
- ``infer_fps``: ``VisionBackbone.embed`` + base head + softmax/entropy/top-k on batches of
  ``infer.batch_size`` frames already decoded in memory: the ceiling of the slowest stage.
- ``onnxruntime_infer_fps``: the same with ``infer.backend: onnxruntime`` (the backbone exported
  to ONNX and run on ONNX Runtime's CPU provider; heads in PyTorch), and ``onnxruntime_speedup``.
- ``pipeline_fps``: ``remembrall run`` as a subprocess on the same video and config, looping it for
  ``--pipeline-seconds`` (30). Timed at the sink: the benchmark tails ``predictions.jsonl`` and
  divides the predictions written between the first flush after ``--pipeline-warmup`` (6 s of
  output) and the last line by the time between them, so start-up, model load and the first slow
  batches are excluded, as they are from the stages alone. ``pipeline_efficiency`` is it over the
  slower of ``decode_fps`` and ``infer_fps``. ``infer_capacity_in_pipeline`` is what infer could do
  per second of its own compute inside that run (its per-item compute histogram, scraped every
  3 s) and ``pipeline_vs_infer_in_pipeline`` the pipeline over it: the waiting the stages add,
  apart from the cores infer shares with them. ``infer_alone_cores`` says how many cores infer
  alone kept busy (spinning OpenMP threads included). Tailing a file costs
  nothing in the pipeline; scraping ``/metrics`` at 10 Hz would cost CPU in the supervisor.
- ``pipeline_fps_ui_watched``: the same run again with ``--viewers`` (10) clients holding the UI's
  live view (``/api/live/events``) open from the moment the UI is up; ``ui_watched_ratio`` is
  it over a plain run just before it, the median over ``--ui-rounds`` (3) such pairs (target
  ≥ 0.95: the UI must not slow the pipeline). The viewers run in the benchmark's own process, on
  the same cores: a browser on another machine costs the device less.
- ``stage_cpu_ms_per_item`` and ``stage_rss_bytes`` (maps by stage, the supervisor included):
  CPU milliseconds per item each process used over the timed window, and its peak resident memory.
- ``pipeline_fps_mqtt_sink``: the same run publishing every prediction to a real Mosquitto on
  loopback too (``sink.brokers``, QoS 1), alternated with plain runs (``--mqtt-rounds``, 3);
  ``mqtt_sink_ratio`` is the median of each pair's ratio (target ≥ 0.95: the broker sink must not
  be the bottleneck) and ``mqtt_received`` what a subscriber in the benchmark got against the
  predictions written; ``mqtt_publish_per_s`` is how many 400-byte lines one sink's publisher gets
  confirmed per second flat out (the broker-throughput figure of the sizing table). Skipped where
  Debian's ``mosquitto`` is not installed.
- ``transport_fps`` / ``raw_zmq_fps``: 1920×1080×3 uint8 frames between two processes over
  PUSH/PULL ``ipc://``: ours through ``Stage.send``/``Stage.recv`` (encode + validate + decode),
  raw pyzmq as in its ``send_array`` example (JSON metadata + zero-copy buffer). Same HWM and
  maximum message size on both; rounds alternate so machine load hits both alike.

``loadavg`` before/after each measurement and the CPU seconds each pipeline process used are in
the JSON, so a low efficiency can be traced to CPU contention on a small machine. On a machine
shared with other work, run it with ``OMP_WAIT_POLICY=PASSIVE`` too: torch's OpenMP threads spin
while they wait, and when cores are oversubscribed that spinning can cost more than half of
inference's CPU time (the JSON's ``env`` records the setting).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Rate, loadavg_1m, machine, measure_rate, print_table, write_json
from remembrall.heap import rss_bytes

REPO = Path(__file__).resolve().parents[1]
TRANSPORT_SHAPE = (1080, 1920, 3)
#: Tiny frames and batches so ``--smoke`` exercises every code path in a few seconds.
SMOKE_SETS = ["decode.width=64", "decode.height=64", "infer.image_size=64", "infer.batch_size=4",
              "sink.flush_every=4"]


# ---------------------------------------------------------------------------------------- video
def generate_video(path: Path, frames: int, width: int = 1280, height: int = 720, fps: int = 30) -> Path:
    """Encode a moving synthetic scene as H.264 (used where vtest.avi is not installed)."""
    import av

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height, width * 2, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast"}
        for i in range(frames):
            img = texture[:, (i * 8) % width:(i * 8) % width + width].copy()
            cx, cy = (i * 13) % width, height // 2
            img[((xx - cx) ** 2 + (yy - cy) ** 2) < 80 ** 2] = (255, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def pick_video(arg: str | None, tmp: Path, smoke: bool) -> tuple[Path, str]:
    if arg:
        path = Path(arg)
        if not path.is_file():
            raise SystemExit(f"bench.throughput: --video {arg}: no such file")
        return path, str(path)
    if smoke:  # small and quick: the smoke test checks the machinery, not the figures
        return generate_video(tmp / "smoke.mp4", 24, 160, 120), "generated 160x120 h264, 24 frames"
    from remembrall.io.builtin import list_builtins

    vtest = list_builtins().get("vtest")
    if vtest is not None:
        return vtest, f"builtin:vtest ({vtest})"
    print("vtest.avi not found (install opencv-doc, set REMEMBRALL_OPENCV_DATA); generating a 720p clip",
          flush=True)
    return generate_video(tmp / "gen720p.mp4", 300), "generated 1280x720 h264, 300 frames"


def load_cfg(config: str, video: Path, sets: list[str]) -> Any:
    from remembrall.config import load_config, parse_overrides

    cfg = load_config(config, parse_overrides(sets))
    cfg.sources[0].uri = str(video)
    return cfg


# ---------------------------------------------------------------------------------------- decode
def bench_decode(cfg: Any, seconds: float) -> Rate:
    """Frames/s of the decoder alone, looping the file so the run lasts ``seconds``."""
    from remembrall.io.video import open_source

    dec = cfg.decode
    src = open_source(replace(cfg.sources[0], loop=0), dec.width, dec.height, threads=dec.threads,
                      max_decode_errors=dec.max_decode_errors)
    frames = iter(src)
    try:
        def step() -> int:
            next(frames)
            return 1
        return measure_rate(step, seconds=seconds, warmup_s=min(0.5, seconds / 4), min_items=10)
    finally:
        src.close()


def decoded_frames(cfg: Any, count: int) -> np.ndarray:
    from remembrall.io.video import open_source

    dec = cfg.decode
    src = open_source(replace(cfg.sources[0], loop=0), dec.width, dec.height, threads=dec.threads)
    try:
        out = []
        for frame in src:
            out.append(frame.image)
            if len(out) >= count:
                break
    finally:
        src.close()
    return np.stack(out)


# ---------------------------------------------------------------------------------------- infer
def infer_bench(cfg: Any) -> Callable[[float], Rate]:
    """Load the model once; the returned function measures frames/s of the infer stage's work alone
    (what ``InferStage._process`` computes per batch) for a given number of seconds."""
    import torch

    from remembrall.models.modality import VisionModality
    from remembrall.stages.infer import entropy

    icfg = cfg.infer
    backbone = VisionModality(cfg).encoder  # PyTorch or ONNX Runtime, as infer.backend says
    head, _meta = backbone.imagenet_head()
    head = head.to(backbone.device)
    size = icfg.batch_size
    pool = decoded_frames(cfg, size * 4)
    pos = 0

    def step() -> int:
        nonlocal pos
        idx = [(pos + i) % len(pool) for i in range(size)]
        pos += size
        batch = np.stack([pool[i] for i in idx])  # the stage stacks per-message arrays too
        emb = backbone.embed(batch)
        with torch.no_grad():
            probs = torch.softmax(head(emb).float(), dim=1)
        entropy(probs).cpu().numpy()
        top_p, top_i = probs.topk(min(icfg.topk, probs.shape[1]), dim=1)
        top_p.cpu().numpy(), top_i.cpu().numpy(), emb.cpu().numpy()
        return size

    def measure(seconds: float) -> Rate:
        # torch's first batches (allocator, oneDNN kernels) run slow: warm up on several
        return measure_rate(step, seconds=seconds, warmup_s=min(4.0, seconds / 2), min_items=size,
                            warmup_steps=4)

    return measure


# ---------------------------------------------------------------------------------------- pipeline
def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LiveViewer(threading.Thread):
    """A browser stand-in on the UI's live view: holds ``/api/live/events`` open and reads every event."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.events, self.error = url, 0, None
        self.stop = threading.Event()

    def run(self) -> None:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/api/live/events", timeout=30) as resp:
                for line in resp:
                    if line.startswith(b"data: {"):
                        self.events += 1
                    if self.stop.is_set():
                        return
        except OSError as exc:
            if not self.stop.is_set():
                self.error = str(exc)


def _infer_busy(metrics_url: str) -> tuple[float, float] | None:
    """(items, busy seconds) infer has reported so far: its per-item compute time histogram."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(metrics_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    count = busy = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("stage") == "infer":
                if s.name == "remembrall_stage_latency_seconds_count":
                    count += s.value
                elif s.name == "remembrall_stage_latency_seconds_sum":
                    busy += s.value
    return count, busy


class Mosquitto:
    """Debian's ``mosquitto`` on a free loopback port, and a subscriber counting what arrives."""

    def __init__(self, tmp: Path, topic: str = "remembrall/predictions") -> None:
        import paho.mqtt.client as mqtt

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\npersistence false\nallow_anonymous true\nuser root\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.url = f"mqtt://127.0.0.1:{self.port}/{topic}?qos=1"
        self.received = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda *_: self._count()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.connect("127.0.0.1", self.port)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.1)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _count(self) -> None:
        self.received += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.proc.terminate()
        self.proc.wait(10)


def mqtt_publish_ceiling(url: str, n: int = 20_000, size: int = 400) -> float:
    """Prediction-sized lines per second one sink's MQTT publisher gets confirmed (QoS 1), flat out."""
    from remembrall.io.brokers.publish import PublisherHooks, open_publisher

    confirmed = [0]
    done = threading.Event()

    def published(k: int) -> None:
        confirmed[0] += k
        if confirmed[0] >= n:
            done.set()

    publisher = open_publisher(url, buffer=n + 1, hooks=PublisherHooks(published=published))
    try:
        deadline = time.monotonic() + 10
        while not publisher.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        payload = b"x" * size
        t0 = time.perf_counter()
        for _ in range(n):
            publisher.publish(payload)
        if not done.wait(120):
            raise RuntimeError(f"the broker confirmed {confirmed[0]} of {n} lines in 120 s")
        return n / (time.perf_counter() - t0)
    finally:
        publisher.close()


def bench_mqtt_sink(config: str, video: Path, sets: list[str], tmp: Path, rounds: int, timeout: float,
                    lines: int = 20_000, **steady: float) -> dict[str, Any]:
    """Pipeline fps with and without the MQTT sink, alternated (see the module docstring)."""
    broker = Mosquitto(tmp)
    try:
        ceiling = mqtt_publish_ceiling(broker.url, n=lines)
        plain, mqtt, received, written = [], [], [], []
        for _ in range(rounds):
            plain.append(bench_pipeline(config, video, sets, tmp, timeout, **steady)["fps"])
            before = broker.received
            run = bench_pipeline(config, video, [*sets, f'sink.brokers=["{broker.url}"]'], tmp, timeout, **steady)
            time.sleep(1.0)  # the last PUBACKs and deliveries
            mqtt.append(run["fps"])
            received.append(broker.received - before)
            written.append(run["frames"])
    finally:
        broker.close()
    return {"mqtt_publish_per_s": round(ceiling, 1), "pipeline_fps_mqtt_sink": statistics.median(mqtt),
            "mqtt_sink_ratio": statistics.median(w / p for w, p in zip(mqtt, plain, strict=True)),
            "mqtt_rounds_fps": {"plain": [round(x, 2) for x in plain], "mqtt": [round(x, 2) for x in mqtt]},
            "mqtt_received": {"messages": received, "predictions": written}}


def bench_pipeline(config: str, video: Path, sets: list[str], tmp: Path, timeout: float,
                   viewers: int = 0, run_s: float | None = None, warmup_s: float = 0.0) -> dict[str, Any]:
    """Run ``remembrall run`` on ``video`` and time it at the sink (see the module docstring), with
    ``viewers`` clients on the UI's live view from the moment the UI is up. With ``run_s`` the
    video loops for that long (``--duration``) and the first ``warmup_s`` seconds of output are
    not timed: a steady state, as the stages alone are measured."""
    out = Path(tempfile.mkdtemp(prefix="pipeline-watched-" if viewers else "pipeline-", dir=tmp))  # fresh per run
    cmd = [sys.executable, "-m", "remembrall", "run", config, "--source", str(video), "--out", str(out),
           "--metrics-port", "0", "--ui-port", "0"]
    if run_s is not None:
        cmd += ["--set", "sources.0.loop=0", "--duration", f"{run_s:g}"]
    for s in sets:
        cmd += ["--set", s]
    log_path = out.with_suffix(".log")
    preds = out / "predictions.jsonl"
    samples: list[tuple[float, int]] = []
    cpu_at: list[dict[str, float]] = []  # CPU seconds of every process at each sample
    busy_at: list[tuple[float, float, float]] = []  # (time, infer items, infer busy s), every 3 s
    metrics_url = None
    cpu: dict[str, float] = {}
    rss: dict[str, int] = {}
    stage_pids: dict[str, int] = {}
    watching: list[LiveViewer] = []
    lines, offset = 0, 0
    t_launch = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, REMEMBRALL_LOG_FORMAT="text"))
        try:
            while True:
                done = proc.poll() is not None
                now = time.perf_counter()
                if now - t_launch > timeout:
                    raise RuntimeError(f"the pipeline did not finish within {timeout:.0f} s (log: {log_path})")
                if not stage_pids:
                    try:
                        st = json.loads((out / "status.json").read_text())
                        stage_pids = {f"{n} ({s['type']})": s["pid"] for n, s in st["stages"].items() if s["pid"]}
                        metrics_url = st.get("metrics_url")
                        if viewers and st.get("ui_url"):
                            watching = [LiveViewer(st["ui_url"]) for _ in range(viewers)]
                            for v in watching:
                                v.start()
                    except (OSError, ValueError, KeyError):
                        pass
                for name, pid in list(stage_pids.items()) + [("supervisor", proc.pid)]:
                    c = _cpu_seconds(pid)
                    if c is not None:
                        cpu[name] = c
                    r = rss_bytes(pid)
                    if r is not None:
                        rss[name] = max(rss.get(name, 0), r)
                if metrics_url and not done and (not busy_at or now - busy_at[-1][0] >= 3.0):
                    got = _infer_busy(metrics_url)
                    if got is not None:
                        busy_at.append((time.perf_counter(), *got))
                if preds.exists():
                    with preds.open("rb") as fh:
                        fh.seek(offset)
                        chunk = fh.read()
                    nl = chunk.rfind(b"\n") + 1  # count complete lines only
                    lines += chunk[:nl].count(b"\n")
                    offset += nl
                    if lines and (not samples or lines != samples[-1][1]):
                        samples.append((now, lines))  # each new flush the sink made
                        cpu_at.append(dict(cpu))
                if done:
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for v in watching:
                v.stop.set()
    wall = time.perf_counter() - t_launch
    if proc.returncode != 0:
        raise RuntimeError(f"remembrall run exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
    if len(samples) < 2:
        raise RuntimeError(f"too few sink observations ({samples}) to time the pipeline; log: {log_path}")
    first_output = samples[0][0] - t_launch
    start = next((i for i, (t, _) in enumerate(samples) if t >= samples[0][0] + warmup_s), 0)
    start = min(start, len(samples) - 2)
    (t0, n0), (t1, n1) = samples[start], samples[-1]
    # CPU per frame over the timed window (model loading and warm-up excluded)
    window_cpu = {k: cpu_at[-1].get(k, 0.0) - cpu_at[start].get(k, 0.0) for k in cpu_at[-1]}
    inside = [b for b in busy_at if t0 <= b[0] <= t1]
    in_pipeline = None
    if len(inside) >= 2 and inside[-1][2] > inside[0][2]:
        # what infer could do per second of its own compute, inside the pipeline (the slowest
        # stage where it runs): pipeline fps over it says how much waiting the stages add
        in_pipeline = (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2])
    return {
        "infer_capacity_in_pipeline": in_pipeline,
        "fps": (n1 - n0) / (t1 - t0),
        "frames": n1,
        "timed_frames": n1 - n0,
        "warmup_s": warmup_s,
        "cpu_ms_per_frame_timed": {k: round(1000 * v / max(1, n1 - n0), 2) for k, v in window_cpu.items()},
        "timed_s": round(t1 - t0, 3),
        "startup_s": round(first_output, 3),
        "wall_s": round(wall, 3),
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "rss_bytes": rss,
        "command": " ".join(cmd),
        **({"viewers": len(watching), "viewer_events": [v.events for v in watching],
            "viewer_errors": [v.error for v in watching if v.error]} if viewers else {}),
    }


# ---------------------------------------------------------------------------------------- transport
def _frames() -> list[np.ndarray]:
    return [np.full(TRANSPORT_SHAPE, i * 50, np.uint8) for i in range(4)]


def _ours_sender(endpoint: str, seconds: float, cpu_us: Any) -> None:
    from remembrall.pipeline.messages import Message
    from remembrall.pipeline.runtime import Stage, StageSpec

    stage = Stage(StageSpec(name="bench-tx", type="bench", outputs={"out": endpoint}))
    sock = stage.socket("out")
    frames = _frames()
    end = time.perf_counter() + seconds
    seq, c0 = 0, time.process_time()
    while time.perf_counter() < end:
        stage.send(sock, Message("frame", stream="bench", seq=seq, pts=seq / 30, arrays=[frames[seq % 4]]))
        seq += 1
    cpu_us.value = 1e6 * (time.process_time() - c0) / max(1, seq)
    stage.send(sock, Message("eos", stream="bench", seq=seq))
    stage.close()


def _raw_sender(endpoint: str, seconds: float, cpu_us: Any) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 64)
    sock.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
    sock.connect(endpoint)
    frames = _frames()
    end = time.perf_counter() + seconds
    seq, c0 = 0, time.process_time()
    while time.perf_counter() < end:
        a = frames[seq % 4]
        sock.send_json({"dtype": str(a.dtype), "shape": a.shape, "seq": seq}, zmq.SNDMORE)
        sock.send(a, copy=False)
        seq += 1
    cpu_us.value = 1e6 * (time.process_time() - c0) / max(1, seq)
    sock.send_json({"end": True})
    sock.close(linger=-1)
    ctx.term()


def _receive(kind: str, endpoint: str, warmup_s: float, alive: Callable[[], bool]) -> tuple[Rate, float]:
    """Receive until the end marker; count what arrived after ``warmup_s`` of traffic."""
    import zmq

    def waited_too_long() -> None:
        if not alive():
            raise RuntimeError(f"{kind}: the sender process died before its end marker")

    if kind == "ours":
        from remembrall.pipeline.runtime import Stage, StageSpec

        stage = Stage(StageSpec(name="bench-rx", type="bench", inputs={"in": "pull+bind:" + endpoint}))
        sock = stage.socket("in")

        def recv() -> tuple[bool, np.ndarray | None, int]:
            while True:
                msg = stage.recv(sock, 1000)
                if msg is not None:
                    break
                waited_too_long()
            if msg.kind == "eos":
                return True, None, 0
            return False, msg.arrays[0], msg.seq
    else:
        stage = None
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, 64)
        sock.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
        sock.bind(endpoint)

        def recv() -> tuple[bool, np.ndarray | None, int]:
            while not sock.poll(1000, zmq.POLLIN):
                waited_too_long()
            md = sock.recv_json()
            if md.get("end"):
                return True, None, 0
            buf = sock.recv(copy=False)
            return False, np.frombuffer(buf.buffer, dtype=md["dtype"]).reshape(md["shape"]), md["seq"]

    try:
        t_first = t_count = None
        counted, t_last = 0, 0.0
        while True:
            end, arr, seq = recv()
            now = time.perf_counter()
            if end:
                break
            if arr.shape != TRANSPORT_SHAPE or arr[540, 960, 0] != (seq % 4) * 50:
                raise RuntimeError(f"{kind}: frame {seq} arrived corrupted")
            if t_first is None:
                t_first = now
            if t_count is None:
                if now - t_first >= warmup_s:
                    t_count = now  # the clock starts at this message; count those after it
                    c_count = time.process_time()
                continue
            counted += 1
            t_last, c_last = now, time.process_time()
        if t_count is None or counted == 0:
            raise RuntimeError(f"{kind}: transport run too short to measure")
        return Rate(counted, t_last - t_count), 1e6 * (c_last - c_count) / counted
    finally:
        if stage is not None:
            stage.close()
        else:
            sock.close(0)
            ctx.term()


def bench_transport(kind: str, seconds: float, warmup_s: float, tmp: Path) -> tuple[Rate, dict[str, float]]:
    """Frames/s from a sender process to this one, and the CPU µs per frame each side spent."""
    endpoint = f"ipc://{tmp}/bench-{kind}-{os.getpid()}.sock"
    sender = _ours_sender if kind == "ours" else _raw_sender
    ctx = mp.get_context("spawn")
    send_cpu = ctx.Value("d", 0.0)
    proc = ctx.Process(target=sender, args=("push+connect:" + endpoint if kind == "ours" else endpoint,
                                            seconds + warmup_s, send_cpu))
    proc.start()
    try:
        rate, recv_cpu = _receive(kind, endpoint, warmup_s, proc.is_alive)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return rate, {"send_cpu_us": send_cpu.value, "recv_cpu_us": recv_cpu}


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--video", help="video file (default: builtin:vtest, else a generated 720p clip)")
    p.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every measurement and to the pipeline run")
    p.add_argument("--seconds", type=float, help="length of each measurement (default 5, smoke 0.5)")
    p.add_argument("--rounds", type=int, help="alternating transport rounds (default 3, smoke 1)")
    p.add_argument("--skip", action="append", default=[],
                   choices=["transport", "decode", "infer", "pipeline", "ui", "onnxruntime", "mqtt"])
    p.add_argument("--mqtt-rounds", type=int, default=3,
                   help="plain/MQTT-sink pipeline run pairs for mqtt_sink_ratio (median of the pairs' ratios)")
    p.add_argument("--viewers", type=int, default=10, help="live-view clients for pipeline_fps_ui_watched")
    p.add_argument("--ui-rounds", type=int, default=3,
                   help="plain/watched pipeline run pairs for ui_watched_ratio (median of the pairs' ratios)")
    p.add_argument("--pipeline-seconds", type=float, default=30.0,
                   help="each pipeline run loops the video this long; the first --pipeline-warmup s are not timed")
    p.add_argument("--pipeline-warmup", type=float, default=6.0)
    p.add_argument("--smoke", action="store_true", help="tiny video and frames, short runs: checks the machinery")
    args = p.parse_args(argv)
    seconds = args.seconds or (0.5 if args.smoke else 5.0)
    rounds = args.rounds or (1 if args.smoke else 3)
    sets = (SMOKE_SETS if args.smoke else []) + args.set

    res: dict[str, Any] = {"machine": machine(), "smoke": args.smoke, "seconds_per_measurement": seconds,
                           "config": args.config, "overrides": sets, "loadavg_1m": {},
                           # OpenMP spin-waiting decides CPU inference speed on a busy machine
                           "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}}
    with tempfile.TemporaryDirectory(prefix="rb-thr-") as tmpname:
        tmp = Path(tmpname)
        if set(args.skip) >= {"decode", "infer", "pipeline"}:
            video, desc = Path(args.video or "-"), "none (transport only)"
        else:
            video, desc = pick_video(args.video, tmp, args.smoke)
        res["video"] = desc
        cfg = load_cfg(args.config, video, sets)
        res["decode_size"] = [cfg.decode.width, cfg.decode.height]
        res["batch_size"] = cfg.infer.batch_size

        if "transport" not in args.skip:
            runs: dict[str, list[float]] = {"raw": [], "ours": []}
            cpu: dict[str, list[dict[str, float]]] = {"raw": [], "ours": []}
            res["loadavg_1m"]["transport"] = loadavg_1m()
            for i in range(rounds):
                for kind in (("raw", "ours") if i % 2 == 0 else ("ours", "raw")):  # ABBA: drift hits both
                    rate, used = bench_transport(kind, seconds, min(1.0, seconds / 2), tmp)
                    runs[kind].append(rate.per_s)
                    cpu[kind].append(used)
            res["raw_zmq_fps"] = statistics.median(runs["raw"])
            res["transport_fps"] = statistics.median(runs["ours"])
            res["transport_efficiency"] = res["transport_fps"] / res["raw_zmq_fps"]
            res["transport_rounds"] = {k: [round(v, 1) for v in vs] for k, vs in runs.items()}
            # ratio within each round (same load), and CPU per frame: steadier than fps on a busy machine
            res["transport_efficiency_paired"] = statistics.median(
                o / r for o, r in zip(runs["ours"], runs["raw"], strict=True))
            res["transport_cpu_us_per_frame"] = {
                k: {side: round(statistics.median(u[side] for u in used), 1) for side in used[0]}
                for k, used in cpu.items()}
            res["transport_frame"] = "x".join(map(str, TRANSPORT_SHAPE)) + " uint8"
        if "decode" not in args.skip:
            res["loadavg_1m"]["decode"] = loadavg_1m()
            res["decode_fps"] = bench_decode(cfg, seconds).per_s
        infer_runs: list[Rate] = []
        measure_infer = None
        if "infer" not in args.skip:
            import torch

            res["loadavg_1m"]["infer"] = loadavg_1m()
            measure_infer = infer_bench(cfg)
            res["infer_threads"] = torch.get_num_threads()
            infer_runs.append(measure_infer(seconds * 2))
            infer_load = [loadavg_1m()]
            if cfg.infer.backend != "onnxruntime" and "onnxruntime" not in args.skip:
                ort_cfg = replace(cfg, infer=replace(cfg.infer, backend="onnxruntime"))
                res["onnxruntime_infer_fps"] = infer_bench(ort_cfg)(seconds * 2).per_s
                res["onnxruntime_speedup"] = res["onnxruntime_infer_fps"] / infer_runs[0].per_s
        if "pipeline" not in args.skip:
            res["loadavg_1m"]["pipeline"] = loadavg_1m()
            steady = {} if args.smoke else {"run_s": args.pipeline_seconds, "warmup_s": args.pipeline_warmup}
            run = bench_pipeline(args.config, video, sets, tmp, timeout=120 if args.smoke else 900, **steady)
            res["pipeline_fps"] = run.pop("fps")
            res["pipeline"] = run
            if "ui" not in args.skip:  # the same run with browsers on the live view, alternated with plain runs
                res["loadavg_1m"]["pipeline_ui_watched"] = loadavg_1m()
                timeout = 120 if args.smoke else 900
                plain, watched_fps, watched = [res["pipeline_fps"]], [], {}
                for r in range(args.ui_rounds if not args.smoke else 1):
                    if r:
                        plain.append(bench_pipeline(args.config, video, sets, tmp, timeout, **steady)["fps"])
                    watched = bench_pipeline(args.config, video, sets, tmp, timeout, viewers=args.viewers, **steady)
                    watched_fps.append(watched.pop("fps"))
                res["pipeline_fps_ui_watched"] = statistics.median(watched_fps)
                res["pipeline_ui_watched"] = watched  # the last watched run's details
                # each watched run against the plain run just before it: the same machine load
                res["ui_watched_ratio"] = statistics.median(w / p for w, p in zip(watched_fps, plain, strict=True))
                res["ui_rounds_fps"] = {"plain": [round(x, 2) for x in plain],
                                        "watched": [round(x, 2) for x in watched_fps]}
            if "mqtt" not in args.skip and shutil.which("mosquitto"):
                res["loadavg_1m"]["pipeline_mqtt"] = loadavg_1m()
                res.update(bench_mqtt_sink(args.config, video, sets, tmp, 1 if args.smoke else args.mqtt_rounds,
                                           120 if args.smoke else 900, 1000 if args.smoke else 20_000, **steady))
            res["loadavg_1m"]["end"] = loadavg_1m()
            if measure_infer is not None and not args.smoke:  # again: the load may have changed meanwhile
                infer_runs.append(measure_infer(seconds * 2))
                infer_load.append(loadavg_1m())
        if infer_runs:
            res["infer_fps"] = sum(r.items for r in infer_runs) / sum(r.seconds for r in infer_runs)
            res["infer_runs_fps"] = [round(r.per_s, 2) for r in infer_runs]  # before, after the pipeline
            # cores the stage alone kept busy (spinning OpenMP threads included) and its CPU per frame
            res["infer_alone_cores"] = round(sum(r.cpu_s for r in infer_runs) / sum(r.seconds for r in infer_runs), 2)
            res["infer_alone_cpu_ms_per_item"] = round(1000 * sum(r.cpu_s for r in infer_runs)
                                                       / sum(r.items for r in infer_runs), 2)
            res["infer_runs_loadavg_1m"] = infer_load
        if "pipeline_fps" in res:
            run = res["pipeline"]
            run["cpu_ms_per_frame"] = {k: round(1000 * v / run["frames"], 2) for k, v in run["cpu_s"].items()}
            # by stage name ("infer (infer)" -> "infer"): what each stage costs per item, and its peak RSS
            per_item = run["cpu_ms_per_frame_timed"] if not args.smoke else run["cpu_ms_per_frame"]
            res["stage_cpu_ms_per_item"] = {k.split(" (")[0]: v for k, v in per_item.items()}
            res["stage_rss_bytes"] = {k.split(" (")[0]: v for k, v in run["rss_bytes"].items()}
            if "decode_fps" in res and "infer_fps" in res:
                res["pipeline_efficiency"] = res["pipeline_fps"] / min(res["decode_fps"], res["infer_fps"])
            if run.get("infer_capacity_in_pipeline"):
                res["pipeline_vs_infer_in_pipeline"] = res["pipeline_fps"] / run["infer_capacity_in_pipeline"]
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.json, res)
    rows = [(k, res[k]) for k in ("decode_fps", "infer_fps", "onnxruntime_infer_fps", "pipeline_fps",
                                  "pipeline_fps_ui_watched",
                                  "ui_watched_ratio", "pipeline_fps_mqtt_sink", "mqtt_sink_ratio",
                                  "pipeline_efficiency", "pipeline_vs_infer_in_pipeline",
                                  "infer_alone_cores",
                                  "transport_fps", "raw_zmq_fps", "transport_efficiency") if k in res]
    for stage, ms in res.get("stage_cpu_ms_per_item", {}).items():
        rows.append((f"{stage}: CPU ms per item, peak RSS MiB",
                     f"{ms} ms, {res['stage_rss_bytes'].get(stage, 0) / 2**20:.0f} MiB"))
    rows.append(("loadavg (1/5/15 min, start)", " ".join(map(str, res["machine"]["loadavg"]))))
    print_table(rows, header=("measure", "value"))
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
