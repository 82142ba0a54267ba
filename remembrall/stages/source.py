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

    def read_progress(self) -> dict[str, int]:
        """What a previous life of this stage recorded ({} when nothing usable)."""
        try:
            state = json.loads(self._progress_path().read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in state.items() if isinstance(v, int)} if isinstance(state, dict) else {}

    def write_progress(self, state: dict[str, int]) -> bool:
        try:
            atomic_write_bytes(self._progress_path(), json.dumps(state).encode())
        except OSError as exc:  # a restart would replay more; the stream goes on
            self.write_failed("progress", exc)
            return False
        return True

    def resume_after(self) -> int:
        """Index of the last item a previous life of this stage handed on (with at-least-once
        delivery: the last one the sink acknowledged), or -1."""
        return self.read_progress().get("last_index", -1)

    def save_progress(self, last_index: int) -> None:
        self.write_progress({"last_index": last_index})

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
             failures: tuple[type[BaseException], ...], on_acked: Callable[[int], None] | None = None
             ) -> tuple[int, int, BaseException | None]:
        """Hand every item (anything with an ``index``; ``None`` is an idle source's heartbeat)
        downstream as ``to_message(item)``.

        A restarted life must never reuse a seq (the sink would drop its items as written ones):

        - a ``resumable`` (finite, re-readable) source skips what its previous life handed on
          (with at-least-once delivery: what the sink acknowledged), checkpointing its progress
          every second and on the way out, however the pump ends;
        - any other (a camera, a socket, a broker, stdin) numbers each life after every seq its
          previous life could have used (:class:`SeqReservation`).

        ``on_acked(index)``: every item up to ``index`` is written by the sink (without
        at-least-once delivery: handed on). A finite source waits for the sink to acknowledge
        everything before it returns. Returns (last index, items sent, the failure that ended
        the source early or None).
        """
        sender = None if live else self._acked_sender()
        skip_to = self.resume_after() if resumable else -1
        seqs = None if resumable else SeqReservation(self)
        offset = 0 if seqs is None else seqs.base  # seq = index + offset
        first_seq = skip_to + 1 + offset
        if sender is not None:  # acknowledgements count seqs
            sender.acked_through = first_seq - 1
        if resumable and skip_to >= 0:
            log.info("%s: restarted; resuming after item %d", self.name, skip_to)
        latency = m.LATENCY.labels(self.name, self.stream)
        last_saved, last_index, sent, reported = time.monotonic(), skip_to, 0, skip_to
        failure = None

        def progress() -> int:  # an item index
            return last_index if sender is None else min(last_index, sender.acked_through - offset)

        def report_acked() -> None:
            nonlocal reported
            if on_acked is not None and progress() > reported:
                reported = progress()
                on_acked(reported)

        try:
            t0 = time.perf_counter()
            for item in items:
                if self.stopping:
                    break
                if item is None:  # the source is idle: take acknowledgements meanwhile
                    if sender is not None:
                        sender.poll(0)
                        report_acked()
                elif item.index > skip_to:
                    msg = to_message(item)
                    msg.seq = item.index if seqs is None else seqs.seq(item.index)
                    latency.observe(time.perf_counter() - t0)
                    if sender is None:
                        sent += self.emit(msg, live)
                    else:
                        msg.fields["once"] = first_seq  # the sink writes it once, and acknowledges it
                        if sender.send(msg.seq, msg):
                            m.FRAMES.labels(self.name, self.stream).inc()
                            sent += 1
                    last_index = item.index
                    report_acked()
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
            report_acked()
            if resumable:
                self.save_progress(progress())
        return last_index, sent, failure


class SeqReservation:
    """Seqs for a source that cannot resume where it stopped (a camera, a socket, stdin).

    Its items count from 0 in every life, but the sink writes each (stream, seq) of a stream
    delivered at least once only once, and a reader of the output wants seqs that do not repeat.
    So each life numbers its items after every seq the previous one could have used: it
    reserves them in blocks of :data:`BLOCK`, one small atomic write per block, before use.
    """

    BLOCK = 1024

    def __init__(self, stage: SourceStage) -> None:
        self.stage = stage
        self.base = stage.read_progress().get("reserved", -1) + 1
        self.reserved = self.base - 1

    def seq(self, index: int) -> int:
        """The seq of this life's ``index``-th item; a new block is reserved (written) first. A
        write that fails is tried again with the next item (the stage counts the error)."""
        seq = self.base + index
        if seq > self.reserved and self.stage.write_progress({"reserved": seq + self.BLOCK}):
            self.reserved = seq + self.BLOCK
        return seq
