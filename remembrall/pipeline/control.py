"""Push one message into a running pipeline's socket from outside its stages: ``remembrall ctl``
(commands to retrain's ``retrain.control``) and the UI (a person's labels to ``label.labels``)."""

from __future__ import annotations

from pathlib import Path

import zmq

from remembrall.io.endpoints import open_socket
from remembrall.pipeline.messages import Message, encode_message


class PipelineUnreachable(RuntimeError):
    """The socket is not there (no such stage) or its stage did not take the message in time."""


def socket_path(sock_dir: str | Path, name: str) -> Path:
    """Where the stage that binds ``name`` listens (the graph's ``ipc://RUN_DIR/sockets/NAME``)."""
    return Path(sock_dir) / "sockets" / name


def push_message(sock_dir: str | Path, name: str, msg: Message, timeout_ms: int = 5000) -> None:
    """Deliver ``msg`` to the stage bound at socket ``name``; :class:`PipelineUnreachable` when no
    stage listens there or it does not take the message within ``timeout_ms``."""
    path = socket_path(sock_dir, name)
    if not path.exists():
        raise PipelineUnreachable(f"no stage listens on {name} in {sock_dir}")
    ctx = zmq.Context()  # its own, so that term() below waits until the message has left
    sock = open_socket(ctx, f"push+connect:ipc://{path}", linger_ms=timeout_ms)
    try:
        sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
        sock.send_multipart(encode_message(msg))
    except zmq.Again:
        raise PipelineUnreachable(f"the stage on {name} did not take the message within {timeout_ms} ms") from None
    finally:
        sock.close()
        ctx.term()
