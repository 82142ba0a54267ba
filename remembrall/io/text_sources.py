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
==============================  =====================================================  ==========

Follow vs read once: ``live: yes`` on a file or directory (or a ``follow://PATH`` URI) follows
it; ``auto``/``no`` reads it once and ends with end-of-stream, so a file run is finite and
reproducible. Network sources
are live unless ``live: no``. ``TextSource.live`` tells the stage whether to drop on
backpressure (live) or block (finite); ``text.backpressure`` overrides that in the stage.

Every line is plain text or a JSON object with ``text`` and optional ``id``, ``label``, ``ts``
(see :func:`remembrall.io.text_lines.parse_line`); bad lines are counted in :class:`TextStats`
with their position (``path:line``) and skipped, never raised.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import queue
import select
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from remembrall.config import SourceConfig, TextConfig
from remembrall.io.text_lines import EOS, LineError, LineSplitter, Record, TextStats, parse_line

log = logging.getLogger(__name__)

CHUNK = 64 << 10


class TextSourceError(RuntimeError):
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


# ---------------------------------------------------------------------------------------- files
class FileSource(TextSource):
    """A file read once, or followed (``tail -F``): appends, rename rotation and truncation.

    Following: at EOF it polls every ``text.poll_interval_s``. When the path names a different
    file (rotated by rename) it reads the old file to its end, then opens the new one from
    offset 0; when the file shrinks below the read offset (truncated, e.g. copytruncate) it
    starts again from 0. A missing file is waited for. An unfinished last line is held until
    its newline arrives. With ``state_path`` the offset of the last consumed line is saved
    atomically, so a restarted stage resumes there (at-least-once: lines after the last save
    are read again).
    """

    def __init__(self, path: str, text_cfg: TextConfig, stats: TextStats, should_stop: Callable[[], bool] = _never,
                 *, follow: bool = False, state_path: str | None = None) -> None:
        super().__init__(path, text_cfg, stats, should_stop)
        self.path = path
        self.follows = self.live = follow
        self.state_path = state_path
        self._f: BinaryIO | None = None
        self._committed: dict[str, Any] | None = None
        self._last_save = 0.0
        #: Rotations and truncations seen (for logs and tests).
        self.rotations = 0
        self.truncations = 0
        if not follow and not os.path.isfile(path):
            raise TextSourceError(f"text source {path!r}: no such file (use live: yes to wait for it to appear)")

    def close(self) -> None:
        if self._f is not None:
            self._save_state(force=True)
            self._f.close()
            self._f = None

    def _items(self) -> Iterator[TextItem]:
        if not self.follows:
            with open(self.path, "rb") as f:
                yield from self._read_stream(f, self.path)
            return
        yield from self._follow()

    # ---------------------------------------------------------------- follow
    def _load_state(self, st: os.stat_result) -> tuple[int, int] | None:
        if not self.state_path or not os.path.exists(self.state_path):
            return None
        try:
            state = json.loads(Path(self.state_path).read_text(encoding="utf-8"))
            same = (state["dev"], state["ino"]) == (st.st_dev, st.st_ino) and state["path"] == self.path
            offset = int(state["offset"])
            if same and 0 <= offset <= st.st_size and state.get("check") == self._check_bytes(offset):
                return offset, int(state["line"])
            log.info("%s: saved offset is for another file, beyond its end, or the bytes before it changed "
                     "(rewritten in place); reading it from the start", self.path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: ignoring unreadable follow state %s: %s", self.path, self.state_path, exc)
        return None

    def _check_bytes(self, offset: int) -> str:
        """Fingerprint of the bytes just before ``offset``: a file truncated and rewritten in place
        (same inode, size past the offset) is caught instead of resumed mid-line."""
        if offset == 0:
            return ""
        try:
            with open(self.path, "rb") as f:
                f.seek(max(0, offset - 64))
                return hashlib.sha1(f.read(min(64, offset))).hexdigest()
        except OSError:
            return "unreadable"

    def _save_state(self, force: bool = False) -> None:
        if not self.state_path or self._committed is None:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.text_cfg.checkpoint_interval_s:
            return
        self._last_save = now
        if self._f is not None and not self._f.closed:  # fingerprint the open file, not the path
            off = int(self._committed["offset"])
            self._committed["check"] = hashlib.sha1(os.pread(self._f.fileno(), min(64, off), max(0, off - 64))
                                                    ).hexdigest() if off else ""
        tmp = f"{self.state_path}.tmp.{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(self.state_path) or ".", exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self._committed, f)
            os.replace(tmp, self.state_path)
        except OSError as exc:
            log.warning("%s: cannot save follow state to %s: %s", self.path, self.state_path, exc)

    def _open(self, first: bool) -> tuple[BinaryIO, os.stat_result, int, int] | None:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - held across yields, closed in close()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TextSourceError(f"text source {self.path!r}: cannot open: {exc}") from None
        st = os.fstat(f.fileno())
        offset, line = 0, 0
        if first:
            saved = self._load_state(st)
            if saved is not None:
                offset, line = saved
                log.info("%s: resuming at byte %d (line %d)", self.path, offset, line)
            elif self.text_cfg.follow_from == "end":
                offset = st.st_size
        f.seek(offset)
        return f, st, offset, line

    def _follow(self) -> Iterator[TextItem]:
        cfg = self.text_cfg
        splitter = LineSplitter(cfg.max_line_bytes)
        first, waiting_logged = True, False
        offset = line_no = 0  # offset: just past the last complete line consumed
        st: os.stat_result | None = None
        while not self.should_stop():
            if self._f is None:
                opened = self._open(first)
                if opened is None:
                    if not waiting_logged:
                        log.info("%s: waiting for the file to appear", self.path)
                        waiting_logged = True
                    if self._wait(cfg.poll_interval_s):
                        return
                    continue
                self._f, st, offset, line_no = opened
                first, waiting_logged = False, False
                splitter.reset()
                self._committed = {"path": self.path, "dev": st.st_dev, "ino": st.st_ino,
                                   "offset": offset, "line": line_no}
            chunk_start = self._f.tell()
            chunk = self._f.read(CHUNK)
            if chunk:
                for raw, overflow, end in splitter.feed(chunk):
                    line_no += 1
                    pos = f"{self.path}:{line_no}"
                    rec = self._check(raw, overflow, pos)
                    offset = chunk_start + end
                    if isinstance(rec, Record):
                        yield self._item(rec, pos)
                    # the consumer asked for the next item: everything up to here is consumed
                    self._committed.update(offset=offset, line=line_no)  # type: ignore[union-attr]
                    self._save_state()
                continue
            # at the end of what is written now: rotated? truncated? else wait
            size = os.fstat(self._f.fileno()).st_size
            if size < self._f.tell():
                self.truncations += 1
                log.warning("%s: file truncated (size %d < offset %d); reading from the start",
                            self.path, size, self._f.tell())
                yield from self._flush_partial(splitter, line_no)
                self._f.seek(0)
                offset = line_no = 0
                splitter.reset()
                self._committed.update(offset=0, line=0)  # type: ignore[union-attr]
                continue
            try:
                now = os.stat(self.path)
                rotated = (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)  # type: ignore[union-attr]
            except FileNotFoundError:
                rotated = False  # renamed away, the new one not there yet: keep the old one open
            if rotated:
                tail = self._f.read(CHUNK)
                if tail:  # the writer appended between our read and the rename: drain first
                    self._f.seek(-len(tail), os.SEEK_CUR)
                    continue
                self.rotations += 1
                log.info("%s: file rotated; following the new file from its start", self.path)
                yield from self._flush_partial(splitter, line_no)
                self._f.close()
                self._f = None
                continue
            self._save_state()
            if self._wait(cfg.poll_interval_s):
                return

    def _flush_partial(self, splitter: LineSplitter, line_no: int) -> Iterator[TextItem]:
        """An unfinished last line of a rotated or truncated file will never be finished: emit it."""
        last = splitter.flush()
        if last is not None:
            pos = f"{self.path}:{line_no + 1}"
            rec = self._check(last[0], last[1], pos)
            if isinstance(rec, Record):
                yield self._item(rec, pos)


class DirectorySource(TextSource):
    """Every file of a directory once (a snapshot), then, when ``live``, new files as they appear.

    Order: by name (``text.dir_order: name``) or by modification time then name (``mtime``).
    Hidden files and ``*.tmp``/``*.part`` are skipped, and in live mode a new file is read only
    once its size and mtime have not changed for ``text.dir_settle_s``: write files elsewhere
    (or under a hidden/.tmp name) and rename them in. Each file is read once; files that
    change after being read are not re-read. Subdirectories are not descended into.
    """

    def __init__(self, path: str, text_cfg: TextConfig, stats: TextStats, should_stop: Callable[[], bool] = _never,
                 *, live: bool = False) -> None:
        super().__init__(path, text_cfg, stats, should_stop)
        self.path = path
        self.follows = self.live = live
        self._done: set[tuple[str, int, int]] = set()
        self._settling: dict[str, tuple[int, int, float]] = {}

    def _candidates(self) -> list[tuple[str, os.stat_result]]:
        out = []
        for p in glob.glob(os.path.join(glob.escape(self.path), self.text_cfg.dir_glob)):
            base = os.path.basename(p)
            if base.startswith(".") or base.endswith((".tmp", ".part", ".swp")):
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (p, st.st_dev, st.st_ino) not in self._done:
                out.append((p, st))
        if self.text_cfg.dir_order == "mtime":
            out.sort(key=lambda e: (e[1].st_mtime_ns, e[0]))
        else:
            out.sort(key=lambda e: e[0])
        return out

    def _read_file(self, p: str, st: os.stat_result) -> Iterator[TextItem]:
        self._done.add((p, st.st_dev, st.st_ino))
        try:
            f = open(p, "rb")  # noqa: SIM115
        except OSError as exc:
            log.warning("%s: cannot read %s: %s; skipped", self.path, p, exc)
            return
        with f:
            yield from self._read_stream(f, p)

    def _items(self) -> Iterator[TextItem]:
        if not os.path.isdir(self.path):
            raise TextSourceError(f"text source {self.path!r}: not a directory")
        for p, st in self._candidates():
            if self.should_stop():
                return
            yield from self._read_file(p, st)
        if not self.live:
            return
        settle = self.text_cfg.dir_settle_s
        while not self._wait(self.text_cfg.poll_interval_s):
            now = time.monotonic()
            for p, st in self._candidates():
                sig = (st.st_size, st.st_mtime_ns)
                prev = self._settling.get(p)
                if prev is None or prev[:2] != sig:
                    self._settling[p] = (*sig, now)
                    if settle > 0:
                        continue
                elif now - prev[2] < settle:
                    continue
                self._settling.pop(p, None)
                yield from self._read_file(p, st)
                if self.should_stop():
                    return


class StdinSource(TextSource):
    """Standard input (``-``) until EOF; reads with a timeout so a stop request is seen promptly."""

    def __init__(self, text_cfg: TextConfig, stats: TextStats, should_stop: Callable[[], bool] = _never,
                 *, live: bool = False, fd: int | None = None) -> None:
        super().__init__("stdin", text_cfg, stats, should_stop)
        self.live = live
        self.fd = sys.stdin.fileno() if fd is None else fd

    def _items(self) -> Iterator[TextItem]:
        yield from self._read_stream(self.fd, "stdin")


# ------------------------------------------------------------------------------------- network
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
                splitter = LineSplitter(self.text_cfg.max_line_bytes)
                lines = [(raw, ov) for raw, ov, _ in splitter.feed(data)]
                last = splitter.flush()
                if last is not None:
                    lines.append(last)
                for n, (raw, overflow) in enumerate(lines, 1):
                    pos = f"{self.name}#{self._messages}:{n}"
                    rec = self._check(raw, overflow, pos, allow_eos=True)
                    if rec is EOS:
                        self.ended_by_marker = True
                        log.info("%s: end-of-stream marker received", self.name)
                        return
                    if isinstance(rec, Record):
                        yield self._item(rec, pos, ts)


class _Pending:
    """A byte-bounded FIFO of accepted HTTP batches between the server threads and the iterator."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._q: queue.SimpleQueue[tuple[list[tuple[Record, str]], bool, int, float]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.closed = False

    def offer(self, batch: list[tuple[Record, str]], eos: bool, size: int) -> bool:
        with self._lock:
            if self.bytes > 0 and self.bytes + size > self.max_bytes:
                return False
            self.bytes += size
            self._q.put((batch, eos, size, time.time()))
            return True

    def take(self, timeout: float) -> tuple[list[tuple[Record, str]], bool, int, float] | None:
        try:
            entry = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            self.bytes -= entry[2]
        return entry


class HttpSource(TextSource):
    """An HTTP endpoint (stdlib ``http.server``) that accepts POSTed JSON lines or plain lines.

    ``POST /PATH`` with a ``Content-Length`` body: every line is validated first; if any is bad
    the answer is 400 with ``{"errors": [{"line": N, "reason": ..., "detail": ...}]}`` and
    nothing of the request is accepted (fix and resend without duplicates), else 200
    ``{"accepted": n}``. A body over ``text.max_request_bytes`` gets 413 (before it is read
    when the client sends ``Expect: 100-continue``), no Content-Length 411, a full pending
    queue 503 with ``Retry-After``, a request after end-of-stream 410. ``GET /healthz`` → 200.
    Binds 127.0.0.1 unless told otherwise; a non-loopback host needs ``allow_remote``.
    """

    def __init__(self, uri: str, text_cfg: TextConfig, stats: TextStats, should_stop: Callable[[], bool] = _never,
                 *, live: bool = True, allow_remote: bool = False) -> None:
        super().__init__(uri, text_cfg, stats, should_stop)
        self.follows = True
        self.live = live
        parts = urllib.parse.urlsplit("http://" + uri[len("http+listen://"):])
        host = parts.hostname or "127.0.0.1"
        try:
            port = parts.port if parts.port is not None else 8088
        except ValueError:
            raise TextSourceError(f"text source {uri!r}: bad port") from None
        if not allow_remote and host not in ("127.0.0.1", "localhost", "::1"):
            raise TextSourceError(f"text source {uri!r}: refusing to listen on {host}; bind 127.0.0.1 or set "
                                  "transport.allow_remote: true to expose the endpoint to the network")
        self.ingest_path = parts.path or "/ingest"
        self.pending = _Pending(text_cfg.max_pending_bytes)
        self._requests = 0
        self._req_lock = threading.Lock()
        self._eos_seen = False
        handler = _make_handler(self)
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise TextSourceError(f"text source {uri!r}: cannot listen on {host}:{port}: {exc}") from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}{self.ingest_path}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"http-text-{self.port}", daemon=True)
        self._thread.start()
        log.info("text source listening on %s", self.url)

    def close(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(5)
        self.server.server_close()

    def _items(self) -> Iterator[TextItem]:
        while not self.should_stop():
            entry = self.pending.take(0.1)
            if entry is None:
                continue
            batch, eos, _size, ts = entry
            for rec, pos in batch:
                yield self._item(rec, pos, ts)
            if eos:
                self.ended_by_marker = True
                log.info("%s: end-of-stream marker received", self.name)
                return

    # called from server threads
    def _handle_body(self, body: bytes, client: str) -> tuple[int, dict[str, Any]]:
        with self._req_lock:
            if self._eos_seen:
                return 410, {"error": "this stream has ended (an eos marker was received)"}
            self._requests += 1
            req = self._requests
        splitter = LineSplitter(self.text_cfg.max_line_bytes)
        lines = [(raw, ov) for raw, ov, _ in splitter.feed(body)]
        last = splitter.flush()
        if last is not None:
            lines.append(last)
        batch: list[tuple[Record, str]] = []
        errors: list[dict[str, Any]] = []
        eos = False
        for n, (raw, overflow) in enumerate(lines, 1):
            pos = f"{self.name}#{req}:{n}"
            parsed = parse_line(raw, overflow, self.text_cfg, allow_eos=True)
            if isinstance(parsed, LineError):
                errors.append({"line": n, "reason": parsed.reason, "detail": parsed.detail})
                self.stats.drop(parsed.reason, f"{pos} (from {client})", parsed.detail)
            elif parsed is EOS:
                eos = True
                if n != len(lines):
                    errors.append({"line": n, "reason": "bad_record", "detail": "eos marker must be the last line"})
            elif isinstance(parsed, Record):
                batch.append((parsed, pos))
            else:
                self.stats.seen(None)  # a blank line
        if errors:
            return 400, {"error": f"{len(errors)} bad line(s); nothing from this request was accepted",
                         "errors": errors[:100], "accepted": 0}
        with self._req_lock:
            if not self.pending.offer(batch, eos, len(body)):
                return 503, {"error": "ingest queue full; retry later", "accepted": 0}
            if eos:
                self._eos_seen = True
        for rec, _ in batch:
            self.stats.seen(rec)
        return 200, {"accepted": len(batch), "eos": eos}


def _make_handler(source: HttpSource) -> type[BaseHTTPRequestHandler]:
    max_body = source.text_cfg.max_request_bytes

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "remembrall-text"
        timeout = 30

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            log.debug("http %s: " + format, self.client_address[0], *args)

        def _reply(self, code: int, payload: dict[str, Any], extra: dict[str, str] | None = None,
                   close: bool = False) -> None:
            body = (json.dumps(payload) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def _length(self) -> int | None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self._reply(411, {"error": "chunked bodies are not accepted; send Content-Length"}, close=True)
                return None
            raw = self.headers.get("Content-Length")
            if raw is None:
                self._reply(411, {"error": "Content-Length required"}, close=True)
                return None
            try:
                n = int(raw)
                if n < 0:
                    raise ValueError
            except ValueError:
                self._reply(400, {"error": f"bad Content-Length {raw!r}"}, close=True)
                return None
            return n

        def _too_large(self, n: int) -> dict[str, Any]:
            return {"error": f"request body of {n} bytes exceeds text.max_request_bytes={max_body}; "
                             "split it into smaller POSTs"}

        def handle_expect_100(self) -> bool:
            n = self._length()
            if n is None:
                return False
            if n > max_body:
                source.stats.drop("oversized", f"{source.name} (from {self.client_address[0]})", f"{n}-byte request",
                                 line=False)
                self._reply(413, self._too_large(n), close=True)
                return False
            return super().handle_expect_100()

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            if self.path.split("?")[0] == "/healthz":
                self._reply(200, {"status": "ok", "pending_bytes": source.pending.bytes})
            else:
                self._reply(404, {"error": f"not found; POST lines to {source.ingest_path}"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != source.ingest_path:
                self._reply(404, {"error": f"not found; POST lines to {source.ingest_path}"}, close=True)
                return
            n = self._length()
            if n is None:
                return
            client = self.client_address[0]
            if n > max_body:
                source.stats.drop("oversized", f"{source.name} (from {client})", f"{n}-byte request", line=False)
                # read and discard a moderately oversized body so the client sees the 413 instead
                # of a reset connection; a huge one is cut off.
                left = n if n <= max(4 * max_body, 64 << 20) else 0
                with contextlib.suppress(OSError):
                    while left > 0:
                        got = self.rfile.read(min(CHUNK, left))
                        if not got:
                            break
                        left -= len(got)
                self._reply(413, self._too_large(n), close=True)
                return
            body = self.rfile.read(n)
            if len(body) != n:
                self._reply(400, {"error": f"body ended after {len(body)} of {n} bytes"}, close=True)
                return
            code, payload = source._handle_body(body, client)
            self._reply(code, payload, {"Retry-After": "1"} if code == 503 else None)

    return Handler


# ----------------------------------------------------------------------------------- dispatch
def _live(cfg: SourceConfig, default: bool) -> bool:
    return default if cfg.live == "auto" else cfg.live == "yes"


def open_text_source(cfg: SourceConfig, text_cfg: TextConfig, stats: TextStats,
                     should_stop: Callable[[], bool] = _never, *, allow_remote: bool = False,
                     state_dir: str | None = None) -> TextSource:
    """Open the text source ``cfg.uri`` names (see the module docstring for the forms).

    ``state_dir``: where a followed file keeps its resume offset (the stage passes its run
    directory). Raises :class:`TextSourceError` with an actionable message when the source
    cannot be opened; bad *content* never raises, it is counted in ``stats``.
    """
    uri = cfg.uri
    if uri == "-":
        return StdinSource(text_cfg, stats, should_stop, live=_live(cfg, False))
    if uri.startswith("zmq+"):
        return ZmqSource(uri, text_cfg, stats, should_stop, live=_live(cfg, True), allow_remote=allow_remote)
    if uri.startswith("http+listen://"):
        return HttpSource(uri, text_cfg, stats, should_stop, live=_live(cfg, True), allow_remote=allow_remote)
    if "://" in uri and not uri.startswith(("file://", "follow://")):
        raise TextSourceError(
            f"text source {uri!r}: unsupported scheme; use a path, '-', zmq+pull:tcp://HOST:PORT, "
            "zmq+sub:tcp://HOST:PORT or http+listen://127.0.0.1:PORT/PATH"
        )
    follow = cfg.live == "yes"
    if uri.startswith("follow://"):
        path, follow = uri[len("follow://"):], True
    else:
        path = uri[len("file://"):] if uri.startswith("file://") else uri
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        return DirectorySource(path, text_cfg, stats, should_stop, live=follow)
    state_path = None
    if follow and state_dir:
        safe = "".join(c if c.isalnum() else "_" for c in (cfg.id or os.path.abspath(path)))[-120:]
        state_path = os.path.join(state_dir, f"text-follow-{safe}.json")
    return FileSource(path, text_cfg, stats, should_stop, follow=follow, state_path=state_path)
