"""The text_decode stage as a real process (and in-process for its metrics), over real sockets."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq
from prometheus_client import REGISTRY

from remembrall.config import config_to_dict, load_config
from remembrall.pipeline.messages import Message, decode_message
from remembrall.pipeline.runtime import EXIT_BAD_SOURCE, StageSpec


def _spec(tmp_path: Path, source: dict[str, Any], text: dict[str, Any] | None = None,
          name: str = "text-s0") -> tuple[StageSpec, str]:
    overrides: dict[str, Any] = {"sources": [{"id": "s0", "modality": "text", **source}],
                                 "text": {"poll_interval_s": 0.02, "checkpoint_interval_s": 0.05, **(text or {})}}
    cfg = load_config(None, overrides)
    addr = f"ipc://{tmp_path}/sock/text.out"
    spec = StageSpec(name=name, type="text_decode", outputs={"out": f"push+connect:{addr}"}, streams=["s0"],
                     config=config_to_dict(cfg), run_dir=str(tmp_path / "run"), out_dir=str(tmp_path / "out"))
    return spec, addr


def _start(tmp_path: Path, spec: StageSpec) -> subprocess.Popen[bytes]:
    path = tmp_path / f"{spec.name}.json"
    path.write_text(spec.to_json())
    env = {**os.environ, "REMEMBRALL_LOG_FORMAT": "text"}
    return subprocess.Popen([sys.executable, "-m", "remembrall.stages.worker", str(path)], env=env,
                            stderr=subprocess.PIPE)


def _pull(addr: str, hwm: int = 1000) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    os.makedirs(addr[len("ipc://"):].rsplit("/", 1)[0], exist_ok=True)
    sock.bind(addr)
    return sock


def _recv(sock: zmq.Socket, n: int | None = None, timeout: float = 20.0) -> list[Message]:
    """Messages until ``n`` arrived or (n=None) until an eos."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(50):
            msg = decode_message(sock.recv_multipart())
            out.append(msg)
            if (n is None and msg.kind == "eos") or (n is not None and len(out) >= n):
                return out
    raise AssertionError(f"timed out with {[(m.kind, m.get('text')) for m in out]}")


def test_finite_file_to_tokens_then_eos_and_clean_exit(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"text": "alpha", "id": "a1", "label": "sport", "ts": 1.5}\n'
                     b"\xff\xfe\x00\x00garbage\n{broken json\nplain beta\n")
    spec, addr = _spec(tmp_path, {"uri": str(data)})
    sock = _pull(addr)
    proc = _start(tmp_path, spec)
    try:
        msgs = _recv(sock)
        _, err = proc.communicate(timeout=20)
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert [m.kind for m in msgs] == ["text", "text", "eos"]
    a, b, eos = msgs
    assert (a.stream, a.seq, a.get("text"), a.get("id"), a.get("label"), a.get("event_ts")) == \
        ("s0", 0, "alpha", "a1", "sport", 1.5)
    assert (b.seq, b.get("text"), b.get("id"), b.get("position")) == (1, "plain beta", f"{data}:4", f"{data}:4")
    assert "label" not in b.fields and "error" not in eos.fields
    log = err.decode()
    assert f"{data}:2" in log and f"{data}:3" in log  # bad lines reported with their position
    assert "2 records sent" in log


def test_empty_directory_is_just_an_eos(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    spec, addr = _spec(tmp_path, {"uri": str(tmp_path / "inbox")})
    sock = _pull(addr)
    proc = _start(tmp_path, spec)
    try:
        msgs = _recv(sock)
        proc.communicate(timeout=20)
    finally:
        sock.close()
    assert proc.returncode == 0 and [(m.kind, m.fields) for m in msgs] == [("eos", {})]


def test_missing_source_exits_bad_source_with_eos(tmp_path: Path) -> None:
    spec, addr = _spec(tmp_path, {"uri": str(tmp_path / "absent.txt")})
    sock = _pull(addr)
    proc = _start(tmp_path, spec)
    try:
        msgs = _recv(sock)
        proc.communicate(timeout=20)
    finally:
        sock.close()
    assert proc.returncode == EXIT_BAD_SOURCE
    assert msgs[-1].kind == "eos" and "no such file" in msgs[-1].get("error")


def test_followed_file_until_sigterm_then_resume_after_restart(tmp_path: Path) -> None:
    log_path = tmp_path / "app.log"
    log_path.write_text("one\ntwo\n")
    spec, addr = _spec(tmp_path, {"uri": str(log_path), "live": "yes"}, {"backpressure": "block"})
    sock = _pull(addr)
    proc = _start(tmp_path, spec)
    try:
        assert [m.get("text") for m in _recv(sock, 2)] == ["one", "two"]
        with log_path.open("a") as f:
            f.write("three\n")
        assert _recv(sock, 1)[0].get("text") == "three"
        time.sleep(0.3)  # > checkpoint interval: the offset after "three" is on disk
        proc.send_signal(signal.SIGTERM)
        assert _recv(sock)[-1].kind == "eos"
        proc.communicate(timeout=20)
        assert proc.returncode == 0
        with log_path.open("a") as f:
            f.write("four\n")  # written while the stage was down
        proc = _start(tmp_path, spec)
        got = _recv(sock, 1)[0]
        assert (got.get("text"), got.get("position")) == ("four", f"{log_path}:4")
        proc.send_signal(signal.SIGTERM)
        rest = _recv(sock)
        assert [m.kind for m in rest] == ["eos"]  # nothing re-read
        proc.communicate(timeout=20)
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, Any]:
    conn.request("POST", "/ingest", body=body)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_live_http_source_drops_on_backpressure_and_counts_bad_lines(tmp_path: Path) -> None:
    """In-process (so the test can read the stage's Prometheus counters): a live source whose
    consumer never reads drops the newest records, counted, instead of blocking."""
    from remembrall.stages.text_decode import TextDecodeStage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec, addr = _spec(tmp_path, {"uri": f"http+listen://127.0.0.1:{port}/ingest"}, name="text-live")
    spec.config["transport"]["hwm"] = 2
    sock = _pull(addr, hwm=2)
    stage = TextDecodeStage(StageSpec(**json.loads(spec.to_json())))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(stage.run()), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the stage listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        body = "".join(json.dumps({"text": f"doc {i}", "id": i}) + "\n" for i in range(200)).encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        assert _post(conn, body)[0] == 200
        code, payload = _post(conn, b'{"text": 1}\n')
        assert code == 400 and payload["errors"][0]["line"] == 1
        deadline = time.monotonic() + 10
        while _metric("remembrall_frames_total", stage="text-live", stream="s0") + \
                _metric("remembrall_frames_dropped_total", stage="text-live", stream="s0",
                        reason="backpressure") < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        sent = _metric("remembrall_frames_total", stage="text-live", stream="s0")
        dropped = _metric("remembrall_frames_dropped_total", stage="text-live", stream="s0", reason="backpressure")
        assert sent + dropped == 200 and dropped > 100 and sent >= 2
        assert _metric("remembrall_frames_dropped_total", stage="text-live", stream="s0", reason="bad_record") == 1
        assert _post(conn, b'{"eos": true}\n')[0] == 200
        conn.close()
        msgs = _recv(sock, timeout=20)  # drain: the eos waits behind what was queued
        assert msgs[-1].kind == "eos"
        assert [m.get("id") for m in msgs[:-1]] == sorted(m.get("id") for m in msgs[:-1])
        t.join(10)
        assert result == [0]
    finally:
        stage.stopping = True
        t.join(5)
        sock.close()  # before stage.close(): it terminates the shared context, waiting for every socket
        stage.close()



def test_text_profile_config_loads_and_builds_a_text_graph(tmp_path: Path) -> None:
    from remembrall.pipeline.graph import build_graph

    cfg = load_config(Path(__file__).parents[1] / "configs" / "text.yaml")
    text = cfg.text
    assert (text.max_tokens, text.format, cfg.sources[0].modality) == (128, "auto", "text")
    specs = build_graph(cfg, tmp_path / "run", tmp_path / "out")
    assert [s.type for s in specs if s.streams == ["text0"] and s.type.endswith("decode")] == ["text_decode"]
    infer = next(s for s in specs if s.type == "infer")
    assert infer.params["modalities"] == ["text"]
