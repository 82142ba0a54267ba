"""The label stage: turn selected samples into labelled ones (oracle, teacher or external).

Input ``selected`` (PULL): samples chosen by select (PROTOCOL.md §1). Optional input ``labels``
(PULL): ``label`` messages ``{id, label}`` from a human for the external labeler (labels may also
arrive as JSON files in ``label.external_dir/labels/``). Output ``labelled`` (PUSH, blocking):
the sample with ``label`` and ``label_source`` set, image dropped (PROTOCOL.md §2). Rejections
(no label, unknown class, unknown sample id, unsure teacher) are counted as drops by reason.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from remembrall.learning.labelers import ExternalLabeler, Labeler, Labelled, LabelRequest, make_labeler
from remembrall.monitoring import metrics as m
from remembrall.pipeline.delivery import AckedSender, Outbox, RestartWatch
from remembrall.pipeline.drops import DropCounter
from remembrall.pipeline.messages import Message
from remembrall.pipeline.runtime import Stage
from remembrall.pipeline.stream_ends import StreamEnds
from remembrall.stages.remote_labeler import RemoteLabeler
from remembrall.stages.samples import BadSample, check_sample

log = logging.getLogger(__name__)

POLL_FILES_S = 0.5


def label_request(sample: Message) -> LabelRequest:
    """What a labeler sees of a ``sample`` message; the message itself, without its pixels and
    with its arrays copied out of the receive buffer, rides along as the payload."""
    info = {"stream": sample.stream, "seq": sample.seq, "ts": sample.ts, "pred": sample.get("pred"),
            "top": sample.get("top") or [], "entropy": sample.get("entropy"),
            "model_version": sample.get("model_version")}
    if sample.get("text") is not None:
        info["text"] = sample.get("text")
    slim = Message("sample", stream=sample.stream, seq=sample.seq, pts=sample.pts, ts=sample.ts,
                   fields=dict(sample.fields), arrays=[np.array(a) for a in sample.arrays[:2]])
    image = sample.arrays[2] if len(sample.arrays) >= 3 else None
    return LabelRequest(sample.get("id"), image=image, label=sample.get("label"), info=info, payload=slim)


def labelled_message(answer: Labelled) -> Message:
    """The labelled sample to forward (PROTOCOL.md §2): embedding and probabilities, no pixels."""
    sample: Message = answer.request.payload
    fields = dict(sample.fields, label=answer.label, label_source=answer.source)
    if answer.confidence is not None:
        fields["label_confidence"] = answer.confidence
    return Message("sample", stream=sample.stream, seq=sample.seq, pts=sample.pts, ts=sample.ts, fields=fields,
                   arrays=list(sample.arrays[:2]))


class LabelStage(Stage):
    type = "label"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.labeler: Labeler
        if self.cfg.label.labeler == "remote":  # a label server on another host (remembrall serve)
            self.labeler = RemoteLabeler(self.cfg, self.ctx, self.name, spec.out_dir or ".")
        else:
            self.labeler = make_labeler(self.cfg.label, spec.run_dir or ".")
        self.ends = StreamEnds(spec.streams, spec.finished_streams, self.cfg.supervisor.stage_idle_drain_s)
        self.drops = DropCounter(self.name)
        self.sent = 0
        #: accepted labels not yet saved by the buffer, kept on disk: a killed label stage sends
        #: them again when it starts (at-least-once; the buffer keeps each sample id once)
        self.outbox = (Outbox(self.cfg.transport.window, Path(spec.run_dir or ".") / "outbox" / "label",
                              on_store_error=lambda exc: self.write_failed("label outbox", exc))
                       if self.has("acks") else None)
        if self.outbox is not None:  # what a previous life accepted and the buffer had not saved
            self.outbox.load(lambda msg: msg.get("id"))

    def _send_all(self, out: zmq.Socket, answers: list[Labelled], stream: str = "") -> None:
        """Forward labelled samples; rejections since the last call are counted under ``stream``."""
        for answer in answers:
            msg = labelled_message(answer)
            if self.sender is not None:
                self.sender.send(msg.get("id"), msg)
                if msg.get("id") not in self.sender.outbox:  # not kept: the drain deadline passed first
                    continue
            else:
                self.send(out, msg)
            self.journal.write("accepted", id=msg.get("id"), stream=msg.stream, label=msg.get("label"),
                               source=msg.get("label_source"))
            self.sent += 1
            m.FRAMES.labels(self.name, msg.stream).inc()
        self.drops.sync(self.labeler.rejected, stream)

    def handle(self, msg: Message, out: zmq.Socket) -> None:
        if msg.kind == "label":  # a human's answer arriving on the selected socket is fine too
            self._answer(msg, out)
            return
        try:
            check_sample(msg)
        except BadSample as exc:
            self.drops.drop(exc.reason, msg.stream, str(exc))
            return
        self._send_all(out, self.labeler.submit(label_request(msg)), msg.stream)

    def _answer(self, msg: Message, out: zmq.Socket) -> None:
        if not isinstance(self.labeler, ExternalLabeler):
            self.drops.drop("unexpected_label", msg.stream, f"{self.labeler.name} labeler takes no label messages")
            return
        self._send_all(out, self.labeler.receive(msg.get("id"), msg.get("label")), msg.stream)

    def run(self) -> int:
        inp = self.socket("selected")
        out = self.socket("labelled")
        labels = self.socket("labels") if self.has("labels") else None
        if self.outbox is not None:
            self.sender = AckedSender(self, out, self.socket("acks"), self.socket("restarts"), self.outbox,
                                      RestartWatch(self.spec.params.get("resend_on", [])))
            self.sender.resend(["the buffer had not saved what a previous life"], reason="accepted")
        poller = zmq.Poller()
        poller.register(inp, zmq.POLLIN)
        if labels is not None:
            poller.register(labels, zmq.POLLIN)
        remote = self.labeler.socket if isinstance(self.labeler, RemoteLabeler) else None  # answers wake us
        if remote is not None:
            poller.register(remote, zmq.POLLIN)
        last_files = 0.0
        log.info("%s: %s labeler", self.name, self.labeler.name)
        while not self.stopping and not self.ends.all_ended():
            events = dict(poller.poll(100))
            if inp in events:
                msg = self.recv_ready(inp)
                if msg is not None:
                    self.ends.seen(msg)
                    if msg.kind != "eos":
                        self.handle(msg, out)
            if labels is not None and labels in events:
                msg = self.recv_ready(labels)
                if msg is not None and msg.kind == "label":
                    self._answer(msg, out)
                elif msg is not None:
                    self.drops.drop("unexpected_kind", msg.stream, f"kind {msg.kind!r} on the labels input")
            if time.monotonic() - last_files >= POLL_FILES_S or (remote is not None and remote in events):
                last_files = time.monotonic()
                self._send_all(out, self.labeler.poll())
            if self.sender is not None:
                self.sender.poll(0)
        if not self.orphaned:  # label files stay where they are for the next run to read
            self._send_all(out, self.labeler.poll())
        if remote is not None and not self.orphaned:  # answers a label server that is there still owes
            deadline = time.monotonic() + min(self.cfg.supervisor.drain_timeout_s, self.cfg.remote.timeout_s)
            while self.labeler.pending and self.labeler.up and time.monotonic() < deadline:
                remote.poll(100)
                self._send_all(out, self.labeler.poll())
        if self.sender is not None and not self.orphaned:
            left = self.sender.settle(self.cfg.supervisor.drain_timeout_s)
            if left:  # kept in the outbox: the next run with this output directory sends them
                log.error("%s: the buffer did not acknowledge %d labels; they stay in %s for the next run",
                          self.name, len(left), self.outbox.store)
        if isinstance(self.labeler, ExternalLabeler) and self.labeler.pending:
            log.warning("%s: %d exported samples still await a label in %s", self.name,
                        len(self.labeler.pending), self.labeler.dir)
        eos = [Message("eos", stream=stream) for stream in sorted(self.ends.streams)]
        if self.sender is not None:
            self.sender.trailer = eos
        for msg in eos:
            self.send(out, msg, timeout_ms=30_000)
        self.labeler.close()
        log.info("%s: labelled %d samples, rejected %s", self.name, self.sent, dict(self.labeler.rejected))
        return 0
