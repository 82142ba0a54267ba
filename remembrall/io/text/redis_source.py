"""A Redis Stream read in a consumer group, at least once: an entry is acknowledged (XACK) only
after its prediction is written.

Redis keeps every entry it delivered to this consumer in the group's pending list until it is
acknowledged, so a pipeline killed mid-stream and started again reads those first. They are sent
again, marked ``redelivered``: the ones the killed life had already written (their XACK was on
its way) come out twice, marked; none is lost. Entries another consumer of the group left
pending for :data:`CLAIM_IDLE_S` (a pipeline that is gone for good, a container that came back
under another host name) are claimed and handled the same way.

An entry is one line (a field ``line`` or ``data``: plain text or a JSON object, as everywhere)
or the record's fields themselves (``text`` and optional ``id``, ``label``, ``ts``). The entry
``{"eos": true}`` (or a field ``eos``) ends the stream; it is acknowledged once everything before
it is. A bad entry is counted with its id and acknowledged (it can never be predicted). A server
that goes away is reconnected to with backoff. With ``transport.at_least_once: false`` an entry
is acknowledged when it is handed on (at most once).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from remembrall.config import TextConfig
from remembrall.io.brokers import BrokerUrl
from remembrall.io.text.base import TextItem, TextSource, TextSourceError, _never
from remembrall.io.text.lines import EOS, Record, TextStats

log = logging.getLogger(__name__)

BATCH = 64  # entries per XREADGROUP
BLOCK_MS = 100  # how long one read waits for new entries (the stop flag is checked in between)
ACK_EVERY_S = 0.2  # XACKs (and the state file) at most this often
BACKOFF_MAX_S = 30.0
CLAIM_IDLE_S = 60.0  # another consumer's entries pending this long are claimed
CLAIM_EVERY_S = 10.0


class RedisStreamSource(TextSource):
    """``redis://HOST[:PORT][/DB]?stream=KEY[&group=G][&consumer=C]`` (see the module docstring).

    ``group`` defaults to ``remembrall`` (created at the stream's start if missing), ``consumer``
    to ``HOST-NAME:SOURCE-ID``: the pending list is per consumer, so a restart under the same
    name reads it at once (under another, it is claimed after :data:`CLAIM_IDLE_S`).
    """

    follows = True
    live = False  # entries wait in Redis: the stage blocks on backpressure, nothing is dropped

    def __init__(self, url: BrokerUrl, text_cfg: TextConfig, stats: TextStats,
                 should_stop: Callable[[], bool] = _never, *, consumer: str,
                 on_connection: Callable[[bool], None] | None = None) -> None:
        super().__init__(url.safe, text_cfg, stats, should_stop)
        import redis

        self._redis = redis
        self.url = url
        self.group = url.group or "remembrall"
        self.consumer = url.consumer or consumer
        self.on_connection = on_connection or (lambda up: None)
        self.client = redis.Redis(**url.redis_kwargs(), socket_timeout=BLOCK_MS / 1000 + 5,
                                  socket_connect_timeout=5, health_check_interval=30)
        self._pending: deque[tuple[int, str]] = deque()  # (index, entry id) handed on, not XACKed
        self._to_ack: list[str] = []  # written (or bad) entries whose XACK has not reached Redis
        self._acked_at = 0.0
        self._claimed_at = time.monotonic()
        self._last_id = "0"  # the newest entry read: after a reconnect the pending list resumes here
        self._eos_id: str | None = None
        self._backoff = 0.5
        self._down_logged = False
        try:
            self._setup()
        except redis.AuthenticationError as exc:
            raise TextSourceError(f"text source {url.safe}: Redis refused the credentials ({exc}); set "
                                  "REMEMBRALL_REDIS_USERNAME / REMEMBRALL_REDIS_PASSWORD") from None
        except redis.ResponseError as exc:
            raise TextSourceError(f"text source {url.safe}: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._went_down(exc)  # a server that is not up yet: read once it is

    # ------------------------------------------------------------------ connection
    def _setup(self) -> None:
        try:
            self.client.xgroup_create(self.url.stream, self.group, id="0", mkstream=True)
            log.info("%s: created consumer group %s", self.name, self.group)
        except self._redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._connected(True)

    def _connected(self, up: bool) -> None:
        if up:
            if self._down_logged:
                log.info("%s: reconnected", self.name)
            self._down_logged, self._backoff = False, 0.5
        self.on_connection(up)

    def _went_down(self, exc: Exception) -> None:
        if not self._down_logged:
            log.warning("%s: Redis is unreachable (%s); retrying with backoff up to %.0f s, entries wait in "
                        "the stream", self.name, exc, BACKOFF_MAX_S)
            self._down_logged = True
        self.on_connection(False)

    def close(self) -> None:
        if self._eos_id is not None and not self._pending:
            self._to_ack.append(self._eos_id)
        try:
            self._flush_acks(force=True)
        except (self._redis.RedisError, OSError):
            pass
        self.client.close()

    # ------------------------------------------------------------------ acknowledgement
    def acknowledge(self, through_index: int) -> None:
        """XACK every entry handed on up to ``through_index`` (at most every :data:`ACK_EVERY_S`)."""
        while self._pending and self._pending[0][0] <= through_index:
            self._to_ack.append(self._pending.popleft()[1])
        if self._eos_id is not None and not self._pending:
            self._to_ack.append(self._eos_id)  # the end, once everything before it is written
            self._eos_id = None
        try:
            self._flush_acks()
        except (self._redis.RedisError, OSError):
            pass  # kept in _to_ack: sent with the next ones

    def _flush_acks(self, force: bool = False) -> None:
        if not self._to_ack or (not force and time.monotonic() - self._acked_at < ACK_EVERY_S):
            return
        self.client.xack(self.url.stream, self.group, *self._to_ack)
        self._to_ack.clear()
        self._acked_at = time.monotonic()

    # ------------------------------------------------------------------ reading
    def _read(self, start: str) -> list[tuple[str, dict[bytes, bytes] | None]]:
        reply = self.client.xreadgroup(self.group, self.consumer, {self.url.stream: start}, count=BATCH,
                                       block=None if start != ">" else BLOCK_MS)
        if not reply:
            return []
        return [(_text(eid), fields) for eid, fields in reply[0][1]]

    def _claim(self) -> list[tuple[str, dict[bytes, bytes] | None]]:
        """Entries other consumers of the group left pending for :data:`CLAIM_IDLE_S`."""
        self._claimed_at = time.monotonic()
        reply = self.client.xautoclaim(self.url.stream, self.group, self.consumer,
                                       min_idle_time=int(CLAIM_IDLE_S * 1000), start_id="0-0", count=BATCH)
        entries = reply[1] if isinstance(reply, (list, tuple)) and len(reply) > 1 else []
        mine = {entry_id for _, entry_id in self._pending}
        claimed = [(_text(eid), fields) for eid, fields in entries if _text(eid) not in mine]
        if claimed:
            log.warning("%s: claimed %d entries another consumer of group %s left pending for %.0f s",
                        self.name, len(claimed), self.group, CLAIM_IDLE_S)
        return claimed

    def _items(self) -> Iterator[TextItem | None]:  # type: ignore[override]
        redis = self._redis
        backlog = True  # first this consumer's pending list (a previous life's), then new entries
        retry_at = 0.0
        while not self.should_stop():
            if time.monotonic() < retry_at:
                time.sleep(0.05)
                yield None  # backing off: the stage takes acknowledgements meanwhile
                continue
            redelivered, claimed = backlog, False
            try:
                if self._down_logged:
                    self.client.ping()
                    self._setup()
                    backlog = redelivered = True  # what was delivered while the connection broke is pending
                if not backlog and time.monotonic() - self._claimed_at >= CLAIM_EVERY_S:
                    entries, redelivered, claimed = self._claim(), True, True
                else:
                    entries = self._read(self._last_id if backlog else ">")
                    if backlog and not entries:
                        backlog = False
                        continue
                self._flush_acks()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise TextSourceError(f"text source {self.name}: {exc}") from None
                log.warning("%s: the stream or its group was deleted; creating it again", self.name)
                self._setup()
                continue
            except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError, OSError) as exc:
                self._went_down(exc)
                retry_at = time.monotonic() + self._next_backoff()
                continue
            if not entries:
                yield None  # idle: the stage takes acknowledgements meanwhile
                continue
            for entry_id, fields in entries:
                if not claimed:  # ids read in order: a reconnect resumes the pending list after it
                    self._last_id = entry_id
                item = self._entry(entry_id, fields)
                if item is EOS:
                    self._eos_id = entry_id  # acknowledged once everything before it is
                    self.ended_by_marker = True
                    log.info("%s: end-of-stream entry %s", self.name, entry_id)
                    return
                if isinstance(item, TextItem):
                    item.redelivered = redelivered
                    self._pending.append((item.index, entry_id))
                    yield item
                else:
                    self._to_ack.append(entry_id)

    def _next_backoff(self) -> float:
        wait, self._backoff = self._backoff, min(BACKOFF_MAX_S, self._backoff * 2)
        return wait

    def _entry(self, entry_id: str, fields: dict[bytes, bytes] | None) -> TextItem | object | None:
        """The item of one entry, EOS, or None for one to acknowledge unread (bad, trimmed away)."""
        pos = f"{self.name}#{entry_id}"
        if not fields:
            self.stats.drop("bad_record", pos, "the entry was deleted or trimmed before it was read")
            return None
        raw = self._entry_line(fields)
        if isinstance(raw, str):
            self.stats.drop("bad_record", pos, raw)
            return None
        lines = self._message_lines(raw)
        if len(lines) != 1:
            self.stats.drop("bad_record", pos, f"an entry holds one record, this one has {len(lines)} lines")
            return None
        rec = self._check(*lines[0], pos, allow_eos=True)
        if rec is EOS:
            return EOS
        return self._item(rec, pos) if isinstance(rec, Record) else None

    def _entry_line(self, fields: dict[bytes, bytes]) -> bytes | str:
        """The entry as one input line, or why it is not one."""
        plain = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): v for k, v in fields.items()}
        for key in ("line", "data"):
            if key in plain and len(plain) == 1:
                return plain[key] if isinstance(plain[key], bytes) else str(plain[key]).encode()
        if "eos" in plain:
            return b'{"eos": true}'
        if "text" not in plain:
            return f"no 'text', 'line' or 'data' field (fields: {sorted(plain)[:8]})"
        record: dict[str, Any] = {}
        for key, value in plain.items():
            try:
                text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                return f"field {key!r} is not UTF-8"
            if key == "ts":
                try:
                    record[key] = float(text)
                except ValueError:
                    return f"field 'ts' is not a number: {text[:40]!r}"
            elif key in ("text", "id", "label"):
                record[key] = text
        return json.dumps(record, ensure_ascii=False).encode()


def _text(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def default_consumer(source_id: str) -> str:
    """A consumer name that stays the same when the pipeline restarts on this host."""
    return f"{socket.gethostname()}:{source_id}"
