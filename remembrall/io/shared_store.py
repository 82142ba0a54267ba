"""Where a fleet's pipelines leave blobs for each other (the shared specialist zoo): a folder every
host mounts (NFS, a shared volume), or a Redis Stream.

``open_share(where, origin)``: ``where`` is a directory path or
``redis://HOST[:PORT][/DB]?stream=KEY[&maxlen=N]`` (credentials from the environment, see
:mod:`remembrall.io.brokers.urls`). :meth:`publish` leaves a named blob; :meth:`fetch` returns the
blobs other pipelines left since the last call (its own never). Blobs are opaque here: what
they hold and whether they fit is the caller's business. A store that cannot be reached raises
:class:`ShareUnavailable`; the caller tries again later.

>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> a, b = open_share(root, "cam-a"), open_share(root, "cam-b")
>>> a.publish("cam-a-vision-v3", b"...")
>>> [name for name, _ in b.fetch()], b.fetch(), a.fetch()
(['cam-a-vision-v3'], [], [])
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from remembrall.atomic import atomic_write_bytes
from remembrall.io.brokers import BrokerUrl, BrokerUrlError, is_broker_url, parse_broker_url

log = logging.getLogger(__name__)

#: A blob larger than this is skipped (counted by the caller as refused), never read whole.
MAX_BLOB_BYTES = 64 << 20
SUFFIX = ".entry"


class ShareUnavailable(OSError):
    """The shared store cannot be reached right now."""


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:200]


class Share:
    """Blobs shared by the pipelines of a fleet; ``origin`` names this pipeline."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        #: blobs skipped for their size: (name, bytes)
        self.oversized: list[tuple[str, int]] = []

    def publish(self, name: str, blob: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def fetch(self) -> list[tuple[str, bytes]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class DirectoryShare(Share):
    """``ROOT/ORIGIN/NAME.entry``, written atomically: a reader sees a whole blob or none."""

    def __init__(self, root: str | os.PathLike[str], origin: str) -> None:
        super().__init__(origin)
        self.root = Path(root)
        self._seen: dict[Path, int] = {}  # path -> mtime_ns

    def publish(self, name: str, blob: bytes) -> None:
        try:
            atomic_write_bytes(self.root / _safe(self.origin) / (_safe(name) + SUFFIX), blob)
        except OSError as exc:
            raise ShareUnavailable(f"cannot write to the shared folder {self.root}: {exc}") from None

    def fetch(self) -> list[tuple[str, bytes]]:
        try:
            folders = [p for p in self.root.iterdir() if p.is_dir() and p.name != _safe(self.origin)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ShareUnavailable(f"cannot read the shared folder {self.root}: {exc}") from None
        out = []
        for folder in sorted(folders):
            for path in sorted(folder.glob("*" + SUFFIX)):
                try:
                    st = path.stat()
                    if self._seen.get(path) == st.st_mtime_ns:
                        continue
                    self._seen[path] = st.st_mtime_ns
                    if st.st_size > MAX_BLOB_BYTES:
                        self.oversized.append((path.name, st.st_size))
                        continue
                    out.append((path.name[: -len(SUFFIX)], path.read_bytes()))
                except OSError as exc:  # removed meanwhile, unreadable: the next look tries again
                    self._seen.pop(path, None)
                    log.debug("skipping %s: %s", path, exc)
        return out


class RedisShare(Share):
    """A Redis Stream: each blob an entry (``origin``, ``name``, ``blob``), trimmed to ``maxlen``
    (default 10,000) approximately; every pipeline reads all of it from the start."""

    def __init__(self, url: BrokerUrl, origin: str) -> None:
        super().__init__(origin)
        import redis

        self._redis = redis
        self.url = url
        self.client = redis.Redis(**url.redis_kwargs(), socket_timeout=10, socket_connect_timeout=5)
        self._last = "0"

    def _call(self, what: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except self._redis.AuthenticationError as exc:
            raise ShareUnavailable(f"{self.url.safe}: Redis refused the credentials ({exc}); set "
                                   "REMEMBRALL_REDIS_USERNAME / REMEMBRALL_REDIS_PASSWORD") from None
        except (self._redis.RedisError, OSError) as exc:
            raise ShareUnavailable(f"{self.url.safe}: cannot {what}: {exc}") from None

    def publish(self, name: str, blob: bytes) -> None:
        self._call("publish", self.client.xadd, self.url.stream,
                   {"origin": self.origin, "name": name, "blob": blob},
                   maxlen=self.url.maxlen or 10_000, approximate=True)

    def fetch(self) -> list[tuple[str, bytes]]:
        out = []
        while True:
            reply = self._call("read", self.client.xread, {self.url.stream: self._last}, count=64)
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                self._last = entry_id
                origin, name = fields.get(b"origin", b"").decode("utf-8", "replace"), fields.get(b"name", b"")
                if origin == self.origin:
                    continue
                blob = fields.get(b"blob", b"")
                label = name.decode("utf-8", "replace") or entry_id.decode()
                if len(blob) > MAX_BLOB_BYTES:
                    self.oversized.append((label, len(blob)))
                    continue
                out.append((label, blob))
            if len(entries) < 64:
                return out

    def close(self) -> None:
        self.client.close()


def open_share(where: str, origin: str) -> Share:
    """The store ``where`` names (a directory, or a redis:// URL with ``stream=``)."""
    if is_broker_url(where):
        try:
            url = parse_broker_url(where)
        except BrokerUrlError as exc:
            raise ValueError(f"zoo.share: {exc}") from None
        if url.scheme != "redis":
            raise ValueError(f"zoo.share: {url.safe}: a shared zoo lives in a folder or in Redis, not {url.scheme}")
        return RedisShare(url, origin)
    return DirectoryShare(where, origin)
