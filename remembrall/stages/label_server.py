"""``remembrall serve``: one label server (a teacher on a GPU box, or a desk of humans) for a fleet.

A ROUTER socket, a CURVE server on ``serve.bind``, takes label requests from any number of edge
pipelines (:mod:`remembrall.stages.remote_labeler`, PROTOCOL.md §11). Each pipeline is known by its
routing id (``label.remote_name``) and gets its own bounded queue; the server labels the queues
in turn, so one busy camera cannot starve the others. Answers to a pipeline that is away (its
edge restarting, its link down) are kept (``serve.answers`` each) and sent when it pings again.

Bad input is counted, never fatal: a peer whose key is not in ``serve.allowed_keys`` is refused
by the ZAP handler (``remembrall_curve_refused_total{reason="unknown_key"}``), a peer with a wrong
server key fails its handshake (``reason="handshake"``), a malformed message is dropped
(``remembrall_label_server_requests_total{outcome="malformed"}``).
"""

from __future__ import annotations

import logging
import signal
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zmq

from remembrall.config import Config, ConfigError
from remembrall.io.curve import HandshakeWatch, KeyGate, load_keys, make_server
from remembrall.learning.labelers import Labeler, Labelled, make_labeler
from remembrall.monitoring import metrics as m
from remembrall.monitoring.server import MetricsServer
from remembrall.pipeline.messages import MalformedMessage, Message, decode_message, encode_message
from remembrall.stages.label import label_request
from remembrall.stages.samples import BadSample, check_sample

log = logging.getLogger(__name__)

POLL_LABELER_S = 0.5
#: A server loop that has not turned for this long is not healthy (/healthz answers 503).
STUCK_S = 60.0


@dataclass
class Client:
    """One edge pipeline as the server sees it."""

    name: str
    queue: deque[Message] = field(default_factory=deque)
    queued: set[str] = field(default_factory=set)
    #: answers it was away for, sent when it is heard from again
    held: deque[list[Any]] = field(default_factory=deque)
    last_seen: float = 0.0


class LabelServer:
    """Serve labels to the fleet until SIGTERM/SIGINT (or :meth:`stop`)."""

    def __init__(self, cfg: Config, work_dir: str | Path = ".") -> None:
        s = cfg.serve
        if cfg.label.labeler == "remote":
            raise ConfigError("serve: label.labeler is remote; a label server labels itself "
                              "(teacher, external or oracle)")
        tcp = s.bind.startswith("tcp://")
        if tcp and not (s.secret_key and s.allowed_keys):
            raise ConfigError("serve.bind is tcp://: set serve.secret_key (the server's NAME.key_secret) and "
                              "serve.allowed_keys (a folder of the clients' NAME.key); remembrall keys generate "
                              "writes them")
        self.cfg = cfg
        self.life = uuid.uuid4().hex  # a client that sees it change resends what this life never got
        self.labeler: Labeler = make_labeler(cfg.label, work_dir, threads=s.threads)
        self.ctx = zmq.Context()
        self.gate: KeyGate | None = None
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a pipeline that reconnects takes its name back
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an absent pipeline raises: its answer is held
        self.sock.setsockopt(zmq.MAXMSGSIZE, cfg.transport.max_message_bytes)
        self.sock.setsockopt(zmq.LINGER, 0)
        if s.secret_key:
            make_server(self.sock, load_keys(s.secret_key, secret=True))
            if s.allowed_keys:
                self.gate = KeyGate(self.ctx, s.allowed_keys,
                                    on_refused=lambda _why: m.CURVE_REFUSED.labels("unknown_key").inc())
                self.gate.start()
        self.watch = HandshakeWatch(self.sock, on_failure=self._handshake_failed)
        try:
            self.sock.bind(s.bind)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(f"serve.bind {s.bind}: {exc}; pick another address or port") from None
        self.address = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.clients: dict[bytes, Client] = {}
        self._turn: deque[bytes] = deque()
        self.stopping = False
        self.labelled = 0
        self._bad = 0
        self._loop_at = time.monotonic()
        self.metrics: MetricsServer | None = None

    # ---------------------------------------------------------------- lifecycle
    def serve_metrics(self, host: str, port: int) -> str:
        self.metrics = MetricsServer(None, host, port, healthz=self._health).start()
        return self.metrics.url

    def _health(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self._loop_at
        return age < STUCK_S, {"loop_age_s": round(age, 1), "clients": len(self.clients),
                               "labeler": self.labeler.name, "labelled": self.labelled}

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: Any) -> None:
            log.info("serve: %s received, stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> None:
        self.watch.close()
        self.sock.close(linger=0)
        if self.gate is not None:
            self.gate.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.labeler.close()
        self.ctx.term()

    def run(self) -> int:
        log.info("serve: %s labeler on %s (CURVE %s)", self.labeler.name, self.address,
                 "on" if self.cfg.serve.secret_key else "off")
        last_labeler = 0.0
        try:
            while not self.stopping:
                self._loop_at = time.monotonic()
                busy = any(c.queue for c in self.clients.values())
                if self.sock.poll(0 if busy else 100, zmq.POLLIN):
                    self._take_incoming()
                if self.gate is not None:
                    self.gate.refresh()
                self.watch.poll()
                self._label_next()
                if time.monotonic() - last_labeler >= POLL_LABELER_S:
                    last_labeler = time.monotonic()
                    for answer in self.labeler.poll():  # a human's labels, matched to their pipeline
                        self._answer(answer)
        finally:
            log.info("serve: labelled %d samples for %d pipelines, rejected %s", self.labelled,
                     len(self.clients), dict(self.labeler.rejected))
            self.close()
        return 0

    # ---------------------------------------------------------------- requests
    def _take_incoming(self, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ident = frames[0].bytes
            client = self.clients.get(ident)
            if client is None:
                client = self.clients[ident] = Client(ident.decode("utf-8", "replace"))
                self._turn.append(ident)
                log.info("serve: pipeline %r connected", client.name)
            client.last_seen = time.monotonic()
            self._flush_held(ident, client)
            try:
                msg = decode_message(frames[1:])
            except MalformedMessage as exc:
                self._count(client, "malformed", f"{exc}")
                continue
            self._request(ident, client, msg)

    def _request(self, ident: bytes, client: Client, msg: Message) -> None:
        if msg.kind == "control" and msg.get("op") == "ping":
            self._send(ident, Message("control", fields={"op": "pong", "life": self.life,
                                                         "queued": len(client.queue)}))
            return
        try:
            check_sample(msg)
        except BadSample as exc:
            self._count(client, "malformed", str(exc))
            return
        sid = msg.get("id")
        if sid in client.queued:
            m.LABEL_SERVER_REQUESTS.labels(client.name, "duplicate").inc()
            return
        if len(client.queue) >= self.cfg.serve.queue:
            m.LABEL_SERVER_REQUESTS.labels(client.name, "busy").inc()
            self._send(ident, Message("control", fields={"op": "busy", "id": sid}))
            return
        client.queue.append(msg)
        client.queued.add(sid)
        m.LABEL_SERVER_QUEUED.labels(client.name).set(len(client.queue))

    def _label_next(self) -> None:
        """Label one request of the next pipeline in turn that has any."""
        for _ in range(len(self._turn)):
            ident = self._turn[0]
            self._turn.rotate(-1)
            client = self.clients[ident]
            if not client.queue:
                continue
            msg = client.queue.popleft()
            client.queued.discard(msg.get("id"))
            m.LABEL_SERVER_QUEUED.labels(client.name).set(len(client.queue))
            request = label_request(msg)
            # the labeler sees fleet-unique ids: two cameras may both send "cam0:42"
            request = replace(request, id=f"{client.name}/{request.id}", payload=(ident, request.id, request.payload))
            before = Counter(self.labeler.rejected)
            answers = self.labeler.submit(request)
            for answer in answers:
                self._answer(answer)
            rejected = self.labeler.rejected - before
            for reason in rejected:
                m.LABEL_SERVER_REQUESTS.labels(client.name, "rejected").inc()
                self._send(ident, Message("label", fields={"id": request.payload[1], "rejected": reason}))
            return

    def _answer(self, answer: Labelled) -> None:
        """The labelled sample goes back whole (embedding and probabilities, no pixels): a pipeline
        whose label stage restarted since it asked can use it without remembering the request."""
        ident, sid, sample = answer.request.payload
        client = self.clients.get(ident)
        self.labelled += 1
        if client is not None:
            m.LABEL_SERVER_REQUESTS.labels(client.name, "labelled").inc()
        fields: dict[str, Any] = dict(sample.fields, id=sid, label=answer.label, label_source=answer.source)
        if answer.confidence is not None:
            fields["label_confidence"] = answer.confidence
        self._send(ident, Message("label", stream=sample.stream, seq=sample.seq, pts=sample.pts, ts=sample.ts,
                                  fields=fields, arrays=list(sample.arrays[:2])))

    # ---------------------------------------------------------------- replies
    def _send(self, ident: bytes, msg: Message) -> None:
        wire = [ident, *encode_message(msg)]
        client = self.clients.get(ident)
        if client is not None and client.held:  # keep the order: older answers first
            self._hold(client, wire)
            return
        try:
            self.sock.send_multipart(wire, flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # not connected now (EHOSTUNREACH), or its queue is full (EAGAIN)
            if client is not None and msg.kind == "label":
                self._hold(client, wire)

    def _hold(self, client: Client, wire: list[Any]) -> None:
        client.held.append([bytes(p) if isinstance(p, memoryview) else p for p in wire])
        while len(client.held) > self.cfg.serve.answers:
            client.held.popleft()
            m.LABEL_SERVER_REQUESTS.labels(client.name, "answer_lost").inc()

    def _flush_held(self, ident: bytes, client: Client) -> None:
        while client.held:
            try:
                self.sock.send_multipart(client.held[0], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            client.held.popleft()

    def _count(self, client: Client, outcome: str, detail: str) -> None:
        m.LABEL_SERVER_REQUESTS.labels(client.name, outcome).inc()
        self._bad += 1
        if self._bad <= 10 or self._bad % 1000 == 0:
            log.warning("serve: %s from %r: %s [%d so far]", outcome, client.name, detail, self._bad)

    def _handshake_failed(self, event: int, why: str) -> None:
        if event != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # refusals by key are counted by the KeyGate
            m.CURVE_REFUSED.labels("handshake").inc()
            log.warning("serve: a peer failed the CURVE handshake (a wrong server key, or not CURVE)")
