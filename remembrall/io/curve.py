"""CURVE keys and authentication for stages that talk across hosts (ZeroMQ over ``tcp://``).

A key pair is a ZeroMQ certificate pair written by ``remembrall keys generate``: ``NAME.key`` (the
public key, safe to copy around) and ``NAME.key_secret`` (public + secret, kept on its host). A
server holds its ``.key_secret`` and a folder of the client ``.key`` files it allows; a client
holds its own ``.key_secret`` and the server's ``.key``. Every byte between them is encrypted, and
a client whose key is not in the folder is refused by the server's ZAP handler, which counts it.

>>> import tempfile, zmq
>>> d = tempfile.mkdtemp()
>>> pub, secret = generate_keys(d, "teacher")
>>> keys = load_keys(secret, secret=True)
>>> len(keys.public), len(keys.secret)
(40, 40)
>>> try:
...     load_keys(pub, secret=True)
... except CurveKeyError as exc:
...     print(str(exc).split(": ")[0].endswith("holds no secret key"))
True
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class CurveKeyError(ValueError):
    """A key file that cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class CurveKeys:
    """A CURVE key pair as Z85 bytes (``secret`` is None for a public-only file)."""

    public: bytes
    secret: bytes | None


def generate_keys(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory`` (created, secret mode 0600)."""
    if not name or not set(name) <= _NAME_CHARS or name.startswith("."):
        raise CurveKeyError(f"key name {name!r}: use letters, digits, '_', '-' and '.'")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise CurveKeyError(f"{path} exists: remove it first (a new key locks out every peer holding the old one)")
    old = os.umask(0o077)
    try:
        pub_file, secret_file = zmq.auth.create_certificates(str(d), name)
    finally:
        os.umask(old)
    os.chmod(secret_file, 0o600)
    return Path(pub_file), Path(secret_file)


def load_keys(path: str | os.PathLike[str], *, secret: bool) -> CurveKeys:
    """Read a certificate file; ``secret=True`` insists on the ``.key_secret`` half."""
    p = Path(path)
    if not p.is_file():
        raise CurveKeyError(f"CURVE key file {p} does not exist (remembrall keys generate DIR NAME writes one)")
    try:
        public, secret_key = zmq.auth.load_certificate(str(p))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CurveKeyError(f"CURVE key file {p} is not a ZeroMQ certificate: {exc}") from None
    if not public or len(public) != 40:
        raise CurveKeyError(f"CURVE key file {p} holds no valid public key")
    if secret and (not secret_key or len(secret_key) != 40):
        raise CurveKeyError(f"CURVE key file {p} holds no secret key: give the NAME.key_secret file, "
                        "not the public NAME.key")
    return CurveKeys(public, secret_key)


def make_server(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Make ``sock`` (before bind) a CURVE server with ``keys``."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def make_client(sock: zmq.Socket, own: CurveKeys, server_public: bytes) -> None:
    """Make ``sock`` (before connect) a CURVE client of the server whose public key is given."""
    sock.curve_secretkey = own.secret
    sock.curve_publickey = own.public
    sock.curve_serverkey = server_public


class KeyGate(ThreadAuthenticator):
    """The server's ZAP handler: allows the client keys in ``allowed_dir`` and counts refusals.

    The folder is read again when it changes (:meth:`refresh`), so adding a camera's key or
    revoking one needs no restart.
    """

    def __init__(self, ctx: zmq.Context, allowed_dir: str | os.PathLike[str],
                 on_refused: Callable[[str], None] | None = None) -> None:
        super().__init__(ctx)
        self.allowed_dir = Path(allowed_dir)
        if not self.allowed_dir.is_dir():
            raise CurveKeyError(f"allowed keys folder {self.allowed_dir} does not exist: put the clients' "
                            "NAME.key files in it")
        self.on_refused = on_refused
        self.refused = 0
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0

    def start(self) -> None:
        super().start()
        self.refresh(force=True)

    def refresh(self, force: bool = False, every_s: float = 2.0) -> None:
        """Re-read the allowed keys if the folder changed (checked at most every ``every_s``)."""
        now = time.monotonic()
        if not force and now - self._checked < every_s:
            return
        self._checked = now
        try:
            files = list(self.allowed_dir.glob("*.key"))
            stamp = (max((f.stat().st_mtime for f in files), default=0.0) + self.allowed_dir.stat().st_mtime,
                     len(files))
        except OSError as exc:
            log.warning("allowed keys folder %s: %s", self.allowed_dir, exc)
            return
        if force or stamp != self._stamp:
            self._stamp = stamp
            self.configure_curve(domain="*", location=str(self.allowed_dir))
            log.info("CURVE: %d allowed client keys in %s", len(files), self.allowed_dir)
            if not files:
                log.warning("CURVE: no client key in %s: every client is refused", self.allowed_dir)

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            self.refused += 1
            if self.refused <= 10 or self.refused % 1000 == 0:
                log.warning("CURVE: refused a client (%s) [%d so far]",
                            status_text.decode("utf-8", "replace"), self.refused)
            if self.on_refused is not None:
                self.on_refused(status_text.decode("utf-8", "replace"))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


#: What a failed handshake means, from the side that saw it fail.
_CLIENT_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused: the server does not allow this key (copy NAME.key into its "
                                     "allowed keys folder)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed: wrong server key, or the peer is not a CURVE server",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed: protocol error (a different ZeroMQ peer?)",
}


class HandshakeWatch:
    """Follows a socket's connection events, so a peer's silence has a reason to log.

    ``state`` is ``connecting``, ``up``, ``down`` or a handshake failure text; ``failures``
    counts failed handshakes (on a server: peers with a wrong server key or not speaking CURVE;
    refusals by key are the :class:`KeyGate`'s).
    """

    def __init__(self, sock: zmq.Socket, on_failure: Callable[[int, str], None] | None = None) -> None:
        self.monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                                               | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                               | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                               | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        self._sock = sock
        self.on_failure = on_failure
        self.state = "connecting"
        self.failures = 0
        self.connections = 0

    def poll(self) -> str:
        """Read every pending event; returns the current state."""
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.state, self.connections = "up", self.connections + 1
            elif event == zmq.EVENT_DISCONNECTED:
                if self.state == "up":
                    self.state = "down"
            else:
                self.failures += 1
                self.state = _CLIENT_FAILURES.get(event, "handshake failed")
                if self.on_failure is not None:
                    self.on_failure(event, self.state)
        return self.state

    def close(self) -> None:
        self._sock.disable_monitor()
        self.monitor.close(linger=0)
