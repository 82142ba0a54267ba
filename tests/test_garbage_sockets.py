"""10,000 random multipart messages into every input socket of a running, learning pipeline:
no stage crashes or restarts, every message is counted as a drop, and the pipeline goes on
predicting."""

from __future__ import annotations

import re
import time

import msgpack
import numpy as np
import zmq

from tests.pipeline_helpers import FAST, Run, labelled_clip, wait_for

#: the PULL sockets stages bind (the graph's ipc names)
INPUTS = ("infer.in", "sink.in", "select.in", "label.in", "buffer.in", "retrain.in", "retrain.control")
PER_SOCKET = 10_000


def garbage(rng: np.random.Generator) -> list[bytes]:
    """Random bytes, or a msgpack header that looks right but lies (wrong kinds, sizes, dtypes). A
    well-formed ``eos`` is left out: ending a stream is a legitimate message, not garbage."""
    n_parts = int(rng.integers(1, 4))
    if rng.random() < 0.5:
        return [rng.bytes(int(rng.integers(0, 64))) for _ in range(n_parts)]
    header = {"v": int(rng.integers(0, 3)), "kind": ["frame", "sample", "label", "prediction", "x"][int(rng.integers(0, 5))],
              "stream": "cam0", "seq": int(rng.integers(-5, 5)),
              "arrays": [{"dtype": ["uint8", "float32", "object"][int(rng.integers(0, 3))],
                          "shape": [int(rng.integers(-1, 5)), 3]} for _ in range(n_parts - 1)]}
    return [msgpack.packb(header), *[rng.bytes(int(rng.integers(0, 40))) for _ in range(n_parts - 1)]]


def drops_by_stage(metrics: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for stage, value in re.findall(r'remembrall_frames_dropped_total\{[^}]*stage="([^"]+)"[^}]*\} ([0-9.e+]+)', metrics):
        out[stage] = out.get(stage, 0.0) + float(value)
    return out


def test_ten_thousand_garbage_messages_per_socket(tmp_path, make_video) -> None:
    video = labelled_clip(tmp_path, make_video)
    # a camera's pace, so the stages have time to read the garbage between frames
    run = Run(tmp_path / "out", *FAST, "--source", str(video), "--set", "sources.0.loop=0",
              "--set", "sources.0.max_fps=10", "--set", "learn=true",
              "--set", "label.labeler=oracle", "--set", "infer.head=none", "--set", "select.rate=0.3")
    try:
        status = run.status()
        sockets = status["sock_dir"] + "/sockets/"
        before = drops_by_stage(run.scrape()[1])
        ctx = zmq.Context()
        rng = np.random.default_rng(0)
        senders = []
        for name in INPUTS:  # all sockets at once: each stage reads its share at its own pace
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, PER_SOCKET + 10)
            sock.connect("ipc://" + sockets + name)
            for _ in range(PER_SOCKET):
                sock.send_multipart(garbage(rng))
            senders.append(sock)  # kept connected: ZeroMQ discards what a vanished peer left unread
        stage_of = {"infer.in": "infer", "sink.in": "sink", "select.in": "select", "label.in": "label",
                    "buffer.in": "buffer", "retrain.in": "retrain"}
        expected = {stage: PER_SOCKET for stage in stage_of.values()}
        expected["retrain"] += PER_SOCKET  # its control socket too

        def all_counted() -> bool:
            now = drops_by_stage(run.scrape()[1])
            return all(now.get(s, 0) - before.get(s, 0) >= n for s, n in expected.items())

        try:
            wait_for(all_counted, timeout=120, interval=1,
                     what=f"the drops counted\n{drops_by_stage(run.scrape()[1])}")
        finally:
            for sock in senders:
                sock.close(0)
            ctx.term()
        after = run.status()["stages"]
        assert all(s["restarts"] == 0 and s["state"] == "running" for s in after.values()), after
        seen = len(run.predictions())
        wait_for(lambda: len(run.predictions()) > seen + 20, timeout=60, what="predictions to go on")
        time.sleep(0.5)
    finally:
        run.stop()
    assert "Traceback" not in run.log()
