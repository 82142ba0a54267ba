"""Infer's live side channel for the UI: the newest frame (or text) of each stream with its
prediction, at most ``ui.live_fps`` per stream, and only while somebody watches.

The socket is an XPUB: it hears when the first viewer subscribes and when the last one leaves
(ZeroMQ forwards those, also for a viewer that vanished), so with nobody watching infer does not
even build a message. Sends never block: a full queue drops the frame, never the pipeline.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import zmq

from remembrall.pipeline.messages import Message, encode_message


class PreviewPublisher:
    """Rate-limited, watcher-gated preview messages on an XPUB socket."""

    def __init__(self, sock: zmq.Socket, fps: float) -> None:
        self.sock = sock
        self.period = 1.0 / fps
        self.watched = False
        self._last: dict[str, float] = {}
        self.sent = 0
        self.dropped = 0

    def poll(self) -> None:
        """Read (un)subscriptions: first byte 1 = a viewer came, 0 = the last one left."""
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame:
                self.watched = frame[0] == 1

    def due(self, stream: str, now: float | None = None) -> bool:
        """Whether ``stream`` may send a preview now (somebody watches and its period has passed)."""
        if not self.watched:
            return False
        now = time.monotonic() if now is None else now
        return now - self._last.get(stream, -1e9) >= self.period

    def offer(self, prediction: Message, item: Any) -> bool:
        """Send ``prediction``'s preview (``item``: the frame, H×W×3 uint8, or the text) if due."""
        now = time.monotonic()
        if not self.due(prediction.stream, now):
            return False
        self._last[prediction.stream] = now
        fields = {k: prediction.get(k) for k in ("id", "pred", "top", "model_version", "label")}
        arrays: list[np.ndarray] = []
        if isinstance(item, np.ndarray):
            arrays = [np.ascontiguousarray(item)]
        elif isinstance(item, str):
            fields["text"] = item[:2000]
        msg = Message("preview", stream=prediction.stream, seq=prediction.seq, pts=prediction.pts, ts=prediction.ts,
                      fields=fields, arrays=arrays)
        try:
            self.sock.send_multipart(encode_message(msg), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True
