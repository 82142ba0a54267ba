"""The wire format between stages: a msgpack header part followed by raw array buffers.

Part 0 is a msgpack map (never pickle: a pickle from a socket is remote code execution).
Parts 1..n are the raw bytes of numpy arrays, sent zero-copy; their dtype and shape live in
the header under ``arrays``. A receiver validates everything before it trusts a byte, and a
malformed message raises :class:`MalformedMessage`, which stages count and drop.

>>> import numpy as np
>>> msg = Message("frame", stream="cam0", seq=3, pts=0.1, arrays=[np.zeros((2, 2, 3), np.uint8)])
>>> back = decode_message(encode_message(msg))
>>> back.kind, back.stream, back.seq, back.arrays[0].shape
('frame', 'cam0', 3, (2, 2, 3))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1

#: Message kinds the pipeline understands; anything else is malformed.
KINDS = frozenset(
    {
        "frame",  # a decoded video frame (arrays[0]: HxWx3 uint8 RGB)
        "text",  # a text item (fields: text; arrays optional)
        "prediction",  # infer's output for one item (fields: top, entropy, model_version, ...)
        "sample",  # a candidate for learning (arrays: embedding, probs[, image])
        "label",  # a label for a previously selected sample
        "eos",  # end of a stream
        "model_ready",  # a new specialized model checkpoint is available
        "rollback",  # go back to the previous model version
        "sleep",  # consolidate the episodic memory into the head now
        "recall",  # serve a specialist from the zoo
        "forget",  # remove a stream's memories, samples and own specialists
        "control",  # other control traffic
        "preview",  # infer's live side channel for the UI (fields: pred, top, ...; arrays: [frame])
        "ack",  # what a receiver made durable (fields: through + above, or ids); PROTOCOL.md §10
        "stages",  # the supervisor's restart count of every stage (fields: restarts)
    }
)

#: dtypes allowed on the wire (no object arrays, ever).
DTYPES = frozenset(
    {"uint8", "int8", "uint16", "int16", "int32", "int64", "uint32", "uint64", "float16", "float32", "float64",
     "bool"}
)

MAX_DIMS = 4
MAX_HEADER_BYTES = 1 << 20


class MalformedMessage(ValueError):
    """A message that fails validation; ``reason`` is a short label for the drop counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Message:
    """One pipeline message. ``fields`` carries the kind-specific header entries."""

    kind: str
    stream: str = ""
    seq: int = 0
    pts: float | None = None
    ts: float = field(default_factory=time.time)
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: list[np.ndarray] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def encode_message(msg: Message) -> list[Any]:
    """Return the multipart frames for ``msg``: header bytes then one buffer per array."""
    if msg.kind not in KINDS:
        raise ValueError(f"unknown message kind {msg.kind!r}")
    specs = []
    buffers: list[Any] = []
    for arr in msg.arrays:
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in DTYPES:
            raise ValueError(f"dtype {arr.dtype} cannot be sent")
        specs.append({"dtype": arr.dtype.name, "shape": list(arr.shape)})
        buffers.append(memoryview(arr).cast("B") if arr.size else b"")
    header = {
        "v": SCHEMA_VERSION,
        "kind": msg.kind,
        "stream": msg.stream,
        "seq": int(msg.seq),
        "pts": None if msg.pts is None else float(msg.pts),
        "ts": float(msg.ts),
        "arrays": specs,
    }
    for key, value in msg.fields.items():
        if key in header:
            raise ValueError(f"field {key!r} collides with a header entry")
        header[key] = value
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def _check(cond: bool, reason: str, detail: str) -> None:
    if not cond:
        raise MalformedMessage(reason, detail)


def decode_message(parts: Sequence[Any]) -> Message:
    """Validate and decode multipart frames (bytes or zmq.Frame) into a :class:`Message`."""
    _check(len(parts) >= 1, "empty", "no parts")
    raw = parts[0].buffer if hasattr(parts[0], "buffer") else parts[0]
    _check(len(raw) <= MAX_HEADER_BYTES, "oversized", f"header of {len(raw)} bytes")
    try:
        header = msgpack.unpackb(bytes(raw), raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedMessage("bad_header", f"not msgpack ({type(exc).__name__})") from None
    _check(isinstance(header, dict), "bad_header", "header is not a map")
    _check(header.get("v") == SCHEMA_VERSION, "bad_version", f"schema version {header.get('v')!r}")
    kind = header.get("kind")
    _check(kind in KINDS, "bad_kind", f"kind {kind!r}")
    stream = header.get("stream", "")
    _check(isinstance(stream, str) and len(stream) <= 256, "bad_header", "stream must be a short string")
    seq = header.get("seq", 0)
    _check(isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0, "bad_header", "seq must be int >= 0")
    pts = header.get("pts")
    _check(pts is None or isinstance(pts, (int, float)), "bad_header", "pts must be a number")
    ts = header.get("ts", 0.0)
    _check(isinstance(ts, (int, float)), "bad_header", "ts must be a number")
    specs = header.get("arrays", [])
    _check(isinstance(specs, list), "bad_header", "arrays must be a list")
    _check(len(specs) == len(parts) - 1, "bad_parts", f"{len(specs)} array specs but {len(parts) - 1} buffers")
    arrays = []
    for i, spec in enumerate(specs):
        _check(isinstance(spec, dict), "bad_header", f"array spec {i} is not a map")
        dtype, shape = spec.get("dtype"), spec.get("shape")
        _check(dtype in DTYPES, "bad_dtype", f"array {i} dtype {dtype!r}")
        _check(
            isinstance(shape, list)
            and len(shape) <= MAX_DIMS
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in shape),
            "bad_shape",
            f"array {i} shape {shape!r}",
        )
        buf = parts[i + 1].buffer if hasattr(parts[i + 1], "buffer") else parts[i + 1]
        dt = np.dtype(dtype)
        expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        _check(len(buf) == expected, "bad_size", f"array {i} has {len(buf)} bytes, shape needs {expected}")
        arrays.append(np.frombuffer(buf, dtype=dt).reshape(shape) if expected else np.zeros(shape, dt))
    fields = {k: v for k, v in header.items() if k not in ("v", "kind", "stream", "seq", "pts", "ts", "arrays")}
    return Message(kind, stream=stream, seq=seq, pts=None if pts is None else float(pts), ts=float(ts),
                   fields=fields, arrays=arrays)
