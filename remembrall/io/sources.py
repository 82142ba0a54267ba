"""A source URI, parsed once: what it names (a path, a camera, a network address), where it lives
on disk, and whether it carries frames or text. The graph, the command line's pre-flight check,
``fit-base`` and both source openers all read it from :func:`parse_source`.

>>> from remembrall.config import SourceConfig
>>> parse_source(SourceConfig(uri="rtsp://cam.local/stream1"))[1:]
('rtsp', None, 'vision')
>>> parse_source(SourceConfig(uri="zmq+pull:tcp://127.0.0.1:5555")).modality
'text'
>>> s = parse_source(SourceConfig(uri="file:///data/clip.mp4"))
>>> s.scheme, str(s.path), s.is_local
('file', '/data/clip.mp4', True)
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from remembrall.config import SourceConfig
from remembrall.io.errors import SourceError

_TEXT_SCHEMES = {"-", "zmq", "http+listen", "follow", "mqtt", "mqtts", "redis", "rediss"}
_TEXT_SUFFIXES = (".txt", ".log", ".text", ".ndjson")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_CAMERA_RE = re.compile(r"^/dev/video\d+$")


class ParsedSource(NamedTuple):
    """``scheme``: ``""`` (a plain path), ``file``, ``follow``, ``builtin``, ``rtsp``, ``rtsps``,
    ``http``, ``https``, ``v4l2``, ``camera``, ``-`` (stdin), ``zmq``, ``http+listen``, or what an
    unsupported URI said; ``path``: the local file, folder or device it names, if any."""

    uri: str
    scheme: str
    path: Path | None
    modality: str

    @property
    def is_local(self) -> bool:
        """A file or folder on this machine (not a device, not the network, not a package's clip)."""
        return self.scheme in ("", "file", "follow")

    @property
    def must_exist(self) -> bool:
        """A file or folder read now (a followed one may appear later)."""
        return self.scheme in ("", "file")


def _scheme(uri: str) -> str:
    if uri == "-":
        return "-"
    if _CAMERA_RE.match(uri):
        return "camera"
    if uri.startswith("zmq+"):
        return "zmq"
    mt = _SCHEME_RE.match(uri)
    if mt is None:
        return ""
    scheme = mt.group(1).lower()
    # a local name may contain a colon ("clip:1.mp4"): only URIs with // or known schemes are URIs
    if scheme not in ("builtin", "v4l2") and not uri[mt.end():].startswith("//") and Path(uri).exists():
        return ""
    return scheme


def _path(uri: str, scheme: str) -> Path | None:
    if scheme == "":
        return Path(uri).expanduser()
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"{uri}: file:// URLs must name a local path (file:///abs/path)")
        return Path(unquote(parts.path))
    if scheme == "follow":
        return Path(uri[len("follow://"):]).expanduser()
    if scheme == "camera":
        return Path(uri)
    if scheme == "v4l2":
        return Path(urlsplit(uri).path)
    return None


def _jsonl_modality(path: Path) -> str:
    """A manifest names images; a text stream carries ``text``: decided by the first line."""
    with path.open("rb") as fh:
        for raw in fh:
            raw = raw.strip()
            if not raw:
                continue
            try:
                first = json.loads(raw[:1 << 20])
            except ValueError:
                return "text"
            return "vision" if isinstance(first, dict) and "image" in first else "text"
    return "text"


def parse_source(src: SourceConfig) -> ParsedSource:
    """Parse ``src.uri``; the modality is ``src.modality`` unless that is ``auto``. A ``file://``
    URL naming another host is a :class:`SourceError`."""
    uri = src.uri.strip()
    scheme = _scheme(uri)
    path = _path(uri, scheme)
    if src.modality != "auto":
        modality = "vision" if src.modality == "video" else src.modality
    elif scheme in _TEXT_SCHEMES:
        modality = "text"
    elif scheme in ("", "file") and path is not None:
        suffix = path.suffix.lower()
        if suffix in _TEXT_SUFFIXES or path.is_dir():
            modality = "text"
        elif suffix == ".jsonl" and path.is_file():
            modality = _jsonl_modality(path)
        else:
            modality = "vision"
    else:
        modality = "vision"
    return ParsedSource(uri, scheme, path, modality)


def detect_modality(src: SourceConfig) -> str:
    """``vision`` or ``text`` for a source."""
    return parse_source(src).modality


def read_at_full_speed(src: SourceConfig) -> bool:
    """A local file, folder or manifest read as fast as the pipeline takes it (not paced like a
    camera by ``realtime`` or ``max_fps``, nor a named pipe its writer paces): inference then
    keeps every core busy.

    >>> read_at_full_speed(SourceConfig(uri="clip.mp4")), read_at_full_speed(SourceConfig(uri="clip.mp4", realtime=True))
    (True, False)
    >>> read_at_full_speed(SourceConfig(uri="rtsp://cam.local/stream1"))
    False
    """
    parsed = parse_source(src)
    if parsed.scheme not in ("", "file", "builtin") or src.live == "yes" or src.realtime or src.max_fps:
        return False
    try:
        return parsed.path is None or not stat.S_ISFIFO(parsed.path.stat().st_mode)
    except OSError:  # not there yet: whoever opens it says what it is
        return True
