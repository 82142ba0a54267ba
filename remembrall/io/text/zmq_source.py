"""ZeroMQ PULL/SUB sockets as a text source."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from remembrall.config import TextConfig
from remembrall.io.text.base import TextItem, TextSource, TextSourceError, _never
from remembrall.io.text.lines import TextStats

log = logging.getLogger(__name__)


class ZmqSource(TextSource):
    """A ZeroMQ PULL or SUB socket; each message (each frame of a multipart message) is one
    record, or several newline-separated ones. ``{"eos": true}`` ends the stream.

    Messages larger than ``text.max_request_bytes`` are refused by libzmq itself (it drops the
    connection of the peer that sent one), so a flood cannot exhaust memory.
    """

    def __init__(self, uri: str, text_cfg: TextConfig, stats: TextStats, should_stop: Callable[[], bool] = _never,
                 *, live: bool = True, allow_remote: bool = False, hwm: int = 1000) -> None:
        super().__init__(uri, text_cfg, stats, should_stop)
        import zmq

        from remembrall.io.endpoints import EndpointError, open_socket, parse_endpoint

        self.follows = True
        self.live = live
        endpoint = uri[len("zmq+"):]
        try:
            ep = parse_endpoint(endpoint)
        except EndpointError as exc:
            raise TextSourceError(f"text source {uri!r}: {exc}") from None
        if ep.pattern not in ("pull", "sub"):
            raise TextSourceError(f"text source {uri!r}: a text source reads with pull or sub, not {ep.pattern!r} "
                                  "(e.g. zmq+pull:tcp://127.0.0.1:5560)")
        self._zmq = zmq
        self.ctx = zmq.Context.instance()
        try:
            self.sock = open_socket(self.ctx, ep, hwm=hwm, max_message_bytes=text_cfg.max_request_bytes,
                                    allow_remote=allow_remote, linger_ms=0)
        except EndpointError as exc:
            raise TextSourceError(f"text source {uri!r}: {exc}") from None
        except zmq.ZMQError as exc:
            raise TextSourceError(f"text source {uri!r}: cannot {'bind' if ep.bind else 'connect'}: {exc}") from None
        self.endpoint = ep
        self._messages = 0

    def close(self) -> None:
        if self.sock is not None and not self.sock.closed:
            self.sock.close(0)

    def _items(self) -> Iterator[TextItem]:
        zmq = self._zmq
        while not self.should_stop():
            if not self.sock.poll(100, zmq.POLLIN):
                continue
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                continue
            ts = time.time()
            for data in frames:
                self._messages += 1
                yield from self._message_items(data, self._messages, ts)
                if self.ended_by_marker:
                    return
