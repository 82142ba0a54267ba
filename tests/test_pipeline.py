"""The whole video pipeline as users run it: real stage processes, real ipc sockets, real HTTP."""

from __future__ import annotations

import os
import signal
import time

import msgpack
import pytest
import zmq

from tests.pipeline_helpers import FAST, Run, metric_value, wait_for


def test_file_run_delivers_every_frame_and_exits_zero(tmp_path, make_video):
    video = make_video(tmp_path / "clip.mp4", frames=40)
    run = Run(tmp_path / "out", "--source", str(video), *FAST)
    assert run.wait() == 0, run.log()
    preds = run.predictions()
    assert [p["seq"] for p in preds] == list(range(40))
    first = preds[0]
    assert first["stream"] == "cam0" and first["model_version"] == 0
    assert len(first["top"]) == 5 and first["pred"] == first["top"][0][0]
    assert first["entropy"] > 0 and first["pts"] == 0.0
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert '"predictions": 40' in summary


def test_metrics_health_and_kill_restart(tmp_path, make_video):
    """Scrape the one endpoint while it runs; SIGKILL infer; the supervisor restarts it; the run
    continues to the end of the file and exits 0."""
    video = make_video(tmp_path / "long.mp4", frames=150, size=(160, 120))
    run = Run(tmp_path / "out", "--source", str(video), *FAST, "--set", "sources.0.loop=3")
    try:
        status = run.status()
        wait_for(lambda: metric_value(run.scrape()[1], "remembrall_frames_total", stage="infer") >= 16,
                 what="infer to process frames")
        code, body = run.scrape("/healthz")
        assert code == 200 and '"infer": "running"' in body
        assert wait_for(lambda: run.scrape("/readyz")[0] == 200, what="readyz")
        text = run.scrape()[1]
        for name in ("remembrall_frames_total", "remembrall_stage_latency_seconds_bucket",
                     "remembrall_queue_depth", "remembrall_model_version", "remembrall_stage_up"):
            assert name in text, name
        assert metric_value(text, "remembrall_frames_total", stage="decode-cam0", stream="cam0") > 0

        os.kill(status["stages"]["infer"]["pid"], signal.SIGKILL)
        new = wait_for(lambda: (s := run.status())["stages"]["infer"]["restarts"] == 1 and s, what="restart")
        assert new["stages"]["infer"]["pid"] != status["stages"]["infer"]["pid"]
        assert run.wait(180) == 0, run.log()
    finally:
        run.stop()
    preds = run.predictions()
    seqs = [p["seq"] for p in preds]
    # what was inside the killed process was sent again by the source (at-least-once) and the
    # sink wrote every frame exactly once
    assert sorted(seqs) == list(range(450)), "every frame predicted once"
    assert "stage infer died (signal 9); restarting" in run.log()
    assert "infer restarted; sending" in run.log()


def test_garbage_and_oversized_messages_are_dropped_and_counted(tmp_path, make_video):
    video = make_video(tmp_path / "clip.mp4", frames=120, size=(160, 120))
    run = Run(tmp_path / "out", "--source", str(video), *FAST, "--set", "sources.0.loop=4",
              "--set", "transport.max_message_bytes=1000000")
    try:
        status = run.status()
        addr = f"ipc://{status['sock_dir']}/sockets/infer.in"
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(addr)
        push.send(b"\x00\xffgarbage that is not msgpack")
        push.send_multipart([msgpack.packb({"v": 1, "kind": "frame", "arrays": [{"dtype": "uint8", "shape": [10, 10, 3]}]}),
                             b"short"])
        push.send_multipart([msgpack.packb({"v": 1, "kind": "frame", "arrays": [{"dtype": "object", "shape": [1]}]}),
                             b"x"])
        push.send_multipart([msgpack.packb({"v": 99, "kind": "frame"})])
        wait_for(lambda: metric_value(run.scrape()[1], "remembrall_frames_dropped_total", stage="infer") >= 4,
                 what="malformed drops to be counted")
        push.send(b"\x00" * 2_000_000)  # over max_message_bytes: zmq drops that peer, never buffers it
        push.close()
        ctx.term()
        text = run.scrape()[1]
        for reason in ("malformed_bad_header", "malformed_bad_size", "malformed_bad_dtype", "malformed_bad_version"):
            assert metric_value(text, "remembrall_frames_dropped_total", stage="infer", reason=reason) >= 1, reason
        assert run.wait(180) == 0, run.log()
    finally:
        run.stop()
    assert [p["seq"] for p in run.predictions()] == list(range(480))
    assert "dropped a malformed message" in run.log()


def test_sigint_drains_a_live_looping_source(tmp_path, make_video):
    video = make_video(tmp_path / "clip.mp4", frames=30, size=(160, 120))
    run = Run(tmp_path / "out", "--source", str(video), *FAST, "--set", "sources.0.loop=0")
    try:
        wait_for(lambda: len(run.predictions()) >= 40, what="predictions")
        run.proc.send_signal(signal.SIGINT)
        assert run.wait(60) == 0, run.log()
    finally:
        run.stop()
    seqs = [p["seq"] for p in run.predictions()]
    assert seqs == list(range(len(seqs))), "a graceful stop loses nothing already decoded"


def test_duration_stops_the_run(tmp_path, make_video):
    video = make_video(tmp_path / "clip.mp4", frames=30, size=(160, 120))
    t0 = time.monotonic()
    run = Run(tmp_path / "out", "--source", str(video), *FAST, "--set", "sources.0.loop=0", "--duration", "8")
    assert run.wait(90) == 0, run.log()
    assert time.monotonic() - t0 < 60
    assert "--duration 8 s reached" in run.log()
    assert len(run.predictions()) > 0


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "does not exist"),
        ("not_video", "cannot open as a video"),
    ],
)
def test_bad_sources_fail_clearly(tmp_path, setup, expected):
    if setup == "missing":
        src = tmp_path / "nope.mp4"
    else:
        src = tmp_path / "notes.mp4"
        src.write_bytes(os.urandom(50_000))
    t0 = time.monotonic()
    run = Run(tmp_path / "out", "--source", str(src), *FAST)
    rc = run.wait(90)
    assert rc == 2, run.log()
    assert expected in run.log().lower()
    assert time.monotonic() - t0 < 60


def test_truncated_video_decodes_what_it_can(tmp_path, truncated_video):
    run = Run(tmp_path / "out", "--source", str(truncated_video), *FAST)
    assert run.wait(90) == 0, run.log()
    n = len(run.predictions())
    assert 5 <= n < 50
    assert "decode" in run.log().lower() and "error" in run.log().lower()


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("infer:\n  batch_sise: 4\n", "infer.batch_sise: unknown key"),
        ("infer:\n  batch_size: big\n", "infer.batch_size: expected an integer"),
        ("infer:\n  batch_size: 0\n", "infer.batch_size: must be >= 1"),
        ("sources: {}\n", "sources: expected a list"),
        ("decode: [1, 2\n", "not valid YAML"),
    ],
)
def test_invalid_config_names_the_key_and_file(tmp_path, yaml_text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    run = Run(tmp_path / "out", config=str(cfg))
    assert run.wait(60) == 2
    log = run.log()
    assert expected in log and str(cfg) in log, log


def test_predictions_published_on_a_zmq_pub_socket(tmp_path, make_video):
    import json
    import socket as pysocket

    with pysocket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    video = make_video(tmp_path / "clip.mp4", frames=60, size=(160, 120))
    run = Run(tmp_path / "out", "--source", str(video), *FAST, "--set", "sources.0.loop=0",
              "--set", f"sink.pub=pub+bind:tcp://127.0.0.1:{port}")
    try:
        got = []
        deadline = time.monotonic() + 60
        while len(got) < 10 and time.monotonic() < deadline:
            if sub.poll(500):
                got.append(json.loads(sub.recv_string()))
        assert len(got) == 10, run.log()
        assert all(r["stream"] == "cam0" and "pred" in r for r in got)
        seqs = [r["seq"] for r in got]
        assert seqs == sorted(seqs)
    finally:
        run.stop()
        sub.close(0)
        ctx.term()
