"""Bytes → validated text records: bounded line splitting and per-line parsing shared by all sources.

Every text source (file, directory, stdin, ZeroMQ, HTTP) reads bytes; turning them into records
happens here, once, so that all of them treat a 10 MB line, invalid UTF-8, binary garbage and
malformed JSON the same way: bounded memory, a counted drop with the line's position, never an
exception out of the source.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from remembrall.config import TextConfig

log = logging.getLogger(__name__)

#: Reasons a line is dropped (used as the ``reason`` label of remembrall_frames_dropped_total).
DROP_REASONS = ("invalid_utf8", "malformed_json", "bad_record", "oversized", "binary")

_BOM = b"\xef\xbb\xbf"
#: bytes.translate(None, _NOT_CONTROL) keeps only control bytes (C0 except tab/CR/LF/ESC, DEL).
_NOT_CONTROL = bytes(b for b in range(256) if not (b < 0x20 and b not in (0x09, 0x0A, 0x0D, 0x1B) or b == 0x7F))


@dataclass
class Record:
    """A valid input line before it gets its stream index: the text and the optional fields."""

    text: str
    id: str | int | None = None
    label: str | int | None = None
    ts: float | None = None
    truncated: bool = False
    replaced: bool = False


@dataclass
class LineError:
    """Why a line was dropped: ``reason`` (one of :data:`DROP_REASONS`) and a human detail."""

    reason: str
    detail: str


class _Eos:
    """The end-of-stream marker a network producer sends: the JSON line ``{"eos": true}``."""

    def __repr__(self) -> str:
        return "EOS"


EOS = _Eos()


class LineSplitter:
    """Split a byte stream into lines, holding at most ``max_line_bytes`` of any one line.

    A longer line is cut at the limit and the rest of it, up to its newline, is discarded as
    it arrives; the line is then reported with ``overflow=True``. Each line comes with the
    index just past its newline in the chunk that completed it, so a file follower can record
    exactly which bytes it has consumed.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max = int(max_line_bytes)
        self._buf = bytearray()
        self._overflow = False
        self._dropped = 0

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held (or discarded, past the limit) so far."""
        return len(self._buf) + self._dropped

    def feed(self, data: bytes) -> list[tuple[bytes, bool, int]]:
        """Add ``data``; return the lines it completes as ``(line, overflow, end_index)``."""
        out: list[tuple[bytes, bool, int]] = []
        start, n = 0, len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl
            if self._overflow:
                self._dropped += end - start
            else:
                room = self.max - len(self._buf)
                if end - start > room:
                    self._buf += data[start:start + room]
                    self._dropped += end - start - room
                    self._overflow = True
                else:
                    self._buf += data[start:end]
            if nl < 0:
                break
            out.append((bytes(self._buf), self._overflow, nl + 1))
            self.reset()
            start = nl + 1
        return out

    def flush(self) -> tuple[bytes, bool] | None:
        """The unfinished last line (input ended without a newline), if any."""
        if not self._buf and not self._overflow:
            return None
        line = (bytes(self._buf), self._overflow)
        self.reset()
        return line

    def reset(self) -> None:
        self._buf.clear()
        self._overflow = False
        self._dropped = 0


#: A line that is not UTF-8 and whose bytes are mostly undecodable is binary, not mis-encoded text
#: (Latin-1 prose has a few bad bytes per line; random or compressed data has about half).
INVALID_SHARE_BINARY = 0.25


def _invalid_share(raw: bytes) -> float:
    return raw.decode("utf-8", "replace").count("\ufffd") / max(1, len(raw))


def _control_share(raw: bytes) -> float:
    return len(raw.translate(None, _NOT_CONTROL)) / max(1, len(raw))


def _is_key(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse_line(raw: bytes, overflow: bool, cfg: TextConfig, *, allow_eos: bool = False) -> Record | LineError | _Eos | None:
    """Turn one raw line into a :class:`Record`, a :class:`LineError`, :data:`EOS`, or None (blank).

    Pure: no counting, no logging, so the HTTP source can validate a whole request before it
    accepts any of it.
    """
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if raw.startswith(_BOM):
        raw = raw[3:]
    if not overflow and not raw.strip():
        return None
    if b"\x00" in raw:
        return LineError("binary", "NUL byte in line")
    stripped = raw.lstrip()
    is_json = cfg.format == "jsonl" or (cfg.format == "auto" and stripped[:1] == b"{")
    replaced = False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if overflow and exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data":
            text = raw[:exc.start].decode("utf-8", "replace")  # the cut fell inside a character
        elif _control_share(raw) > cfg.binary_threshold or (len(raw) >= 8 and _invalid_share(raw) > INVALID_SHARE_BINARY):
            return LineError("binary", f"{_control_share(raw):.0%} control bytes, "
                                       f"{_invalid_share(raw):.0%} invalid UTF-8")
        elif cfg.invalid_utf8 == "replace":
            text, replaced = raw.decode("utf-8", "replace"), True
        else:
            return LineError("invalid_utf8", f"invalid UTF-8 at byte {exc.start}: {exc.reason}")
    if _control_share(raw) > cfg.binary_threshold:
        return LineError("binary", f"{_control_share(raw):.0%} control characters")
    if is_json:
        if overflow:
            return LineError("oversized", f"JSON line longer than text.max_line_bytes={cfg.max_line_bytes}; "
                                          "a cut JSON object cannot be parsed")
        try:
            obj = json.loads(text)
        except ValueError as exc:
            msg = getattr(exc, "msg", str(exc))
            col = getattr(exc, "colno", None)
            return LineError("malformed_json", f"{msg}" + (f" at column {col}" if col else ""))
        return _record_from_json(obj, cfg, replaced, allow_eos)
    truncated = False
    if overflow:
        if cfg.oversize == "reject":
            return LineError("oversized", f"line longer than text.max_line_bytes={cfg.max_line_bytes}")
        truncated = True
    if cfg.strip:
        text = text.strip()
    if not text:
        return None
    return Record(text, truncated=truncated, replaced=replaced)


def _record_from_json(obj: Any, cfg: TextConfig, replaced: bool, allow_eos: bool) -> Record | LineError | _Eos | None:
    if not isinstance(obj, dict):
        return LineError("bad_record", f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("eos") is True and "text" not in obj:
        return EOS if allow_eos else LineError("bad_record", "an {\"eos\": true} marker only ends network sources")
    text = obj.get("text")
    if not isinstance(text, str):
        return LineError("bad_record", "missing \"text\" (a string)" if text is None
                         else f"\"text\" must be a string, got {type(text).__name__}")
    rid, label, ts = obj.get("id"), obj.get("label"), obj.get("ts")
    if not _is_key(rid):
        return LineError("bad_record", f"\"id\" must be a string or an integer, got {type(rid).__name__}")
    if not _is_key(label):
        return LineError("bad_record", f"\"label\" must be a string or an integer, got {type(label).__name__}")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts)):
        return LineError("bad_record", f"\"ts\" must be a finite number (seconds since the epoch), got {ts!r}")
    if isinstance(rid, str) and len(rid) > 1024:
        return LineError("bad_record", "\"id\" longer than 1024 characters")
    if cfg.strip:
        text = text.strip()
    if not text:
        return None
    return Record(text, id=rid, label=label, ts=None if ts is None else float(ts), replaced=replaced)


class TextStats:
    """Counts of what a text source read and dropped, plus the positions of the latest bad lines.

    ``on_drop(reason)`` lets a stage mirror each drop into its Prometheus counter. Thread-safe:
    the HTTP source records from its server threads.
    """

    def __init__(self, log_errors: int = 20, on_drop: Callable[[str], None] | None = None,
                 keep_errors: int = 100) -> None:
        self.log_errors = log_errors
        self.on_drop = on_drop
        self.lines = 0
        self.items = 0
        self.empty = 0
        self.truncated = 0
        self.replaced = 0
        self.dropped: Counter[str] = Counter()
        self.errors: deque[tuple[str, str, str]] = deque(maxlen=keep_errors)
        self._lock = threading.Lock()

    def drop(self, reason: str, position: str, detail: str, *, line: bool = True) -> None:
        """Count a dropped line (or request, ``line=False``) and log the first ``log_errors`` of
        them with their position."""
        with self._lock:
            self.lines += line
            self.dropped[reason] += 1
            self.errors.append((position, reason, detail))
            total = sum(self.dropped.values())
        if total <= self.log_errors or total % 1000 == 0:
            log.warning("%s: dropped line (%s): %s [%d dropped so far]", position, reason, detail, total)
        if self.on_drop is not None:
            self.on_drop(reason)

    def seen(self, record: Record | None) -> None:
        """Count a line that parsed: a record, or a blank line (``None``)."""
        with self._lock:
            self.lines += 1
            if record is None:
                self.empty += 1
            else:
                self.truncated += record.truncated
                self.replaced += record.replaced

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"lines": self.lines, "items": self.items, "empty": self.empty, "truncated": self.truncated,
                    "replaced": self.replaced, "dropped": dict(self.dropped),
                    "errors": [list(e) for e in self.errors]}
