"""``remembrall serve``: one server (a GPU box) that labels and trains for a fleet of pipelines.

A ROUTER socket, a CURVE server on ``serve.bind``, takes work from any number of edge pipelines
(PROTOCOL.md §11): label requests (:mod:`remembrall.stages.remote_labeler`; the ``label``
section's labeler answers them: a teacher, or a desk of humans) and training jobs
(:mod:`remembrall.stages.remote_trainer`; run a slice at a time on ``serve.train_device``). Each
pipeline is known by the name it sends with every message (``remote.name``, bound to the CURVE
key it first came with) and gets its own bounded queue and one
training job; the server serves them in turn, one label or one training slice each, so one busy
camera cannot starve the others. Answers to a pipeline that is away (its edge restarting, its
link down) are kept (``serve.answers`` each) and sent when it is heard from again.

Bad input is counted, never fatal: a peer whose key is not in ``serve.allowed_keys`` is refused
by the ZAP handler (``remembrall_curve_refused_total{reason="unknown_key"}``), a peer with a wrong
server key fails its handshake (``reason="handshake"``), a malformed message is dropped
(``remembrall_label_server_requests_total{outcome="malformed"}``).
"""

from __future__ import annotations

import logging
import math
import signal
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import zmq

from remembrall.config import Config, ConfigError
from remembrall.io.curve import HandshakeWatch, KeyGate, load_keys, make_server
from remembrall.learning.labelers import Labeler, Labelled, make_labeler
from remembrall.learning.trainer import TrainingRun
from remembrall.models.backbone import resolve_device
from remembrall.monitoring import metrics as m
from remembrall.monitoring.server import MetricsServer
from remembrall.pipeline.messages import MalformedMessage, Message, decode_message, encode_message
from remembrall.stages.label import label_request
from remembrall.stages.remote_trainer import MissingRows, parse_job, result_message
from remembrall.stages.samples import BadSample, check_sample

log = logging.getLogger(__name__)

POLL_LABELER_S = 0.5
#: Pipelines the server keeps state for; beyond, the longest silent idle ones are forgotten.
MAX_CLIENTS = 4096
HEARTBEAT_MS = 2000
#: A server loop that has not turned for this long is not healthy (/healthz answers 503).
STUCK_S = 60.0


@dataclass
class Job:
    """A pipeline's training run on this server."""

    id: str
    modality: str
    run: TrainingRun
    drift: float = 0.0


@dataclass
class Client:
    """One edge pipeline as the server sees it."""

    name: str
    queue: deque[Message] = field(default_factory=deque)
    queued: set[str] = field(default_factory=set)
    #: its training runs, one per modality, stepped in turn
    jobs: dict[str, Job] = field(default_factory=dict)
    #: per modality, the embedding rows of its last job (by hash): the next job sends only new ones
    rows: dict[str, dict[int, Any]] = field(default_factory=dict)
    #: answers it was away for (encoded), sent when it is heard from again
    held: deque[list[Any]] = field(default_factory=deque)
    last_seen: float = 0.0
    #: the CURVE key it first spoke with: its name cannot be taken over with another allowed key
    key: str | None = None
    #: the connection (ROUTER routing id) that last spoke under this name with that key
    route: bytes | None = None


class FleetServer:
    """Serve labels and training to the fleet until SIGTERM/SIGINT (or :meth:`stop`)."""

    def __init__(self, cfg: Config, work_dir: str | Path = ".") -> None:
        s = cfg.serve
        if s.labels and cfg.label.labeler == "remote":
            raise ConfigError("serve: label.labeler is remote; a server labels itself (teacher, external or "
                              "oracle), or set serve.labels: false")
        if not (s.labels or s.training):
            raise ConfigError("serve: serve.labels and serve.training are both false: nothing to serve")
        tcp = s.bind.startswith("tcp://")
        if tcp and not (s.secret_key and s.allowed_keys):
            raise ConfigError("serve.bind is tcp://: set serve.secret_key (the server's NAME.key_secret) and "
                              "serve.allowed_keys (a folder of the clients' NAME.key); remembrall keys generate "
                              "writes them")
        self.cfg = cfg
        self.life = uuid.uuid4().hex  # a client that sees it change resends what this life never got
        if s.threads:
            torch.set_num_threads(s.threads)
        self.labeler: Labeler | None = make_labeler(cfg.label, work_dir, threads=s.threads) if s.labels else None
        self.train_device = resolve_device(s.train_device) if s.training else None
        self.ctx = zmq.Context()
        self.gate: KeyGate | None = None
        self.sock = self.ctx.socket(zmq.ROUTER)
        # connections are anonymous; a pipeline names itself in every message (see _take_incoming).
        # Heartbeats drop a dead peer's connection within seconds: its answers are then held.
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * HEARTBEAT_MS)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a connection that is gone raises: the answer is held
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
        self._turn: deque[bytes] = deque()  # whose label request is next
        self._train_turn: deque[bytes] = deque()  # whose training slice is next
        self.stopping = False
        self.labelled = 0
        self.trained = 0
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
                               "labeler": self.labeler.name if self.labeler else None, "labelled": self.labelled,
                               "trained": self.trained}

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
        if self.labeler is not None:
            self.labeler.close()
        self.ctx.term()

    def run(self) -> int:
        log.info("serve: on %s (CURVE %s): labels %s, training %s", self.address,
                 "on" if self.cfg.serve.secret_key else "off",
                 f"by the {self.labeler.name} labeler" if self.labeler else "off",
                 f"on {self.train_device}" if self.train_device else "off")
        last_labeler = 0.0
        try:
            while not self.stopping:
                self._loop_at = time.monotonic()
                busy = any(c.queue or c.jobs for c in self.clients.values())
                if self.sock.poll(0 if busy else 100, zmq.POLLIN):
                    self._take_incoming()
                if self.gate is not None:
                    self.gate.refresh()
                self.watch.poll()
                self._label_next()
                self._train_next()
                if self.labeler is not None and time.monotonic() - last_labeler >= POLL_LABELER_S:
                    last_labeler = time.monotonic()
                    for answer in self.labeler.poll():  # a human's labels, matched to their pipeline
                        self._answer(answer)
        finally:
            log.info("serve: labelled %d samples and trained %d runs for %d pipelines%s", self.labelled,
                     self.trained, len(self.clients),
                     f", rejected {dict(self.labeler.rejected)}" if self.labeler else "")
            self.close()
        return 0

    # ---------------------------------------------------------------- requests
    def _take_incoming(self, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # [connection, pipeline name, message...]: a name is bound to the key it first came with
            route, key = frames[0].bytes, _user_id(frames[-1])
            name = frames[1].bytes if len(frames) >= 3 else b""
            if not 0 < len(name) <= 255:
                self._count("", "malformed", f"a message without a pipeline name ({len(frames)} frames)")
                continue
            client = self.clients.get(name)
            if client is None:
                self._make_room()
                client = self.clients[name] = Client(name.decode("utf-8", "replace"), key=key)
                self._turn.append(name)
                self._train_turn.append(name)
                log.info("serve: pipeline %r connected", client.name)
            if key != client.key:  # another allowed key using this pipeline's name
                self._count(client.name, "impostor", "a message under this name with another CURVE key")
                continue
            client.route, client.last_seen = route, time.monotonic()
            self._flush_held(client)
            try:
                msg = decode_message(frames[2:])
            except MalformedMessage as exc:
                self._count(client.name, "malformed", f"{exc}")
                continue
            self._request(name, client, msg)

    def _make_room(self) -> None:
        """Forget the longest-silent pipelines with nothing queued once there are MAX_CLIENTS."""
        idle = sorted((c.last_seen, name) for name, c in self.clients.items() if not c.queue and not c.jobs)
        for _, name in idle[: max(0, len(self.clients) + 1 - MAX_CLIENTS)]:
            del self.clients[name]
            self._turn.remove(name)
            self._train_turn.remove(name)

    def _request(self, name: bytes, client: Client, msg: Message) -> None:
        if msg.kind == "control":
            op = msg.get("op")
            if op == "ping":
                self._send(name, Message("control", fields={"op": "pong", "life": self.life,
                                                             "queued": len(client.queue)}), hold=False)
            elif op == "train":
                self._take_job(name, client, msg)
            elif op in ("drift", "cancel"):
                job = next((j for j in client.jobs.values() if j.id == msg.get("run")), None)
                if job is not None and op == "cancel":
                    del client.jobs[job.modality]
                    m.TRAIN_SERVER_JOBS.labels(client.name, "cancelled").inc()
                elif job is not None and isinstance(msg.get("value"), (int, float)) \
                        and math.isfinite(msg.get("value")):
                    job.drift = float(msg.get("value"))
            else:
                self._count(client.name, "malformed", f"unknown control op {op!r}")
            return
        if self.labeler is None:
            self._send(name, Message("label", fields={"id": msg.get("id"), "rejected": "not_served"}))
            return
        try:
            check_sample(msg)
        except BadSample as exc:
            self._count(client.name, "malformed", str(exc))
            return
        sid = msg.get("id")
        if sid in client.queued:
            m.LABEL_SERVER_REQUESTS.labels(client.name, "duplicate").inc()
            return
        if len(client.queue) >= self.cfg.serve.queue:
            m.LABEL_SERVER_REQUESTS.labels(client.name, "busy").inc()
            self._send(name, Message("control", fields={"op": "busy", "id": sid}), hold=False)
            return
        client.queue.append(msg)
        client.queued.add(sid)
        m.LABEL_SERVER_QUEUED.labels(client.name).set(len(client.queue))

    def _next_in_turn(self, turn: deque[bytes], has_work: Callable[[Client], bool]) -> tuple[bytes, Client] | None:
        """The next pipeline after the last one served that has work, moved to the back of ``turn``."""
        for _ in range(len(turn)):
            name = turn[0]
            turn.rotate(-1)
            if has_work(self.clients[name]):
                return name, self.clients[name]
        return None

    def _label_next(self) -> None:
        """Label one request of the next pipeline in turn that has any."""
        if self.labeler is None or (found := self._next_in_turn(self._turn, lambda c: bool(c.queue))) is None:
            return
        name, client = found
        msg = client.queue.popleft()
        client.queued.discard(msg.get("id"))
        m.LABEL_SERVER_QUEUED.labels(client.name).set(len(client.queue))
        request = label_request(msg)
        # the labeler sees fleet-unique ids: two cameras may both send "cam0:42"
        request = replace(request, id=f"{client.name}/{request.id}", payload=(name, request.id, request.payload))
        before = Counter(self.labeler.rejected)
        for answer in self.labeler.submit(request):
            self._answer(answer)
        for reason in self.labeler.rejected - before:
            m.LABEL_SERVER_REQUESTS.labels(client.name, "rejected").inc()
            self._send(name, Message("label", fields={"id": request.payload[1], "rejected": reason}))

    # ---------------------------------------------------------------- training
    def _take_job(self, name: bytes, client: Client, msg: Message) -> None:
        run_id, modality = msg.get("run"), msg.get("modality")
        if not isinstance(run_id, str) or not run_id or len(run_id) > 64 or modality not in ("vision", "text"):
            self._count(client.name, "malformed", "a training job without a run id or modality")
            return
        queued = Message("control", fields={"op": "train_queued", "run": run_id, "life": self.life})
        current = client.jobs.get(modality)
        if current is not None and current.id == run_id:  # sent again: it is here already
            self._send(name, queued, hold=False)
            return
        if self.train_device is None:
            self._send(name, Message("control", fields={"op": "train_failed", "run": run_id,
                                                        "error": "this server does not train (serve.training)"}))
            return
        try:
            parsed = parse_job(msg, client.rows.get(modality))
            run = TrainingRun(parsed.start, parsed.xs, parsed.ys, parsed.xv, parsed.yv, parsed.settings,
                              drift=lambda: job.drift, device=self.train_device)
        except MissingRows as exc:  # it restarted, or we did: the edge sends every row again
            self._send(name, Message("control", fields={"op": "train_failed", "run": run_id, "missing": True,
                                                        "error": str(exc)}))
            return
        except ValueError as exc:  # JobError, or TrainingRun refusing the data
            m.TRAIN_SERVER_JOBS.labels(client.name, "refused").inc()
            log.warning("serve: refused a training job from %r: %s", client.name, exc)
            self._send(name, Message("control", fields={"op": "train_failed", "run": run_id, "error": str(exc)}))
            return
        if current is not None:  # a newer run replaces one the pipeline gave up on
            m.TRAIN_SERVER_JOBS.labels(client.name, "cancelled").inc()
        client.rows[modality] = parsed.rows  # what the next job of this modality need not carry
        job = client.jobs[modality] = Job(run_id, modality, run)
        self._send(name, queued, hold=False)

    def _train_next(self) -> None:
        """One training slice for the next pipeline in turn that has a job (its modalities in turn)."""
        if (found := self._next_in_turn(self._train_turn, lambda c: bool(c.jobs))) is None:
            return
        name, client = found
        modality = next(iter(client.jobs))
        job = client.jobs.pop(modality)
        if job.run.step_slice():
            client.jobs[modality] = job  # to the back: the other modality's job goes next
        else:
            self.trained += 1
            m.TRAIN_SERVER_JOBS.labels(client.name, "trained").inc()
            self._send(name, result_message(job.id, job.run.result()))

    def _answer(self, answer: Labelled) -> None:
        """The labelled sample goes back whole (embedding and probabilities, no pixels): a pipeline
        whose label stage restarted since it asked can use it without remembering the request."""
        name, sid, sample = answer.request.payload
        client = self.clients.get(name)
        self.labelled += 1
        if client is not None:
            m.LABEL_SERVER_REQUESTS.labels(client.name, "labelled").inc()
        fields: dict[str, Any] = dict(sample.fields, id=sid, label=answer.label, label_source=answer.source)
        if answer.confidence is not None:
            fields["label_confidence"] = answer.confidence
        self._send(name, Message("label", stream=sample.stream, seq=sample.seq, pts=sample.pts, ts=sample.ts,
                                  fields=fields, arrays=list(sample.arrays[:2])))

    # ---------------------------------------------------------------- replies
    def _send(self, name: bytes, msg: Message, hold: bool = True) -> None:
        """Send to a pipeline; an answer (``hold``) it cannot take now waits for it."""
        client = self.clients.get(name)
        if client is None:
            return
        parts = [bytes(p) for p in encode_message(msg)]
        if client.held or client.route is None:  # keep the order: older answers first
            if hold:
                self._hold(client, parts)
            return
        try:
            self.sock.send_multipart([client.route, *parts], flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # that connection is gone (EHOSTUNREACH), or its queue is full (EAGAIN)
            if hold:
                self._hold(client, parts)

    def _hold(self, client: Client, parts: list[bytes]) -> None:
        client.held.append(parts)
        while len(client.held) > self.cfg.serve.answers:
            client.held.popleft()
            m.LABEL_SERVER_REQUESTS.labels(client.name, "answer_lost").inc()

    def _flush_held(self, client: Client) -> None:
        while client.held and client.route is not None:
            try:
                self.sock.send_multipart([client.route, *client.held[0]], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            client.held.popleft()

    def _count(self, who: str, outcome: str, detail: str) -> None:
        """Bad input from pipeline ``who`` ("": nameless), counted by outcome and logged, rate-limited."""
        m.LABEL_SERVER_REQUESTS.labels(who, outcome).inc()
        self._bad += 1
        if self._bad <= 10 or self._bad % 1000 == 0:
            log.warning("serve: %s from %r: %s [%d so far]", outcome, who, detail, self._bad)

    def _handshake_failed(self, event: int, why: str) -> None:
        if event != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # refusals by key are counted by the KeyGate
            m.CURVE_REFUSED.labels("handshake").inc()
            log.warning("serve: a peer failed the CURVE handshake (a wrong server key, or not CURVE)")


def _user_id(frame: zmq.Frame) -> str | None:
    """The CURVE public key (Z85) a message came with, as the ZAP handler reported it."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:  # no ZAP (ipc:// without keys)
        return None
