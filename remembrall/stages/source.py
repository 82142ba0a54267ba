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
from remembrall.pipeline.delivery import AckedSender, Outbox, RestartWatch
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
    """What the video and text source stages share: stream lookup, eos, resume progress, and
    at-least-once delivery of a finite source (see :mod:`remembrall.pipeline.delivery`)."""

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
        """Index of the last item a previous life of this stage handed on (with at-least-once
        delivery: the last one the sink acknowledged), or -1."""
        try:
            return int(json.loads(self._progress_path().read_text())["last_index"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def save_progress(self, last_index: int) -> None:
        try:
            atomic_write_bytes(self._progress_path(), json.dumps({"last_index": last_index}).encode())
        except OSError as exc:  # a restart would replay more; the stream goes on
            self.write_failed("progress", exc)

    def send_eos(self, error: str | None = None) -> None:
        fields = {"error": error} if error else {}
        eos = Message("eos", stream=self.stream, fields=fields)
        if self.sender is not None:
            self.sender.trailer = [eos]  # a stage on the way that restarts now needs it again
        if not self.send(self.socket("out"), eos, timeout_ms=30_000):
            log.error("%s: downstream did not take end-of-stream (waited 30 s, or up to the drain deadline)", self.name)

    def _acked_sender(self) -> AckedSender | None:
        """At-least-once delivery for a finite source, when the graph wires the sink's acks."""
        if not self.has("acks"):
            return None
        restarts = self.socket("restarts") if self.has("restarts") else None
        self.sender = AckedSender(self, self.socket("out"), self.socket("acks"), restarts,
                                  Outbox(self.cfg.transport.window),
                                  RestartWatch(self.spec.params.get("resend_on", [])), stream=self.stream)
        return self.sender

    def _settle(self, sender: AckedSender) -> None:
        left = sender.settle(self.cfg.supervisor.drain_timeout_s)
        if left:
            m.DROPPED.labels(self.name, self.stream, "unacknowledged").inc(len(left))
            log.error("%s: %d items were never acknowledged by the sink (seq %d..%d); counted as "
                      "reason=unacknowledged", self.name, len(left), left[0].seq, left[-1].seq)

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

        A resumable source skips what a previous life of this stage already handed on (with
        at-least-once delivery: what the sink acknowledged) and checkpoints its progress every
        second, and on the way out however the pump ends (a supervisor that died included). A
        finite source waits for the sink to acknowledge everything before it returns. Returns
        (last index, items sent, the failure that ended the source early or None).
        """
        sender = None if live else self._acked_sender()

        def progress() -> int:
            return last_index if sender is None else min(last_index, sender.acked_through)

        skip_to = self.resume_after() if resumable else -1
        if sender is not None:
            sender.acked_through = skip_to
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
                    if sender is None:
                        sent += self.emit(msg, live)
                    elif sender.send(item.index, msg):
                        m.FRAMES.labels(self.name, self.stream).inc()
                        sent += 1
                    last_index = item.index
                    if resumable and time.monotonic() - last_saved >= 1.0:
                        self.save_progress(progress())
                        last_saved = time.monotonic()
                t0 = time.perf_counter()
        except failures as exc:
            failure = exc
        finally:
            if resumable:
                self.save_progress(progress())
        if sender is not None:
            self._settle(sender)
            if resumable:
                self.save_progress(progress())
        return last_index, sent, failure
