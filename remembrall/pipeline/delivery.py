"""At-least-once hand-over between stages, and the ledger that makes the output exactly-once.

A producer that must not lose what it handed on (a file or manifest source, the label stage)
keeps every message in an :class:`Outbox` until the stage that makes it durable acknowledges it
(the sink once the prediction is flushed to its file, the buffer once the label is saved).
When a stage on the way restarts, the supervisor's generation counter for it moves
(:class:`RestartWatch`) and the producer sends everything still unacknowledged again. The
receiver keeps a :class:`SeqLedger` (or, for labels, the buffer's ids) so a message that arrives
twice is written once.

>>> ledger = SeqLedger()
>>> [ledger.accept("cam0", s) for s in (0, 2, 1, 2)]
[True, True, True, False]
>>> ledger.watermark("cam0"), ledger.above("cam0")
(2, [])
>>> box = Outbox(capacity=4)
>>> for seq in range(3):
...     box.put(seq, Message("frame", stream="cam0", seq=seq))
>>> box.ack_through(1), [m.seq for m in box.pending()]
(2, [2])
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from remembrall.atomic import atomic_write_bytes
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import MalformedMessage, Message, decode_message, encode_message
from remembrall.pipeline.runtime import Stage, SupervisorGone

log = logging.getLogger(__name__)

#: How many out-of-order seqs a ledger remembers per stream past its watermark before it gives
#: up on the oldest gap (counted as lost): a bound on the sink's memory whatever happens upstream.
MAX_ABOVE = 8192
#: A producer waiting on acks this long with none coming sends what is unacknowledged again.
RESEND_STALLED_S = 5.0


class SeqLedger:
    """Which ``(stream, seq)`` were written: per stream a watermark (everything up to it) and the
    seqs written above it. Bounded by :data:`MAX_ABOVE` per stream."""

    def __init__(self, max_above: int = MAX_ABOVE) -> None:
        self.max_above = max_above
        self._w: dict[str, int] = {}
        self._above: dict[str, set[int]] = {}
        #: seqs given up on (a gap older than ``max_above`` later writes), by stream
        self.skipped: dict[str, int] = {}

    def accept(self, stream: str, seq: int) -> bool:
        """Record ``seq``; False when it was already written (a duplicate to drop)."""
        w = self._w.get(stream, -1)
        above = self._above.setdefault(stream, set())
        if seq <= w or seq in above:
            return False
        above.add(seq)
        while w + 1 in above:
            w += 1
            above.discard(w)
        if len(above) > self.max_above:  # a gap that will not fill: move past it, counted
            low = min(above)
            self.skipped[stream] = self.skipped.get(stream, 0) + (low - w - 1)
            w = low
            above.discard(low)
            while w + 1 in above:
                w += 1
                above.discard(w)
        self._w[stream] = w
        return True

    def begin(self, stream: str, first_seq: int) -> None:
        """A producer's seqs of ``stream`` start at ``first_seq`` in its current life (a source
        that cannot resume numbers each life past the last): every seq below is done with, so
        the watermark can move on instead of waiting for a gap that will never fill."""
        w = self._w.get(stream, -1)
        if first_seq - 1 <= w:
            return
        above = self._above.setdefault(stream, set())
        w = first_seq - 1
        above.difference_update([s for s in above if s <= w])
        while w + 1 in above:
            w += 1
            above.discard(w)
        self._w[stream] = w

    def seen(self, stream: str, seq: int) -> bool:
        """Whether ``seq`` of ``stream`` was written already."""
        return seq <= self._w.get(stream, -1) or seq in self._above.get(stream, ())

    def watermark(self, stream: str) -> int:
        """Highest seq up to which every seq of ``stream`` was written (-1: none)."""
        return self._w.get(stream, -1)

    def above(self, stream: str) -> list[int]:
        return sorted(self._above.get(stream, ()))

    def count_above(self, stream: str) -> int:
        return len(self._above.get(stream, ()))

    def streams(self) -> list[str]:
        return sorted(self._w)

    def to_plain(self) -> dict[str, Any]:
        return {s: {"w": self._w[s], "above": self.above(s)} for s in self.streams()}

    @classmethod
    def from_plain(cls, plain: Any, max_above: int = MAX_ABOVE) -> SeqLedger:
        ledger = cls(max_above)
        if not isinstance(plain, dict):
            raise ValueError("ledger state must be a mapping")
        for stream, entry in plain.items():
            w, above = int(entry["w"]), [int(s) for s in entry["above"]]
            ledger._w[str(stream)] = w
            ledger._above[str(stream)] = {s for s in above if s > w}
        return ledger

    def ack_message(self, stream: str) -> Message:
        """The acknowledgement a producer of ``stream`` waits for (PROTOCOL.md §10)."""
        return Message("ack", stream=stream, fields={"through": self.watermark(stream), "above": self.above(stream)})


class Outbox:
    """Messages handed on and not acknowledged yet, oldest first, at most ``capacity``.

    With ``store`` each message is also written there (one file each, atomically) before it is
    handed on, and removed when acknowledged: a producer killed in between sends it again when
    it starts (:meth:`load`).
    """

    def __init__(self, capacity: int, store: str | os.PathLike[str] | None = None,
                 on_store_error: Callable[[OSError], None] | None = None) -> None:
        self.capacity = capacity
        self.store = Path(store) if store is not None else None
        #: a message that cannot be stored (a full disk) is still held in memory and handed on
        self.on_store_error = on_store_error
        self._items: OrderedDict[Hashable, Message] = OrderedDict()
        self._files: dict[Hashable, Path] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def put(self, key: Hashable, msg: Message) -> None:
        if self.store is not None:
            self._counter += 1
            path = self.store / f"{self._counter:012d}.npz"
            while path.exists():  # a previous life's file not loaded yet
                self._counter += 1
                path = self.store / f"{self._counter:012d}.npz"
            old = self._files.pop(key, None)
            if old is not None:
                old.unlink(missing_ok=True)
            try:
                atomic_write_bytes(path, message_bytes(msg))
                self._files[key] = path
            except OSError as exc:
                if self.on_store_error is None:
                    raise
                self.on_store_error(exc)
        self._items[key] = msg

    def ack(self, keys: Iterable[Hashable]) -> int:
        """Forget the acknowledged ``keys``; returns how many were held."""
        n = 0
        for key in keys:
            if self._items.pop(key, None) is not None:
                n += 1
            path = self._files.pop(key, None)
            if path is not None:
                path.unlink(missing_ok=True)
        return n

    def ack_through(self, upto: int, also: Iterable[int] = ()) -> int:
        """Forget every integer key ``<= upto`` and those in ``also`` (a :class:`SeqLedger` ack)."""
        done = [k for k in self._items if isinstance(k, int) and k <= upto]
        return self.ack(done) + self.ack(k for k in also if k in self._items)

    def pending(self) -> list[Message]:
        return list(self._items.values())

    def keys(self) -> list[Hashable]:
        return list(self._items)

    def load(self, key_of: Any) -> int:
        """Take back what a previous life left in ``store`` (oldest first); a file that cannot
        be read is moved aside as ``*.corrupt`` with a warning. Returns how many were loaded."""
        if self.store is None or not self.store.exists():
            return 0
        n = 0
        for path in sorted(self.store.glob("*.npz")):
            try:
                msg = message_from_bytes(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("outbox file %s cannot be read (%s); moved aside", path, exc)
                path.replace(path.with_suffix(".corrupt"))
                continue
            key = key_of(msg)
            self._items[key] = msg
            self._files[key] = path
            self._counter = max(self._counter, int(path.stem) if path.stem.isdigit() else 0)
            n += 1
        return n


def message_bytes(msg: Message) -> bytes:
    """One message as a single ``.npz`` (the wire header and each array): what an outbox stores."""
    parts = encode_message(msg)
    buf = io.BytesIO()
    arrays = {"header": np.frombuffer(parts[0], np.uint8)}
    arrays.update({f"a{i}": np.asarray(a) for i, a in enumerate(msg.arrays)})
    np.savez(buf, **arrays)
    return buf.getvalue()


def message_from_bytes(data: bytes) -> Message:
    """Inverse of :func:`message_bytes`; validated like anything from a socket."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            header = z["header"].tobytes()
            n = len([k for k in z.files if k.startswith("a")])
            arrays = [z[f"a{i}"] for i in range(n)]
    except (KeyError, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"not an outbox message ({type(exc).__name__})") from None
    try:
        return decode_message([header, *[memoryview(np.ascontiguousarray(a)).cast("B") for a in arrays]])
    except MalformedMessage as exc:
        raise ValueError(str(exc)) from None


class RestartWatch:
    """Tells a producer when a stage it depends on restarted: the supervisor publishes every
    stage's restart count (``stages`` messages, PROTOCOL.md §10) and this remembers the last seen."""

    def __init__(self, watched: Iterable[str]) -> None:
        self.watched = set(watched)
        self._seen: dict[str, int] = {}

    def restarted(self, msg: Message) -> list[str]:
        """The watched stages whose count grew since the previous ``stages`` message."""
        counts = msg.get("restarts")
        if msg.kind != "stages" or not isinstance(counts, dict):
            return []
        moved = []
        for name in sorted(self.watched):
            n = counts.get(name)
            if isinstance(n, int) and n > self._seen.get(name, 0):
                moved.append(name)
                self._seen[name] = n
        return moved


def restarts_message(counts: dict[str, int]) -> Message:
    """What the supervisor publishes: every stage's restart count."""
    return Message("stages", fields={"restarts": dict(counts)})


def ledger_state_bytes(offset: int, ledger: SeqLedger) -> bytes:
    return json.dumps({"offset": offset, "streams": ledger.to_plain()}).encode()


class AckedSender:
    """A stage's PUSH output with at-least-once delivery.

    :meth:`send` keeps each message in the outbox (waiting while it is full, taking acks as they
    come), hands it on, and re-sends everything unacknowledged whenever a watched stage
    restarts. Acks come as ``ack`` messages: ``through``/``above`` for sequence-keyed streams
    (the sink's :class:`SeqLedger`), ``ids`` for id-keyed ones (the buffer).
    """

    def __init__(self, stage: Stage, out: zmq.Socket, acks: zmq.Socket, restarts: zmq.Socket | None,
                 outbox: Outbox, watch: RestartWatch, stream: str | None = None) -> None:
        self.stage, self.out, self.outbox, self.watch = stage, out, outbox, watch
        self.stream = stream  # ack only this stream's seqs (a source); None: id-keyed acks
        self.acked_through = -1
        self.last_progress = time.monotonic()
        self.poller = zmq.Poller()
        self.inputs = [s for s in (acks, restarts) if s is not None]
        for sock in self.inputs:
            self.poller.register(sock, zmq.POLLIN)
        self._gauge = m.UNACKED.labels(stage.name, stream or "")
        self.resent = 0
        self._stall_resent = 0.0
        #: messages sent after the outbox emptied (an ``eos``): re-sent too on a restart
        self.trailer: list[Message] = []

    def send(self, key: Hashable, msg: Message) -> bool:
        """Keep ``msg`` until acknowledged, then hand it on (blocking). False: not handed on
        (the drain deadline passed while the outbox was full or the peer did not take it)."""
        while self.outbox.full:
            self._wait_step()
            if self.stage.stopping and self.stage.past_drain_deadline():
                return False
        self.outbox.put(key, msg)
        self._gauge.set(len(self.outbox))
        ok = self.stage.send(self.out, msg)
        self.poll(0)
        return ok

    def _wait_step(self) -> None:
        """Wait a little for acks; after :data:`RESEND_STALLED_S` without one, send what is
        unacknowledged again (an ack lost on the way, or an item lost without a restart). An
        orphan stops waiting at once: nobody will acknowledge anything any more."""
        if self.stage.orphaned:
            raise SupervisorGone(self.stage.name)
        self.poll(100)
        if time.monotonic() - max(self.last_progress, self._stall_resent) > RESEND_STALLED_S:
            self._stall_resent = time.monotonic()
            self.resend(["nothing"], reason="was acknowledged for a while")

    def poll(self, timeout_ms: int) -> None:
        """Take every waiting ack and restart notice; re-send on a restart."""
        events = dict(self.poller.poll(timeout_ms))
        restarted: list[str] = []
        for sock in self.inputs:
            if sock not in events:
                continue
            for _ in range(1000):
                msg = self.stage.recv(sock, 0)
                if msg is None:
                    break
                if msg.kind == "ack":
                    self._ack(msg)
                else:
                    restarted += self.watch.restarted(msg)
        self._gauge.set(len(self.outbox))
        if restarted:
            self.resend(restarted)

    def _ack(self, msg: Message) -> None:
        if self.stream is None:
            ids = msg.get("ids")
            n = self.outbox.ack(i for i in ids if isinstance(i, str)) if isinstance(ids, list) else 0
        elif msg.stream == self.stream and isinstance(msg.get("through"), int):
            above = [s for s in msg.get("above") or [] if isinstance(s, int)]
            n = self.outbox.ack_through(msg.get("through"), above)
            self.acked_through = max(self.acked_through, msg.get("through"))
        else:
            return
        if n:
            self.last_progress = time.monotonic()

    def resend(self, why: list[str], reason: str = "restarted") -> None:
        pending = self.outbox.pending() + self.trailer
        if not pending:
            return
        log.info("%s: %s %s; sending %d unacknowledged items again", self.stage.name, ", ".join(why), reason,
                 len(pending))
        if reason == "restarted":
            self.last_progress = time.monotonic()
        for msg in pending:
            if not self.stage.send(self.out, msg, timeout_ms=5000 if msg.kind == "eos" else None):
                break
            if msg.kind != "eos":
                self.resent += 1
                m.RESENT.labels(self.stage.name, msg.stream).inc()

    def settle(self, give_up_s: float) -> list[Message]:
        """Wait until everything handed on is acknowledged. Gives up (returning what is still
        unacknowledged) after ``give_up_s`` without an ack or a restart, or at the drain deadline."""
        while len(self.outbox):
            self._wait_step()
            if time.monotonic() - self.last_progress > give_up_s:
                break
            if self.stage.stopping and self.stage.past_drain_deadline():
                break
        left = self.outbox.pending()
        self._gauge.set(len(left))
        return left
