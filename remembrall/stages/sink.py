"""The sink stage: predictions out as JSON Lines (a file and/or a ZMQ PUB socket).

It is the end of the graph, so it is where end-to-end latency is measured and where delivery
becomes exactly-once: each (stream, seq) is written once, and what is flushed is acknowledged to
the sources, which send again whatever a crashed stage lost. The file is opened for append: a
restarted sink keeps what its previous life wrote and knows, from its checkpoint and the lines
after it, what not to write twice.

With ``sink.brokers`` every written line is also published to MQTT topics and Redis Streams
(:mod:`remembrall.io.brokers.publish`): queued in memory and sent by a thread per broker, so a
slow or dead broker never holds the sink; a URL with ``events=yes`` also gets the run's model
events (``OUT/events.jsonl``, followed from where it ended when the sink started).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import zmq

from remembrall.atomic import atomic_write_bytes
from remembrall.io.brokers.publish import (
    DROP_REASONS,
    BrokerPublisher,
    PublisherHooks,
    close_all,
    open_publisher,
)
from remembrall.io.brokers.urls import parse_broker_url
from remembrall.monitoring import metrics as m
from remembrall.monitoring.journal import FILE_NAME as EVENTS_FILE
from remembrall.monitoring.journal import read_lines
from remembrall.pipeline.delivery import MAX_ABOVE, SeqLedger, ledger_state_bytes
from remembrall.pipeline.messages import Message
from remembrall.pipeline.runtime import Stage
from remembrall.pipeline.stream_ends import StreamEnds

log = logging.getLogger(__name__)

#: Longest a written prediction waits in the file buffer (it is acknowledged only once flushed).
FLUSH_EVERY_S = 0.05
#: How often the ledger is checkpointed; a restart reads the lines written after it.
CHECKPOINT_EVERY_S = 1.0
#: Acknowledgements are repeated this often even when nothing moved.
ACK_REPEAT_S = 0.5
#: How often the events journal is looked at for new lines to publish (``events=yes`` brokers).
EVENTS_POLL_S = 0.25
#: Longest the sink's exit waits for brokers to take what is queued for them.
BROKER_CLOSE_S = 2.0


def prediction_record(msg: Message) -> dict[str, Any]:
    """The JSON object written for one prediction (documented in the README)."""
    rec: dict[str, Any] = {
        "stream": msg.stream,
        "seq": msg.seq,
        "pts": msg.pts,
        "ts": round(msg.ts, 6),
        "id": msg.get("id"),
        "pred": msg.get("pred"),
        "top": msg.get("top", []),
        "entropy": msg.get("entropy"),
        "model_version": msg.get("model_version"),
    }
    if msg.get("label") is not None:
        rec["label"] = msg.get("label")
    if msg.get("redelivered"):
        rec["redelivered"] = True
    return rec


def prediction_problem(msg: Message, streams: list[str]) -> str | None:
    """Why a ``prediction`` message cannot be written (a drop reason), or None when it can."""
    if msg.stream not in streams:
        return "unknown_stream"
    fields = msg.fields
    if msg.seq < 0 or not isinstance(fields.get("id"), str) or not isinstance(fields.get("top"), list) \
            or not isinstance(fields.get("model_version"), int) or "pred" not in fields:
        return "bad_prediction"
    return None


class EventTail:
    """Follows a JSON Lines journal from its end at creation: :meth:`poll` returns the whole lines
    appended since (raw bytes, without the newline); a line still being written waits for the next
    poll, a garbled one is skipped. At most ``max_read`` bytes are read per poll."""

    def __init__(self, path: Path, max_read: int = 1 << 20) -> None:
        self.path = path
        self.max_read = max_read
        try:
            self.offset = path.stat().st_size
        except OSError:
            self.offset = 0

    def poll(self) -> list[bytes]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # replaced or cut: start over
            self.offset = 0
        if size == self.offset:
            return []
        lines, self.offset = read_lines(self.path, self.offset, self.max_read)
        return [raw for raw, _ in lines]


class SinkStage(Stage):
    """Writes predictions; each (stream, seq) of a stream delivered at least once (``once``) just
    once (a re-sent item is dropped as ``duplicate``), and acknowledges to the sources what is
    flushed (PROTOCOL.md §10). A live stream's items are written as they come."""

    type = "sink"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.path = Path(self.spec.out_dir) / self.cfg.sink.path
        self.state_path = Path(self.spec.run_dir or self.spec.out_dir) / "progress" / "sink.json"
        self.ledger = SeqLedger(max_above=max(MAX_ABOVE, 8 * self.cfg.transport.window))
        self._state_saved = 0.0
        self._acked: dict[str, tuple[int, int]] = {}
        self._acks_sent = 0.0
        #: (stream, line, (stream, seq) of an item delivered at least once) not flushed yet
        self._batch: list[tuple[str, str, tuple[str, int] | None]] = []
        self._batch_keys: set[tuple[str, int]] = set()
        self._fd = -1
        self._good = 0  # the file's length up to its last whole line
        self._brokers: list[BrokerPublisher] = []
        self._events: EventTail | None = None
        self._events_polled = 0.0

    def run(self) -> int:
        inp = self.socket("in")
        pub = self.socket("pub") if self.has("pub") else None
        acks = self.socket("acks") if self.has("acks") else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._recover()
        ends = StreamEnds(self.spec.streams, self.spec.finished_streams, self.cfg.supervisor.stage_idle_drain_s)
        flushed_at = time.monotonic()
        # append: a restarted sink keeps what its previous life wrote
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._good = os.fstat(self._fd).st_size
        self._open_brokers()
        try:
            while True:
                if self._events is not None and time.monotonic() - self._events_polled >= EVENTS_POLL_S:
                    self._publish_events()
                msg = self.recv(inp, 50)
                if self._batch and (msg is None or len(self._batch) >= self.cfg.sink.flush_every
                                    or time.monotonic() - flushed_at >= FLUSH_EVERY_S):
                    self._flush()
                    flushed_at = time.monotonic()
                if acks is not None and not self._batch:  # acknowledge only what reached the file
                    self._send_acks(acks)
                if msg is None:
                    if self.stopping or ends.all_ended():
                        break
                    continue
                if msg.kind not in ("eos", "prediction"):
                    m.DROPPED.labels(self.name, msg.stream, "unexpected_kind").inc()
                    continue
                if msg.kind == "prediction":
                    problem = prediction_problem(msg, self.spec.streams)
                    if problem is not None:
                        m.DROPPED.labels(self.name, msg.stream if problem != "unknown_stream" else "",
                                         problem).inc()
                        continue
                ends.seen(msg)
                if msg.kind == "eos":
                    if ends.all_ended():
                        break
                    continue
                once = msg.get("once")
                key = None
                if isinstance(once, int) and not isinstance(once, bool):  # delivered at least once
                    self.ledger.begin(msg.stream, once)
                    key = (msg.stream, msg.seq)
                    if self.ledger.seen(*key) or key in self._batch_keys:
                        m.DROPPED.labels(self.name, msg.stream, "duplicate").inc()
                        continue
                    self._batch_keys.add(key)
                line = json.dumps(prediction_record(msg), ensure_ascii=False)
                self._batch.append((msg.stream, line + "\n", key))
                if pub is not None:
                    pub.send_string(line, flags=0)
                if self._brokers:
                    payload = line.encode("utf-8")
                    for broker in self._brokers:
                        broker.publish(payload)
                m.FRAMES.labels(self.name, msg.stream).inc()
                m.E2E_LATENCY.labels(msg.stream).observe(max(0.0, time.time() - msg.ts))
        finally:
            self._flush()
            os.close(self._fd)
            self._checkpoint(self._good, force=True)
            if acks is not None and not self.orphaned:
                self._send_acks(acks, force=True)
            self._close_brokers()
        log.info("%s: wrote predictions to %s", self.name, self.path)
        return 0

    # ------------------------------------------------------------------ brokers
    def _open_brokers(self) -> None:
        """One publisher per ``sink.brokers`` URL (validated when the config was loaded)."""
        for url in self.cfg.sink.brokers:
            parsed = parse_broker_url(url)
            broker = open_publisher(parsed, self.cfg.sink.broker_buffer, self._broker_hooks(parsed.safe))
            self._brokers.append(broker)
            log.info("%s: publishing predictions to %s%s", self.name, broker.url.safe,
                     " (and model events)" if broker.url.events else "")
        if any(b.url.events for b in self._brokers):
            self._events = EventTail(Path(self.spec.out_dir) / EVENTS_FILE)

    def _broker_hooks(self, safe: str) -> PublisherHooks:
        """Counts of one broker (labelled by its URL without secrets) into the stage's metrics."""
        published = m.BROKER_PUBLISHED.labels(self.name, safe)
        dropped = {reason: m.BROKER_DROPPED.labels(self.name, safe, reason) for reason in DROP_REASONS}
        buffered = m.BROKER_BUFFERED.labels(self.name, safe)
        connected = m.BROKER_CONNECTED.labels(self.name, safe)
        connected.set(0)
        return PublisherHooks(published=published.inc, dropped=lambda reason, n: dropped[reason].inc(n),
                              buffered=buffered.set, connected=lambda up: connected.set(1 if up else 0))

    def _publish_events(self) -> None:
        assert self._events is not None
        self._events_polled = time.monotonic()
        for line in self._events.poll():
            for broker in self._brokers:
                if broker.url.events:
                    broker.publish(line, events=True)

    def _close_brokers(self) -> None:
        """Give the brokers :data:`BROKER_CLOSE_S` together to take what is queued: a dead broker
        must not hold the pipeline's exit."""
        if not self._brokers:
            return
        if self._events is not None:
            self._publish_events()
        close_all(self._brokers, BROKER_CLOSE_S)
        self._brokers = []

    def _flush(self) -> None:
        """Append the batch in one write. When the disk refuses it (full), the file is cut back to
        its last whole line and the batch is counted (``reason=write_failed``): the pipeline keeps
        serving (PUB, metrics, UI) and writing resumes once there is space."""
        if not self._batch:
            return
        data = memoryview("".join(line for _, line, _ in self._batch).encode("utf-8"))
        try:
            while data:
                data = data[os.write(self._fd, data):]
            self._good = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._good)  # nothing half-written stays
            except OSError:
                pass
            for stream, _, _ in self._batch:  # not in the ledger, not acknowledged: sent again
                m.DROPPED.labels(self.name, stream, "write_failed").inc()
            self.write_failed("predictions", exc)
        else:
            for _, _, key in self._batch:  # written: acknowledged from now on
                if key is not None:
                    self.ledger.accept(*key)
        self._batch.clear()
        self._batch_keys.clear()
        self._checkpoint(self._good)

    # ------------------------------------------------------------------ exactly-once
    def _recover(self) -> None:
        """Rebuild the ledger of what a previous life wrote: its checkpoint, then every complete
        line after the checkpoint's offset; a line cut by the crash is removed (it was never
        acknowledged, so its source sends it again)."""
        offset = 0
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            self.ledger = SeqLedger.from_plain(state["streams"], self.ledger.max_above)
            offset = int(state["offset"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: sink checkpoint %s unusable (%s); reading the whole predictions file",
                        self.name, self.state_path, exc)
            offset = 0
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        if offset > size:  # a checkpoint newer than the file: trust the file
            self.ledger, offset = SeqLedger(self.ledger.max_above), 0
        with self.path.open("r+b") as fh:
            fh.seek(offset)
            good, n = offset, 0
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                good += len(raw)
                try:
                    rec = json.loads(raw)
                    self.ledger.accept(str(rec["stream"]), int(rec["seq"]))
                    n += 1
                except (ValueError, KeyError, TypeError):
                    m.DROPPED.labels(self.name, "", "corrupt_line").inc()
            if good < size:
                log.warning("%s: removing %d bytes of a line cut short at the end of %s", self.name,
                            size - good, self.path)
                fh.truncate(good)
        if offset or n:
            log.info("%s: restarted; %d predictions already written (%d read past the checkpoint)", self.name,
                     sum(self.ledger.watermark(s) + 1 + len(self.ledger.above(s)) for s in self.ledger.streams()), n)

    def _checkpoint(self, offset: int, force: bool = False) -> None:
        if not force and time.monotonic() - self._state_saved < CHECKPOINT_EVERY_S:
            return
        try:
            atomic_write_bytes(self.state_path, ledger_state_bytes(offset, self.ledger))
        except OSError as exc:  # a full disk: the next restart reads the file itself instead
            log.warning("%s: cannot write the sink checkpoint: %s", self.name, exc)
        self._state_saved = time.monotonic()

    def _send_acks(self, sock: zmq.Socket, force: bool = False) -> None:
        """Acknowledge flushed predictions: at once when a watermark moved, every
        :data:`ACK_REPEAT_S` anyway (a source that restarted missed the earlier ones)."""
        repeat = force or time.monotonic() - self._acks_sent >= ACK_REPEAT_S
        for stream in self.ledger.streams():
            now = (self.ledger.watermark(stream), self.ledger.count_above(stream))
            if repeat or self._acked.get(stream) != now:
                self.send(sock, self.ledger.ack_message(stream), block=False)
                self._acked[stream] = now
        if repeat:
            self._acks_sent = time.monotonic()
