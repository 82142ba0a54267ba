"""``label.labeler: remote``: a label server on another host (``remembrall serve``) labels for us.

The label stage's side of the wire (PROTOCOL.md §11). Over its :class:`ServerLink` (a CURVE
client) it sends each selected sample, pixels included, to the server and keeps it in
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
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import zmq

from remembrall.config import Config
from remembrall.learning.labelers import Labeler, Labelled, LabelRequest, Vocabulary
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message
from remembrall.pipeline.remote import ServerLink, encode_once
from remembrall.stages.samples import BadSample, check_sample

log = logging.getLogger(__name__)

BUSY_RETRY_S = 1.0
#: Sample ids answered lately: a second answer (after a resend) is ignored.
ANSWERED_KEPT = 4096
#: What an answer adds to the sample it labels.
ANSWER_FIELDS = ("label", "label_source", "label_confidence")


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
    wire: list[bytes]
    sent_at: float | None = None  # None: not sent yet (no connection, or busy)
    retry_at: float = 0.0


class RemoteLabeler(Labeler):
    """Labels from a ``remembrall serve`` label server; see the module docstring."""

    name = "remote"

    def __init__(self, cfg: Config, ctx: zmq.Context, stage: str, out_dir: str = ".") -> None:
        super().__init__(Vocabulary(list(cfg.label.classes)))
        self.stage = stage
        self.timeout_s, self.max_pending = cfg.remote.timeout_s, cfg.label.remote_pending
        self.link = ServerLink(ctx, cfg.label.remote, cfg.remote, stage, out_dir, "label", "label server",
                               cfg.transport.max_message_bytes)
        self.link.on_restart = lambda: self._resend_all("restarted")
        self.socket = self.link.socket
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self._answered: OrderedDict[str, None] = OrderedDict()

    @property
    def up(self) -> bool:
        return self.link.up

    # ------------------------------------------------------------------ Labeler
    def submit(self, request: LabelRequest) -> list[Labelled]:
        if not isinstance(request.id, str) or not request.id:
            return self._reject("bad_sample", "sample without an id")
        self.pending.pop(request.id, None)
        self._answered.pop(request.id, None)
        self.pending[request.id] = _Pending(request, encode_once(request_message(request)))
        while len(self.pending) > self.max_pending:
            old, _ = self.pending.popitem(last=False)
            self._reject("expired", f"the label server did not answer {old!r} before "
                         f"{self.max_pending} newer samples (label.remote_pending)")
        self._send_due()
        return []

    def poll(self) -> list[Labelled]:
        """Take every answer that arrived; ping, resend and expire as due."""
        out: list[Labelled] = []
        for msg in self.link.receive():
            out += self._handle(msg)
        self.link.keep_alive(len(self.pending))
        self._send_due()
        m.REMOTE_PENDING.labels(self.stage).set(len(self.pending))
        return out

    def close(self) -> None:
        if self.pending:
            log.warning("%s: %d samples were still waiting for the label server %s", self.stage,
                        len(self.pending), self.link.address)
        m.REMOTE_PENDING.labels(self.stage).set(0)
        self.link.close()

    # ------------------------------------------------------------------ internals
    def _handle(self, msg: Message) -> list[Labelled]:
        if msg.kind == "control":
            if msg.get("op") == "busy" and msg.get("id") in self.pending:
                entry = self.pending[msg.get("id")]
                entry.sent_at, entry.retry_at = None, time.monotonic() + BUSY_RETRY_S
                m.REMOTE_RESENT.labels(self.stage, "busy").inc()
            return []
        if msg.kind != "label":
            return self._reject("unexpected_kind", f"kind {msg.kind!r} from the label server")
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

    def _send_due(self) -> None:
        now = time.monotonic()
        for entry in list(self.pending.values()):
            if entry.sent_at is not None and now - entry.sent_at < self.timeout_s:
                continue
            if entry.sent_at is None and entry.retry_at > now:
                continue
            if entry.sent_at is not None:
                m.REMOTE_RESENT.labels(self.stage, "timeout").inc()
            if not self.link.send(entry.wire):
                entry.sent_at = None
                return  # not connected, or the send queue is full: try again at the next poll
            entry.sent_at = now

    def _resend_all(self, reason: str) -> None:
        for entry in self.pending.values():
            if entry.sent_at is not None:
                entry.sent_at = None
                m.REMOTE_RESENT.labels(self.stage, reason).inc()
