"""Endpoint strings that carry their socket pattern, Savant-style: ``push+bind:ipc:///run/x.sock``.

The string says everything needed to open the socket, so a config or a stage spec can wire any
two stages (same host over ``ipc://``, other hosts over ``tcp://``) without code changes.

>>> ep = parse_endpoint("pull+bind:ipc:///tmp/remembrall/infer.in")
>>> ep.pattern, ep.bind, ep.address
('pull', True, 'ipc:///tmp/remembrall/infer.in')
>>> parse_endpoint("push:tcp://0.0.0.0:5555").bind   # push/pub connect by default
False
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import zmq

from remembrall.config import is_loopback_host

PATTERNS = {
    "push": zmq.PUSH,
    "pull": zmq.PULL,
    "pub": zmq.PUB,
    "sub": zmq.SUB,
    "req": zmq.REQ,
    "rep": zmq.REP,
    "xpub": zmq.XPUB,  # a PUB that hears its subscribers come and go (infer's live preview)
}
#: Sockets that bind unless the string says otherwise (the receiving / serving side).
_BIND_BY_DEFAULT = {"pull", "rep", "pub", "xpub"}

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
DEFAULT_HWM = 64


class EndpointError(ValueError):
    """An endpoint string that cannot be used; the message says what to write instead."""


@dataclass(frozen=True)
class Endpoint:
    pattern: str
    bind: bool
    address: str

    def __str__(self) -> str:
        return f"{self.pattern}+{'bind' if self.bind else 'connect'}:{self.address}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``pattern[+bind|+connect]:transport://address``."""
    if not isinstance(text, str) or ":" not in text:
        raise EndpointError(f"endpoint {text!r}: expected 'pattern[+bind|+connect]:transport://address'")
    head, address = text.split(":", 1)
    pattern, _, mode = head.partition("+")
    pattern = pattern.lower()
    if pattern not in PATTERNS:
        raise EndpointError(f"endpoint {text!r}: unknown socket pattern {pattern!r} (one of {sorted(PATTERNS)})")
    if mode not in ("", "bind", "connect"):
        raise EndpointError(f"endpoint {text!r}: mode must be 'bind' or 'connect', got {mode!r}")
    if not address.startswith(("ipc://", "tcp://", "inproc://")):
        raise EndpointError(f"endpoint {text!r}: transport must be ipc://, tcp:// or inproc://")
    bind = (pattern in _BIND_BY_DEFAULT) if mode == "" else mode == "bind"
    return Endpoint(pattern, bind, address)


def _is_loopback_tcp(address: str) -> bool:
    return is_loopback_host(address[len("tcp://"):].rsplit(":", 1)[0])


def open_socket(
    ctx: zmq.Context,
    endpoint: str | Endpoint,
    *,
    hwm: int = DEFAULT_HWM,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    linger_ms: int = 2000,
    allow_remote: bool = False,
    subscribe: bytes = b"",
) -> zmq.Socket:
    """Create, configure and bind/connect a socket for ``endpoint``.

    Every socket gets a maximum message size (ZMQ drops a bigger message before it reaches us)
    and bounded queues. Binding TCP on a non-loopback address is refused unless
    ``allow_remote`` is set: exposing a stage to the network is an explicit decision.
    """
    ep = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
    sock = ctx.socket(PATTERNS[ep.pattern])
    sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
    sock.setsockopt(zmq.SNDHWM, int(hwm))
    sock.setsockopt(zmq.RCVHWM, int(hwm))
    sock.setsockopt(zmq.LINGER, int(linger_ms))
    if ep.pattern == "sub":
        sock.setsockopt(zmq.SUBSCRIBE, subscribe)
    if ep.bind:
        if ep.address.startswith("tcp://") and not allow_remote and not _is_loopback_tcp(ep.address):
            sock.close(0)
            raise EndpointError(
                f"refusing to bind {ep.address} on a non-loopback address; "
                "set transport.allow_remote: true to expose this stage to the network"
            )
        if ep.address.startswith("ipc://"):
            os.makedirs(os.path.dirname(ep.address[len("ipc://"):]) or ".", exist_ok=True)
        sock.bind(ep.address)
    else:
        sock.connect(ep.address)
    return sock
