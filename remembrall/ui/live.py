"""The Live page's feed: infer's preview side channel turned into JPEG events for every viewer.

One thread owns the SUB socket to infer's XPUB ``preview`` and holds it open only while at least
one browser watches, so with nobody watching infer sends nothing (it hears the unsubscribe). Each
preview frame is JPEG-encoded once (Pillow) and handed to every viewer's queue of one: a slow
browser skips frames, it never holds up the feed, let alone the pipeline.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from remembrall.io.endpoints import open_socket
from remembrall.monitoring import metrics as m
from remembrall.pipeline.control import socket_path
from remembrall.pipeline.messages import MalformedMessage, decode_message
from remembrall.ui.auth import Refused

log = logging.getLogger(__name__)

JPEG_QUALITY = 80
#: frames bigger than this on a side are scaled down before encoding (the page shows a preview)
MAX_SIDE = 640


def jpeg_bytes(frame: np.ndarray) -> bytes:
    """An H×W×3 uint8 RGB frame as JPEG (Pillow), scaled to at most MAX_SIDE."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), "RGB")
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


class Viewer:
    """One browser's queue: holds the newest event per stream, older ones are replaced."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.latest: dict[str, dict[str, Any]] = {}
        self.ready = asyncio.Event()
        self.closed = False

    def push(self, event: dict[str, Any]) -> None:  # on the event loop
        self.latest[event["stream"]] = event
        self.ready.set()

    def close(self) -> None:  # on the event loop: the server is stopping, end the stream cleanly
        self.closed = True
        self.ready.set()

    async def next(self, timeout: float) -> list[dict[str, Any]] | None:
        """The events that arrived since the last call (empty after ``timeout`` seconds; None once
        the feed closed)."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except asyncio.TimeoutError:
            return []
        if self.closed:
            return None
        self.ready.clear()
        events, self.latest = list(self.latest.values()), {}
        return events


class LiveFeed:
    """Preview messages from infer, as JSON events with an inline JPEG, for up to ``max_viewers``."""

    def __init__(self, sock_dir: str | Path, max_viewers: int, max_message_bytes: int = 64 << 20) -> None:
        self.address = f"sub+connect:ipc://{socket_path(sock_dir, 'preview')}"
        self.max_viewers = max_viewers
        self.max_message_bytes = max_message_bytes
        self.viewers: set[Viewer] = set()
        self.latest: dict[str, dict[str, Any]] = {}  # stream -> newest event (a new viewer starts with it)
        self.received = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ui-live", daemon=True)

    def start(self) -> LiveFeed:
        self._thread.start()
        return self

    def close_viewers(self) -> None:
        """End every open event stream (before the server shuts down, so none is cut mid-answer)."""
        with self._lock:
            viewers = list(self.viewers)
        for v in viewers:
            try:
                v.loop.call_soon_threadsafe(v.close)
            except RuntimeError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    # ------------------------------------------------------------------ viewers (event loop side)
    def join(self) -> Viewer:
        with self._lock:
            if len(self.viewers) >= self.max_viewers:
                raise Refused(503, f"{self.max_viewers} live viewers already (ui.max_viewers); try again later")
            viewer = Viewer(asyncio.get_running_loop())
            self.viewers.add(viewer)
            m.UI_VIEWERS.set(len(self.viewers))
        for event in list(self.latest.values()):
            viewer.push(event)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        with self._lock:
            self.viewers.discard(viewer)
            m.UI_VIEWERS.set(len(self.viewers))

    # ------------------------------------------------------------------ feed thread
    def _event(self, data: list[bytes]) -> dict[str, Any] | None:
        try:
            msg = decode_message(data)
        except MalformedMessage as exc:
            log.debug("ui: malformed preview message: %s", exc)
            return None
        if msg.kind != "preview":
            return None
        top = msg.get("top") or []
        event: dict[str, Any] = {"stream": msg.stream, "seq": msg.seq, "ts": msg.ts, "pred": msg.get("pred"),
                                 "score": top[0][1] if top and len(top[0]) > 1 else None, "top": top[:3],
                                 "model_version": msg.get("model_version"), "label": msg.get("label"),
                                 "text": msg.get("text"), "received": time.time()}
        if msg.arrays:
            frame = msg.arrays[0]
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                return None
            event["jpeg"] = base64.b64encode(jpeg_bytes(frame)).decode("ascii")
        return event

    def _run(self) -> None:
        ctx = zmq.Context()
        sock: zmq.Socket | None = None
        try:
            while not self._stop.is_set():
                watched = bool(self.viewers)
                if watched and sock is None:
                    sock = open_socket(ctx, self.address, hwm=4, linger_ms=0,
                                       max_message_bytes=self.max_message_bytes)
                elif not watched and sock is not None:
                    sock.close(0)  # infer hears the last subscriber leave and stops sending
                    sock = None
                if sock is None or not sock.poll(100):
                    if sock is None:
                        self._stop.wait(0.1)
                    continue
                event = self._event(sock.recv_multipart(copy=True))
                if event is None:
                    continue
                self.received += 1
                m.UI_LIVE_FRAMES.labels(event["stream"]).inc()
                self.latest[event["stream"]] = event
                with self._lock:
                    viewers = list(self.viewers)
                for v in viewers:
                    try:
                        v.loop.call_soon_threadsafe(v.push, event)
                    except RuntimeError:  # its event loop closed
                        self.leave(v)
        finally:
            if sock is not None:
                sock.close(0)
            ctx.term()
