"""What every stage process shares: its spec, its sockets, validated receive, counted drops, stop.

A stage is started by the supervisor as ``python -m remembrall.stages.worker SPEC.json``; the
spec names the stage's class, its input/output endpoints, the streams it should expect and the
whole validated config. Subclasses implement :meth:`Stage.run` and use the helpers here so that
malformed input is always counted and logged, never fatal, and SIGTERM always means "finish
what you hold, tell downstream, exit 0" — within ``supervisor.drain_timeout_s``: no wait of a
drain is unbounded. A stage whose supervisor died does not drain (see
:mod:`remembrall.pipeline.lifeline`): it saves what it holds locally and exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from remembrall.config import Config, config_from_plain
from remembrall.heap import HeapTrimmer
from remembrall.io.endpoints import open_socket
from remembrall.monitoring import metrics as m
from remembrall.monitoring.journal import Journal
from remembrall.monitoring.process_cost import ProcessCost
from remembrall.pipeline.drops import WriteErrors
from remembrall.pipeline.lifeline import PARENT_DEATH_SIGNAL, Lifeline
from remembrall.pipeline.messages import MalformedMessage, Message, decode_message, encode_message

if TYPE_CHECKING:
    from remembrall.pipeline.delivery import AckedSender

log = logging.getLogger(__name__)

#: Exit status of a source stage whose input cannot be used at all: the supervisor does not
#: restart it (restarting cannot fix a missing file) and reports the error.
EXIT_BAD_SOURCE = 3


class SupervisorGone(Exception):
    """Raised where a stage would hand something to a peer after its supervisor died: nobody will
    read it, so the stage stops there and only saves what it holds locally."""


@dataclass
class StageSpec:
    """Everything a stage process needs, written by the supervisor as JSON."""

    name: str
    type: str
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    streams: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    out_dir: str = ""
    #: Streams whose producers already finished before this (re)start: do not wait for their eos.
    finished_streams: list[str] = field(default_factory=list)
    #: Touched once the stage is set up (models loaded): the supervisor's drain clock ignores
    #: time a stage spent starting.
    ready_file: str = ""
    #: Touched when :meth:`Stage.run` returned; the stage then keeps its sockets open until the
    #: supervisor touches ``release_file`` (every stage it feeds has finished). A PUSH peer that
    #: exits right after its last send can lose what the receiver had not yet read.
    done_file: str = ""
    release_file: str = ""
    #: The supervisor's pid: a stage that outlives it is an orphan and exits (0: no supervisor,
    #: e.g. a stage run by a test harness).
    supervisor_pid: int = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> StageSpec:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


class Stage:
    """Base class of a stage process. Subclasses set ``type`` and implement :meth:`run`."""

    type = ""

    def __init__(self, spec: StageSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.cfg: Config = config_from_plain(spec.config)
        self.ctx = zmq.Context()  # its own: close() terminates it, and must not stop anyone else
        self.lifeline = Lifeline(spec.supervisor_pid, self.cfg.supervisor.orphan_exit_s)
        self._stopping_since: float | None = None
        self._sockets: dict[str, zmq.Socket] = {}
        self._malformed_logged = 0
        self._drain_timeouts = 0
        self.write_errors = WriteErrors(spec.name)
        #: the at-least-once output of a producer (a finite source, the label stage), if any
        self.sender: AckedSender | None = None
        #: what happened when, for the Learning page and ``remembrall report`` (OUT/events.jsonl)
        self.journal = Journal(spec.out_dir or None, spec.name)
        self.cost = ProcessCost(spec.name)  # CPU seconds and RSS of this process, as metrics
        self.cost.start()
        self.heap = HeapTrimmer(self.cfg.supervisor.heap_trim_growth,
                                on_release=m.HEAP_RELEASED.labels(spec.name).inc)
        if self.cfg.supervisor.heap_trim_growth:
            self.heap.start()

    # ----------------------------------------------------------------- lifecycle
    @property
    def stopping(self) -> bool:
        """Asked to stop (SIGTERM, or the supervisor is gone): finish up, take nothing new."""
        return self._stopping_since is not None

    @stopping.setter
    def stopping(self, value: bool) -> None:
        if not value:
            self._stopping_since = None
        elif self._stopping_since is None:
            self._stopping_since = time.monotonic()

    @property
    def orphaned(self) -> bool:
        """The supervisor is gone: hand nothing to peers, save local state, exit."""
        return self.lifeline.gone

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: Any) -> None:
            if self.stopping:
                log.warning("%s: second %s, exiting now", self.name, signal.Signals(signum).name)
                os._exit(1)
            log.info("%s: %s received, draining", self.name, signal.Signals(signum).name)
            self.stopping = True

        def _orphaned(_signum: int, _frame: Any) -> None:
            if not self.orphaned:
                log.warning("%s: the supervisor is gone; saving local state and exiting without draining",
                            self.name)
            self.lifeline.supervisor_gone()
            self.stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        signal.signal(PARENT_DEATH_SIGNAL, _orphaned)

    def run(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def wait_for_release(self) -> None:
        """Keep the sockets open until the stages this one feeds have read everything."""
        if not self.spec.done_file or not self.spec.release_file:
            return
        Path(self.spec.done_file).parent.mkdir(parents=True, exist_ok=True)
        Path(self.spec.done_file).write_text(str(os.getpid()))
        release = Path(self.spec.release_file)
        deadline = time.monotonic() + self.cfg.supervisor.drain_timeout_s
        while not release.exists() and time.monotonic() < deadline and not self.orphaned:
            self.while_released_waits(0.05)

    def while_released_waits(self, seconds: float) -> None:
        """What a finished stage does while it waits for its release: a producer with
        at-least-once delivery answers restarts (sends its ``eos`` again); others just wait."""
        if self.sender is not None:
            self.sender.poll(int(seconds * 1000))
        else:
            time.sleep(seconds)

    def close(self) -> None:
        """Close every socket, then wait (up to each socket's linger) for queued messages to leave.

        Without the explicit ``term()`` the process would exit with messages still queued in
        ZeroMQ's I/O thread, silently losing the tail of a file run. An orphan waits for nobody.
        """
        self.cost.stop()
        self.heap.stop()
        linger = 0 if self.orphaned else None
        for sock in self._sockets.values():
            sock.close(linger=linger)
        self._sockets.clear()
        self.ctx.term()

    # ----------------------------------------------------------------- sockets
    def socket(self, role: str, endpoint: str | None = None, **kwargs: Any) -> zmq.Socket:
        """Open (once) the socket for input or output ``role`` from the spec."""
        if role in self._sockets:
            return self._sockets[role]
        ep = endpoint or self.spec.inputs.get(role) or self.spec.outputs.get(role)
        if ep is None:
            raise KeyError(f"stage {self.name} has no endpoint for {role!r}")
        t = self.cfg.transport
        # A PUSH lingers as long as the supervisor waits for a drain: a stage that exits right
        # after its last send must not discard what is still queued. Nothing else lingers: a SUB
        # whose publisher is gone would otherwise hold term() with its pending subscription.
        pattern = (ep or "").split("+", 1)[0].split(":", 1)[0].lower()
        linger_ms = int(self.cfg.supervisor.drain_timeout_s * 1000) if pattern == "push" else 0
        opts = {"hwm": t.hwm, "max_message_bytes": t.max_message_bytes, "allow_remote": t.allow_remote,
                "linger_ms": linger_ms}
        opts.update(kwargs)
        sock = open_socket(self.ctx, ep, **opts)
        self._sockets[role] = sock
        return sock

    def has(self, role: str) -> bool:
        return role in self.spec.inputs or role in self.spec.outputs

    def send(self, sock: zmq.Socket, msg: Message, *, block: bool = True, timeout_ms: int | None = None) -> bool:
        """Send ``msg``. Non-blocking sends return False when the peer queue is full.

        A blocking send waits until the peer takes it (a file run loses nothing), or until
        ``timeout_ms``. While stopping, no send waits past the drain deadline
        (``supervisor.drain_timeout_s`` after the stop began): what is still undelivered then is
        counted (``reason="drain_timeout"``). Raises :class:`SupervisorGone` once the supervisor died.
        """
        if self.orphaned:
            raise SupervisorGone(self.name)
        parts = encode_message(msg)
        if not block:
            try:
                sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                return False
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            now = time.monotonic()
            drain_deadline = self._drain_deadline()
            limit = min((d for d in (deadline, drain_deadline) if d is not None), default=now + 0.1)
            if sock.poll(int(max(0.0, min(0.1, limit - now)) * 1000), zmq.POLLOUT):
                sock.send_multipart(parts, copy=False)
                return True
            if self.orphaned:
                raise SupervisorGone(self.name)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if drain_deadline is not None and now >= drain_deadline:
                self._count_drain_timeout(msg)
                return False

    def past_drain_deadline(self) -> bool:
        deadline = self._drain_deadline()
        return deadline is not None and time.monotonic() >= deadline

    def _drain_deadline(self) -> float | None:
        """When a stopping stage stops waiting for its consumers; None while not stopping."""
        if self._stopping_since is None:
            return None
        return self._stopping_since + self.cfg.supervisor.drain_timeout_s

    def _count_drain_timeout(self, msg: Message) -> None:
        if msg.kind != "eos":
            m.DROPPED.labels(self.name, msg.stream, "drain_timeout").inc()
        self._drain_timeouts += 1
        if self._drain_timeouts == 1:
            log.warning("%s: a %s message for %s was not taken within the drain timeout (%.0f s); "
                        "what else is undelivered is counted (reason=drain_timeout)",
                        self.name, msg.kind, msg.stream or "-", self.cfg.supervisor.drain_timeout_s)

    def recv(self, sock: zmq.Socket, timeout_ms: int = 100) -> Message | None:
        """Receive one valid message, or None on timeout. Malformed input is counted and dropped."""
        if not sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return self.recv_ready(sock)

    def recv_ready(self, sock: zmq.Socket) -> Message | None:
        """Receive a message known to be waiting; None if it was malformed (counted, logged)."""
        try:
            parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        try:
            return decode_message(parts)
        except MalformedMessage as exc:
            self.count_malformed(exc, sum(len(p.buffer) for p in parts))
            return None

    def write_failed(self, what: str, exc: OSError) -> None:
        """A file this stage keeps could not be written: counted and said (see :class:`WriteErrors`)."""
        self.write_errors.failed(what, exc)

    def count_malformed(self, exc: MalformedMessage, size: int) -> None:
        m.DROPPED.labels(self.name, "", f"malformed_{exc.reason}").inc()
        self._malformed_logged += 1
        if self._malformed_logged <= 10 or self._malformed_logged % 1000 == 0:
            log.warning(
                "%s: dropped a malformed message (%d bytes): %s [%d so far]",
                self.name, size, exc, self._malformed_logged,
            )
