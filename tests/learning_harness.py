"""Helpers for the learning-stage tests: stage specs on real ipc sockets, samples, collectors."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from remembrall.config import config_to_dict, load_config
from remembrall.pipeline.messages import Message, decode_message, encode_message
from remembrall.pipeline.runtime import StageSpec


def ipc(tmp: Path, name: str) -> str:
    return f"ipc://{tmp}/s-{name}"


def spec(tmp: Path, name: str, type_: str, inputs: dict[str, str], outputs: dict[str, str],
         overrides: dict[str, Any] | None = None, streams: list[str] | None = None) -> StageSpec:
    cfg = load_config(None, overrides or {})
    return StageSpec(name=name, type=type_, inputs=inputs, outputs=outputs, streams=streams or ["cam"],
                     config=config_to_dict(cfg), run_dir=str(tmp), out_dir=str(tmp))


def start(stage: Any, hold: threading.Event | None = None) -> threading.Thread:
    """Run a stage in a thread with its own ZeroMQ context (Stage.close() terminates it).

    With ``hold``, a finished stage keeps its sockets open until the event is set, as the
    supervisor's release protocol does: a PUSH peer that closes while its consumer is behind
    can lose the tail of the stream (end-of-stream included).
    """
    stage.ctx = zmq.Context()
    result: dict[str, Any] = {}

    def main() -> None:
        try:
            result["rc"] = stage.run()
            if hold is not None:
                hold.wait(120)
        finally:
            stage.close()

    t = threading.Thread(target=main, daemon=True)
    t.result = result  # type: ignore[attr-defined]
    t.start()
    return t


def sample(i: int, emb: np.ndarray, label: str | None = None, entropy: float | None = 1.0,
           image: bool = True, split: str | None = None, stream: str = "cam") -> Message:
    arrays = [np.asarray(emb, np.float32), np.full(3, 1 / 3, np.float32)]
    if image:
        arrays.append(np.full((8, 8, 3), i % 255, np.uint8))
    fields: dict[str, Any] = {"id": f"{stream}:{i}", "entropy": entropy, "pred": "a", "model_version": 0}
    if label is not None:
        fields["label"] = label
    if split is not None:
        fields["split"] = split
    return Message("sample", stream=stream, seq=i, fields=fields, arrays=arrays)


def pusher(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(endpoint)
    return sock


def send(sock: zmq.Socket, msg: Message) -> None:
    sock.send_multipart(encode_message(msg), copy=False)


def collect_until_eos(sock: zmq.Socket, streams: int = 1, timeout_s: float = 120.0) -> list[Message]:
    out, eos = [], 0
    deadline = time.monotonic() + timeout_s
    while eos < streams:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no eos after {timeout_s} s ({len(out)} messages)")
        if sock.poll(100, zmq.POLLIN):
            msg = decode_message(sock.recv_multipart())
            if msg.kind == "eos":
                eos += 1
            else:
                out.append(msg)
    return out


def clusters(n_per: int, classes: list[str], dim: int, seed: int, spread: float = 1.0
             ) -> tuple[np.ndarray, list[str]]:
    """Gaussian clusters (one per class) with fixed centres: a learnable stand-in for embeddings."""
    centres = np.random.default_rng(1234).normal(size=(26, dim)) * 3.0 / np.sqrt(dim) * 8
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n_per):
        for c in classes:
            xs.append(centres[ord(c) - ord("a")] + spread * rng.normal(size=dim) / np.sqrt(dim) * 8)
            ys.append(c)
    return np.asarray(xs, np.float32), ys
