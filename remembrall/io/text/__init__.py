"""Text sources: one iterator interface over files, followed files, directories, stdin, ZeroMQ and HTTP.

``open_text_source(cfg, text_cfg, stats, should_stop)`` returns a :class:`TextSource`; iterating
it yields :class:`TextItem` s. Which reader is used follows from ``cfg.uri``:

==============================  =====================================================  ==========
uri                             what it reads                                          ends
==============================  =====================================================  ==========
``PATH`` (a file)               the file once, ``live: yes`` (or ``follow://PATH``):   at EOF /
                                followed like ``tail -F`` (appends, rename rotation,   never
                                truncation; resumes at its saved offset on restart)
``PATH`` (a directory)          every file (``text.dir_glob``, in ``text.dir_order``)  after the
                                once; ``live: yes``: then new files as they appear     snapshot /
                                                                                       never
``-``                           standard input                                         at EOF
``zmq+pull:tcp://H:P``          one record (or several lines) per ZeroMQ message;      on
``zmq+sub:tcp://H:P``           pull binds, sub connects unless ``+bind``/``+connect`` ``{"eos":
                                is given (``zmq+sub+bind:…``)                          true}``
``http+listen://H:P/PATH``      POSTed JSON lines / plain lines, one request = one     on
                                batch, all-or-nothing (400 lists the bad lines)        ``{"eos":
                                                                                       true}``
``mqtt://H:P/TOPIC?qos=1``      one record (or several lines) per MQTT message;        on
``mqtts://…``                   wildcards allowed; qos=1: a persistent session         ``{"eos":
                                                                                       true}``
``redis://H:P/DB?stream=K``     a Redis Stream in a consumer group, at least once:     on an
``rediss://…``                  XACK only once the prediction is written (see          ``eos``
                                :mod:`remembrall.io.text.redis_source`)                entry
==============================  =====================================================  ==========

Follow vs read once: ``live: yes`` on a file or directory (or a ``follow://PATH`` URI) follows
it; ``auto``/``no`` reads it once and ends with end-of-stream, so a file run is finite and
reproducible. Network sources
are live unless ``live: no``. ``TextSource.live`` tells the stage whether to drop on
backpressure (live) or block (finite); ``text.backpressure`` overrides that in the stage.

Every line is plain text or a JSON object with ``text`` and optional ``id``, ``label``, ``ts``
(see :func:`remembrall.io.text.lines.parse_line`); bad lines are counted in :class:`TextStats`
with their position (``path:line``) and skipped, never raised.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from remembrall.config import SourceConfig, TextConfig
from remembrall.io.brokers import BrokerUrlError, parse_broker_url
from remembrall.io.errors import SourceError
from remembrall.io.sources import parse_source
from remembrall.io.text.base import TextItem, TextSource, TextSourceError, _never
from remembrall.io.text.files import DirectorySource, TextFileSource
from remembrall.io.text.http_source import HttpSource
from remembrall.io.text.lines import TextStats
from remembrall.io.text.mqtt_source import MqttSource
from remembrall.io.text.redis_source import RedisStreamSource, default_consumer
from remembrall.io.text.stdin import StdinSource
from remembrall.io.text.zmq_source import ZmqSource

__all__ = ["DirectorySource", "HttpSource", "MqttSource", "RedisStreamSource", "StdinSource", "TextFileSource",
           "TextItem", "TextSource", "TextSourceError", "TextStats", "ZmqSource", "open_text_source"]


def _live(cfg: SourceConfig, default: bool) -> bool:
    return default if cfg.live == "auto" else cfg.live == "yes"


def open_text_source(cfg: SourceConfig, text_cfg: TextConfig, stats: TextStats,
                     should_stop: Callable[[], bool] = _never, *, allow_remote: bool = False,
                     state_dir: str | None = None, on_connection: Callable[[bool], None] | None = None
                     ) -> TextSource:
    """Open the text source ``cfg.uri`` names (see the module docstring for the forms).

    ``state_dir``: where a followed file keeps its resume offset (the stage passes its run
    directory); ``on_connection(up)`` hears a broker source connect and disconnect. Raises
    :class:`TextSourceError` with an actionable message when the source cannot be opened; bad
    *content* never raises, it is counted in ``stats``.
    """
    try:
        parsed = parse_source(cfg)
    except SourceError as exc:
        raise TextSourceError(str(exc)) from None
    uri = parsed.uri
    if parsed.scheme == "-":
        return StdinSource(text_cfg, stats, should_stop, live=_live(cfg, False))
    if parsed.scheme == "zmq":
        return ZmqSource(uri, text_cfg, stats, should_stop, live=_live(cfg, True), allow_remote=allow_remote)
    if parsed.scheme == "http+listen":
        return HttpSource(uri, text_cfg, stats, should_stop, live=_live(cfg, True), allow_remote=allow_remote)
    if parsed.scheme in ("mqtt", "mqtts", "redis", "rediss"):
        try:
            url = parse_broker_url(uri)
        except BrokerUrlError as exc:
            raise TextSourceError(f"text source: {exc}") from None
        name = default_consumer(cfg.id)
        if url.scheme == "mqtt":
            return MqttSource(url, text_cfg, stats, should_stop, client_id=f"remembrall-{name}",
                              on_connection=on_connection)
        return RedisStreamSource(url, text_cfg, stats, should_stop, consumer=name, on_connection=on_connection)
    if not parsed.is_local:
        raise TextSourceError(
            f"text source {uri!r}: unsupported scheme; use a path, '-', zmq+pull:tcp://HOST:PORT, "
            "zmq+sub:tcp://HOST:PORT, http+listen://127.0.0.1:PORT/PATH, mqtt://HOST/TOPIC or "
            "redis://HOST/DB?stream=KEY"
        )
    follow = cfg.live == "yes" or parsed.scheme == "follow"
    path = str(parsed.path)
    if os.path.isdir(path):
        return DirectorySource(path, text_cfg, stats, should_stop, live=follow)
    state_path = None
    if follow and state_dir:
        safe = "".join(c if c.isalnum() else "_" for c in (cfg.id or os.path.abspath(path)))[-120:]
        state_path = os.path.join(state_dir, f"text-follow-{safe}.json")
    return TextFileSource(path, text_cfg, stats, should_stop, follow=follow, state_path=state_path)
