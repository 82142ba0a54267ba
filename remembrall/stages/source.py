"""What every source stage shares (video decode, text decode): stream lookup, counted drops,
end-of-stream, and resume progress for file sources restarted after a crash."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from remembrall.atomic import atomic_write_bytes
from remembrall.config import SourceConfig
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message
from remembrall.pipeline.runtime import Stage

log = logging.getLogger(__name__)


class MetricsSourceStats:
    """The :class:`~remembrall.io.frames.SourceStats` of a source stage: what a source reports, as Prometheus metrics."""

    def __init__(self, stage: str, stream: str) -> None:
        self._errors = m.DECODE_ERRORS.labels(stage, stream)
        self._dropped = m.DROPPED.labels(stage, stream, "decode_error")
        self._reconnects = m.SOURCE_RECONNECTS.labels(stage, stream)
        self._connected = m.SOURCE_CONNECTED.labels(stage, stream)

    def decode_error(self, n: int = 1) -> None:
        self._errors.inc(n)
        self._dropped.inc(n)

    def reconnect(self) -> None:
        self._reconnects.inc()

    def connected(self, up: bool) -> None:
        self._connected.set(1 if up else 0)


class SourceStage(Stage):
    """What the video and text source stages share: stream lookup, eos, resume progress."""

    def source_config(self) -> SourceConfig:
        stream = self.spec.streams[0]
        for src in self.cfg.sources:
            if src.id == stream:
                return src
        raise ValueError(f"stage {self.name}: no source with id {stream!r} in the config")

    @property
    def stream(self) -> str:
        return self.spec.streams[0]

    def _progress_path(self) -> Path:
        return Path(self.spec.run_dir) / "progress" / f"{self.stream}.json"

    def resume_after(self) -> int:
        """Index of the last item handed on by a previous life of this stage, or -1."""
        try:
            return int(json.loads(self._progress_path().read_text())["last_index"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def save_progress(self, last_index: int) -> None:
        atomic_write_bytes(self._progress_path(), json.dumps({"last_index": last_index}).encode())

    def send_eos(self, error: str | None = None) -> None:
        fields = {"error": error} if error else {}
        if not self.send(self.socket("out"), Message("eos", stream=self.stream, fields=fields), timeout_ms=30_000):
            log.error("%s: downstream did not take end-of-stream (waited 30 s, or up to the drain deadline)", self.name)

    def emit(self, msg: Message, live: bool) -> bool:
        """Hand ``msg`` downstream: drop-newest when live and full, block otherwise (until the
        drain deadline once stopping, which :meth:`Stage.send` counts)."""
        if self.send(self.socket("out"), msg, block=not live):
            m.FRAMES.labels(self.name, self.stream).inc()
            return True
        if live:
            m.DROPPED.labels(self.name, self.stream, "backpressure").inc()
        return False

    def pump(self, items: Iterable[Any], to_message: Callable[[Any], Message], *, live: bool, resumable: bool,
             failures: tuple[type[BaseException], ...]) -> tuple[int, int, BaseException | None]:
        """Hand every item (anything with an ``index``) downstream as ``to_message(item)``.

        A resumable source skips what a previous life of this stage already handed on and
        checkpoints its progress every second, and on the way out however the pump ends (a
        supervisor that died included). Returns (last index, items sent, the failure that ended
        the source early or None).
        """
        skip_to = self.resume_after() if resumable else -1
        if skip_to >= 0:
            log.info("%s: restarted; resuming after item %d", self.name, skip_to)
        latency = m.LATENCY.labels(self.name, self.stream)
        last_saved, last_index, sent = time.monotonic(), skip_to, 0
        failure = None
        try:
            t0 = time.perf_counter()
            for item in items:
                if self.stopping:
                    break
                if item.index > skip_to:
                    msg = to_message(item)
                    latency.observe(time.perf_counter() - t0)
                    sent += self.emit(msg, live)
                    last_index = item.index
                    if resumable and time.monotonic() - last_saved >= 1.0:
                        self.save_progress(last_index)
                        last_saved = time.monotonic()
                t0 = time.perf_counter()
        except failures as exc:
            failure = exc
        finally:
            if resumable:
                self.save_progress(last_index)
        return last_index, sent, failure
