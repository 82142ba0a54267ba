"""``label.labeler: remote``: a label server on another host (``remembrall serve``) labels for us.

The label stage's side of the wire (PROTOCOL.md §11). A DEALER socket, a CURVE client over
``tcp://``, sends each selected sample, pixels included, to the server's ROUTER and keeps it in
``pending`` until its answer comes back; the server may be a GPU box whose teacher serves a whole
fleet, or a desk of humans. The edge never waits on it: inference does not pass through the label
stage, and what the server cannot take now stays pending here (bounded by
``label.remote_pending``, the oldest expire, counted) until it can:

* a request unanswered for ``label.remote_timeout_s`` is sent again;
* a server that restarted (its ``pong`` carries a new life id) lost its queue: everything pending
  is sent again at once;
* ``busy`` (the server's queue for us is full) is retried a second later;
* answers the server made while we were away are kept there and arrive when we come back.

Each answer carries the labelled sample whole (embedding and probabilities, no pixels), so answers
the server held while this stage was restarting still become labels in its next life. A second
answer for a sample (after a resend) is ignored; the buffer keeps each sample id once anyway.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from remembrall.config import LabelConfig
from remembrall.io.curve import HandshakeWatch, load_keys, make_client
from remembrall.learning.labelers import Labeler, Labelled, LabelRequest, Vocabulary
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import MalformedMessage, Message, decode_message, encode_message
from remembrall.stages.samples import BadSample, check_sample

log = logging.getLogger(__name__)

PING_S = 2.0
BUSY_RETRY_S = 1.0
#: Pings unanswered before the server counts as down (said once in the log, gauge 0).
MISSED_PINGS = 3
#: Sample ids answered lately: a second answer (after a resend) is ignored.
ANSWERED_KEPT = 4096
#: What an answer adds to the sample it labels.
ANSWER_FIELDS = ("label", "label_source", "label_confidence")


def default_remote_name(out_dir: str) -> str:
    """HOST-OUTDIR: unique per pipeline in a fleet without configuring anything."""
    return f"{socket.gethostname()}-{Path(out_dir).resolve().name}"[:200]


def request_message(request: LabelRequest) -> Message:
    """The sample as the server needs it: the label stage's slim payload with the pixels put back."""
    sample: Message = request.payload
    arrays = list(sample.arrays[:2])
    if request.image is not None:
        arrays.append(np.asarray(request.image))
    return Message("sample", stream=sample.stream, seq=sample.seq, pts=sample.pts, ts=sample.ts,
                   fields=dict(sample.fields, id=request.id), arrays=arrays)


@dataclass
class _Pending:
    request: LabelRequest
    wire: list
    sent_at: float | None = None  # None: not sent yet (no connection, or busy)
    retry_at: float = 0.0


class RemoteLabeler(Labeler):
    """Labels from a ``remembrall serve`` label server; see the module docstring."""

    name = "remote"

    def __init__(self, cfg: LabelConfig, ctx: zmq.Context, stage: str, out_dir: str = ".",
                 max_message_bytes: int = 64 << 20) -> None:
        super().__init__(Vocabulary(list(cfg.classes)))
        self.stage, self.address = stage, cfg.remote
        self.timeout_s, self.max_pending = cfg.remote_timeout_s, cfg.remote_pending
        self.peer = cfg.remote_name or default_remote_name(out_dir)
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.ROUTING_ID, self.peer.encode("utf-8"))
        self.socket.setsockopt(zmq.IMMEDIATE, 1)  # no queue to a server we are not connected to
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.socket.setsockopt(zmq.SNDHWM, 64)
        if cfg.remote_server_key or cfg.remote_client_key:
            make_client(self.socket, load_keys(cfg.remote_client_key, secret=True),
                        load_keys(cfg.remote_server_key, secret=False).public)
        self.watch = HandshakeWatch(self.socket, on_failure=self._handshake_failed)
        self.socket.connect(cfg.remote)
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self._answered: OrderedDict[str, None] = OrderedDict()
        self.server_life: str | None = None
        self.up = False
        self._last_ping = 0.0
        self._last_pong = time.monotonic()
        self._said_down = False
        m.REMOTE_UP.labels(stage).set(0)
        log.info("%s: labels from %s as %r", stage, cfg.remote, self.peer)

    # ------------------------------------------------------------------ Labeler
    def submit(self, request: LabelRequest) -> list[Labelled]:
        if not isinstance(request.id, str) or not request.id:
            return self._reject("bad_sample", "sample without an id")
        self.pending.pop(request.id, None)
        self._answered.pop(request.id, None)
        self.pending[request.id] = _Pending(request, _wire(request_message(request)))
        while len(self.pending) > self.max_pending:
            old, _ = self.pending.popitem(last=False)
            self._reject("expired", f"the label server did not answer {old!r} before "
                         f"{self.max_pending} newer samples (label.remote_pending)")
        self._send_due()
        return []

    def poll(self) -> list[Labelled]:
        """Take every answer that arrived; ping, resend and expire as due."""
        out: list[Labelled] = []
        while self.socket.poll(0, zmq.POLLIN):
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                msg = decode_message(parts)
            except zmq.Again:
                break
            except MalformedMessage as exc:
                self._reject(f"malformed_{exc.reason}", f"from the label server: {exc}")
                continue
            out += self._handle(msg)
        self._keep_alive()
        self._send_due()
        m.REMOTE_PENDING.labels(self.stage).set(len(self.pending))
        return out

    def close(self) -> None:
        if self.pending:
            log.warning("%s: %d samples were still waiting for the label server %s", self.stage,
                        len(self.pending), self.address)
        m.REMOTE_PENDING.labels(self.stage).set(0)
        self.watch.close()
        self.socket.close(linger=0)

    # ------------------------------------------------------------------ internals
    def _handle(self, msg: Message) -> list[Labelled]:
        if msg.kind == "control":
            op = msg.get("op")
            if op == "pong":
                self._pong(msg.get("life"))
            elif op == "busy" and msg.get("id") in self.pending:
                entry = self.pending[msg.get("id")]
                entry.sent_at, entry.retry_at = None, time.monotonic() + BUSY_RETRY_S
                m.REMOTE_RESENT.labels(self.stage, "busy").inc()
            return []
        if msg.kind != "label":
            return self._reject("unexpected_kind", f"kind {msg.kind!r} from the label server")
        self._pong(None)  # any answer shows the server is there
        sid = msg.get("id")
        if not isinstance(sid, str) or sid in self._answered:
            return []  # answered twice (after a resend): the first answer settled it
        entry = self.pending.pop(sid, None)
        self._answered[sid] = None
        while len(self._answered) > ANSWERED_KEPT:
            self._answered.popitem(last=False)
        if msg.get("rejected"):
            return self._reject(str(msg.get("rejected"))[:64], f"{sid}: said the label server")
        if entry is not None:
            request = entry.request
        else:  # asked by a previous life of this stage: the answer carries the whole sample
            fields = {k: v for k, v in msg.fields.items() if k not in ANSWER_FIELDS}
            sample = Message("sample", stream=msg.stream, seq=msg.seq, pts=msg.pts, ts=msg.ts, fields=fields,
                             arrays=[np.array(a) for a in msg.arrays[:2]])
            try:
                check_sample(sample)
            except BadSample as exc:
                return self._reject("bad_answer", f"the label server's answer for {sid!r}: {exc}")
            request = LabelRequest(sid, payload=sample)
        confidence = msg.get("label_confidence")
        answers = self._accept(request, msg.get("label"),
                               float(confidence) if isinstance(confidence, (int, float)) else None)
        source = msg.get("label_source")
        return [Labelled(a.request, a.label, source if isinstance(source, str) else self.name, a.confidence)
                for a in answers]

    def _pong(self, life: object) -> None:
        self._last_pong = time.monotonic()
        if not self.up and self.watch.poll() == "up":
            self.up, self._said_down = True, False
            m.REMOTE_UP.labels(self.stage).set(1)
            log.info("%s: label server %s answers", self.stage, self.address)
        if isinstance(life, str) and life != self.server_life:
            if self.server_life is not None:  # it restarted: what it had queued for us is gone
                self._resend_all("restarted")
            self.server_life = life

    def _keep_alive(self) -> None:
        now = time.monotonic()
        state = self.watch.poll()
        if now - self._last_ping >= PING_S:
            self._last_ping = now
            self._try_send(_wire(Message("control", fields={"op": "ping", "pending": len(self.pending)})))
        if self.up and (state != "up" or now - self._last_pong > MISSED_PINGS * PING_S):
            self.up = False  # disconnected, or connected and silent
            m.REMOTE_UP.labels(self.stage).set(0)
        if not self.up and not self._said_down and now - self._last_pong > MISSED_PINGS * PING_S:
            self._said_down = True
            log.warning("%s: the label server %s does not answer (%s); %d samples wait for it, inference goes on",
                        self.stage, self.address, state, len(self.pending))

    def _send_due(self) -> None:
        now = time.monotonic()
        for entry in list(self.pending.values()):
            if entry.sent_at is not None and now - entry.sent_at < self.timeout_s:
                continue
            if entry.sent_at is None and entry.retry_at > now:
                continue
            if entry.sent_at is not None:
                m.REMOTE_RESENT.labels(self.stage, "timeout").inc()
            if not self._try_send(entry.wire):
                entry.sent_at = None
                return  # not connected, or the send queue is full: try again at the next poll
            entry.sent_at = now

    def _resend_all(self, reason: str) -> None:
        for entry in self.pending.values():
            if entry.sent_at is not None:
                entry.sent_at = None
                m.REMOTE_RESENT.labels(self.stage, reason).inc()

    def _try_send(self, wire: list) -> bool:
        try:
            self.socket.send_multipart(wire, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _handshake_failed(self, _event: int, why: str) -> None:
        if self.watch.failures <= 3 or self.watch.failures % 100 == 0:
            log.error("%s: label server %s: %s [%d so far]", self.stage, self.address, why, self.watch.failures)


def _wire(msg: Message) -> list:
    """Encoded once, sent as often as needed (the arrays are copied: the receive buffer is reused)."""
    return [bytes(part) if isinstance(part, memoryview) else part for part in encode_message(msg)]

