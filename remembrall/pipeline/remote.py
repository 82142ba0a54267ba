"""A stage's link to a ``remembrall serve`` server on another host (PROTOCOL.md §11).

One DEALER socket, a CURVE client over ``tcp://`` (plain over ``ipc://``). Every message starts
with a frame naming the pipeline and the stage (``remote.name``, default HOST-OUTDIR, then
``/label`` or ``/retrain``): the server keeps what it owes that name while it is away, and
binds the name to the CURVE key it first came with. The
link pings every 2 s; the server's ``pong`` carries the id of its life, so a server that restarted
(and lost what it was doing for us) is noticed — acknowledgements carry it too — and the caller sends its work again. Sends never
block: without a connection (``IMMEDIATE``) they fail, and the caller keeps the work for later.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from remembrall.config import RemoteConfig
from remembrall.io.curve import HandshakeWatch, load_keys, make_client
from remembrall.monitoring import metrics as m
from remembrall.pipeline.drops import DropCounter
from remembrall.pipeline.messages import MalformedMessage, Message, decode_message, encode_message

log = logging.getLogger(__name__)

PING_S = 2.0
#: Pings unanswered before the server counts as down (said once in the log, gauge 0).
MISSED_PINGS = 3


def default_remote_name(out_dir: str) -> str:
    """HOST-OUTDIR: unique per pipeline in a fleet without configuring anything."""
    return f"{socket.gethostname()}-{Path(out_dir).resolve().name}"[:200]


def encode_once(msg: Message) -> list[bytes]:
    """A message's frames as bytes, to be sent as often as needed."""
    return [bytes(part) for part in encode_message(msg)]


class ServerLink:
    """The connection of one stage to its server; see the module docstring."""

    def __init__(self, ctx: zmq.Context, address: str, cfg: RemoteConfig, stage: str, out_dir: str,
                 role: str, what: str, max_message_bytes: int = 64 << 20) -> None:
        self.stage, self.address, self.what = stage, address, what
        #: NAME/ROLE: the label and the retrain stage of one pipeline are two peers to the server
        self.peer = f"{cfg.name or default_remote_name(out_dir)}/{role}"
        self._name = self.peer.encode("utf-8")[:255]  # the first frame of everything it sends
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)  # no queue to a server we are not connected to
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.socket.setsockopt(zmq.SNDHWM, 64)
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, 2000)  # a dead server's connection is dropped in seconds
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        if address.startswith("tcp://") or cfg.server_key or cfg.client_key:
            make_client(self.socket, load_keys(cfg.client_key, secret=True),
                        load_keys(cfg.server_key, secret=False).public)
        self.watch = HandshakeWatch(self.socket, on_failure=self._handshake_failed)
        self.socket.connect(address)
        #: called when the server turns out to have restarted: resend what it was working on
        self.on_restart: Callable[[], None] = lambda: None
        self.server_life: str | None = None
        self.up = False
        self.drops = DropCounter(stage)
        self._last_ping = 0.0
        self._last_pong = time.monotonic()
        self._said_down = False
        m.REMOTE_UP.labels(stage).set(0)
        log.info("%s: %s %s, as %r", stage, what, address, self.peer)

    def send(self, wire: list[bytes]) -> bool:
        """Send now, or False (not connected, or its queue is full): keep it and try later."""
        try:
            self.socket.send_multipart([self._name, *wire], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def receive(self) -> list[Message]:
        """Every message waiting (pongs handled here); malformed ones are counted and dropped."""
        out: list[Message] = []
        while self.socket.poll(0, zmq.POLLIN):
            try:
                msg = decode_message(self.socket.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                break
            except MalformedMessage as exc:
                self.drops.drop(f"malformed_{exc.reason}", "", f"from the {self.what}: {exc}")
                continue
            self.heard(msg.get("life") if msg.kind == "control" else None)  # pongs and acks carry it
            if not (msg.kind == "control" and msg.get("op") == "pong"):
                out.append(msg)
        self.keep_alive()
        return out

    def heard(self, life: object = None) -> None:
        """The server spoke (a pong carries its life id)."""
        self._last_pong = time.monotonic()
        if not self.up and self.watch.poll() == "up":
            self.up, self._said_down = True, False
            m.REMOTE_UP.labels(self.stage).set(1)
            log.info("%s: the %s %s answers", self.stage, self.what, self.address)
        if isinstance(life, str) and life != self.server_life:
            restarted = self.server_life is not None
            self.server_life = life
            if restarted:
                log.warning("%s: the %s restarted; sending it our work again", self.stage, self.what)
                self.on_restart()

    def keep_alive(self, pending: int = 0) -> None:
        """Ping when due; mark the server down when disconnected or silent."""
        now = time.monotonic()
        state = self.watch.poll()
        if now - self._last_ping >= PING_S and self.send(encode_once(Message("control", fields={
                "op": "ping", "pending": pending}))):
            self._last_ping = now  # (not connected: try again at the next call)
        silent = now - self._last_pong > MISSED_PINGS * PING_S
        if self.up and (state != "up" or silent):
            self.up = False
            m.REMOTE_UP.labels(self.stage).set(0)
        if not self.up and not self._said_down and silent:
            self._said_down = True
            log.warning("%s: the %s %s does not answer (%s); inference goes on, its work waits", self.stage,
                        self.what, self.address, state)

    @property
    def down_for(self) -> float:
        """Seconds since the server was last heard from (0 while it answers)."""
        return 0.0 if self.up else time.monotonic() - self._last_pong

    def close(self) -> None:
        if self.socket.closed:
            return
        m.REMOTE_UP.labels(self.stage).set(0)
        self.watch.close()
        self.socket.close(linger=0)

    def _handshake_failed(self, _event: int, why: str) -> None:
        if self.watch.failures <= 3 or self.watch.failures % 100 == 0:
            log.error("%s: %s %s: %s [%d so far]", self.stage, self.what, self.address, why, self.watch.failures)
