"""What every text source is: an iterator of :class:`TextItem` that counts bad lines instead of
raising, stops promptly when asked, and releases its resources on ``close()``."""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from remembrall.config import TextConfig
from remembrall.io.errors import SourceError
from remembrall.io.text.lines import EOS, LineError, LineSplitter, Record, TextStats, parse_line

log = logging.getLogger(__name__)


CHUNK = 64 << 10


class TextSourceError(SourceError):
    """A text source that cannot be opened; the message says what to change."""


@dataclass
class TextItem:
    """One text record from a stream.

    ``id`` is the input's ``id`` field, or its position when it has none; ``index`` counts
    items from 0 per source (the stream's ``seq``); ``position`` says where it came from
    (``path:line``, ``stdin:line``, ``zmq+pull:…#msg:line``, ``http+listen:…#req:line``).
    ``ts`` is the input's ``ts`` field when it has one, else ``ingest_ts`` (when it was read).
    """

    text: str
    id: str | int
    label: str | int | None
    ts: float
    index: int
    position: str
    ingest_ts: float = 0.0
    #: delivered before by a broker (a Redis entry pending from an earlier life or run)
    redelivered: bool = False


def _never() -> bool:
    return False


class TextSource:
    """Base of all text sources: iterate for items; ``close()`` (or ``with``) releases resources."""

    #: True for sources that never end by themselves (followed files, sockets, HTTP).
    follows = False
    #: True when the source cannot wait for a slow pipeline without losing or staling data,
    #: so the stage drops (counted) on backpressure instead of blocking.
    live = False

    def __init__(self, name: str, text_cfg: TextConfig, stats: TextStats,
                 should_stop: Callable[[], bool] = _never) -> None:
        self.name = name
        self.text_cfg = text_cfg
        self.stats = stats
        self.should_stop = should_stop
        self._index = 0
            #: Set when the producer ended the stream with an eos marker.
        self.ended_by_marker = False

    def __iter__(self) -> Iterator[TextItem]:
        return self._items()

    def _items(self) -> Iterator[TextItem]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release files, sockets, servers. Idempotent."""

    def acknowledge(self, through_index: int) -> None:
        """Every item up to ``through_index`` is written by the sink (with at-least-once delivery
        off: handed on): a source that can (a Redis consumer group) tells its server so, which
        then never delivers them again."""

    def __enter__(self) -> TextSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # ------------------------------------------------------------------ helpers
    def _check(self, raw: bytes, overflow: bool, position: str, *, allow_eos: bool = False) -> Record | object | None:
        """Parse one line and count it: a Record, EOS, or None (blank or dropped)."""
        parsed = parse_line(raw, overflow, self.text_cfg, allow_eos=allow_eos)
        if isinstance(parsed, LineError):
            self.stats.drop(parsed.reason, position, parsed.detail)
            return None
        if parsed is EOS:
            return EOS
        self.stats.seen(parsed)  # type: ignore[arg-type]
        return parsed

    def _item(self, rec: Record, position: str, ts: float | None = None) -> TextItem:
        ingest = ts if ts is not None else time.time()
        item = TextItem(rec.text, rec.id if rec.id is not None else position, rec.label,
                        rec.ts if rec.ts is not None else ingest, self._index, position, ingest)
        self._index += 1
        with self.stats._lock:
            self.stats.items += 1
        return item

    def _message_lines(self, data: bytes) -> list[tuple[bytes, bool]]:
        """The lines of one network message (ZeroMQ frame, MQTT payload, Redis entry): (raw, overflow)."""
        splitter = LineSplitter(self.text_cfg.max_line_bytes)
        lines = [(raw, ov) for raw, ov, _ in splitter.feed(data)]
        last = splitter.flush()
        if last is not None:
            lines.append(last)
        return lines

    def _message_items(self, data: bytes, number: int, ts: float) -> Iterator[TextItem]:
        """The items of the ``number``-th network message: its lines parsed and counted. An
        end-of-stream marker sets :attr:`ended_by_marker` and ends the items."""
        for n, (raw, overflow) in enumerate(self._message_lines(data), 1):
            pos = f"{self.name}#{number}:{n}"
            rec = self._check(raw, overflow, pos, allow_eos=True)
            if rec is EOS:
                self.ended_by_marker = True
                log.info("%s: end-of-stream marker received", self.name)
                return
            if isinstance(rec, Record):
                yield self._item(rec, pos, ts)

    def _wait(self, seconds: float) -> bool:
        """Poll-wait up to ``seconds`` (file systems give no portable change event); True if stopping."""
        deadline = time.monotonic() + seconds
        while not self.should_stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.05))
        return True

    def _read_stream(self, f: BinaryIO | int, label: str, start_line: int = 0) -> Iterator[TextItem]:
        """Read a file object or fd to its end, yielding items (``label:line`` positions)."""
        splitter = LineSplitter(self.text_cfg.max_line_bytes)
        line_no = start_line
        fd = f if isinstance(f, int) else None
        while not self.should_stop():
            if fd is not None:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if not ready:
                    continue
                chunk = os.read(fd, CHUNK)
            else:
                chunk = f.read(CHUNK)  # type: ignore[union-attr]
            if not chunk:
                break
            for raw, overflow, _end in splitter.feed(chunk):
                line_no += 1
                rec = self._check(raw, overflow, f"{label}:{line_no}")
                if isinstance(rec, Record):
                    yield self._item(rec, f"{label}:{line_no}")
        else:
            return  # stopped (not at EOF): do not emit a possibly unfinished last line
        last = splitter.flush()
        if last is not None:
            line_no += 1
            rec = self._check(last[0], last[1], f"{label}:{line_no}")
            if isinstance(rec, Record):
                yield self._item(rec, f"{label}:{line_no}")
