"""An HTTP endpoint that accepts POSTed lines, with a byte bound on what is accepted but unread
(backpressure reaches the client as 503 + Retry-After)."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from remembrall.config import TextConfig
from remembrall.io.text.base import CHUNK, TextItem, TextSource, TextSourceError, _never
from remembrall.io.text.lines import EOS, LineError, LineSplitter, Record, TextStats, parse_line

log = logging.getLogger(__name__)


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
