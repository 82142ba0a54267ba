"""Self-describing ``.npz`` archives: arrays plus a JSON ``meta`` with a format name and version.

The replay buffer, the episodic memory and the specialist zoo persist this way: loading never
unpickles (``allow_pickle=False``), a file of another format or version is refused with a message
that names it, and a bad file can be moved aside (kept for inspection) so learning starts afresh
instead of failing — never loaded half.

>>> blob = pack({"format": "demo", "version": 1}, {"x": np.arange(3, dtype=np.float32)})
>>> meta, arrays = unpack(blob, "demo", 1, ValueError)
>>> meta["format"], arrays["x"].tolist()
('demo', [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")


def pack(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """``arrays`` and ``meta`` (JSON, stored as a uint8 array named ``meta``) as npz bytes."""
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8), **arrays)
    return buf.getvalue()


def unpack(data: bytes, fmt: str, version: int, error: type[Exception], where: str = "<bytes>"
           ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read :func:`pack` output, checking its format name and version; problems raise ``error``."""
    kind = fmt.rsplit(".", 1)[-1]  # "remembrall.replay" -> "replay", for the messages
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise error(f"{where}: not a readable {kind} file ({type(exc).__name__}: {exc})") from None
    if "meta" not in files:
        raise error(f"{where}: no metadata; not a remembrall {kind} file")
    try:
        meta = json.loads(files.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{where}: metadata is corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise error(f"{where}: not a remembrall {kind} file (format {found!r})")
    if meta.get("version") != version:
        raise error(f"{where}: {kind} format version {meta.get('version')!r}, this build reads version {version}; "
                    "delete the file (or let it be rebuilt) to start afresh")
    return meta, files


def move_aside(path: Path, reason: object, instead: str = "afresh") -> Path:
    """Rename a file that cannot be trusted to ``*.corrupt-<time>`` and log why, where, and what
    the caller starts with ``instead``."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    os.replace(path, aside)
    log.warning("%s; moved it to %s and started %s", reason, aside, instead)
    return aside


def open_or_rebuild(path: str | os.PathLike[str], load: Callable[[Path], T], fresh: Callable[[], T],
                    error: type[Exception], rebuild: bool = True, instead: str = "afresh") -> T:
    """``load(path)`` if the file exists, else ``fresh()``. A file ``load`` refuses (``error``) is
    re-raised, or with ``rebuild`` moved aside (see :func:`move_aside`) and replaced by ``fresh()``."""
    p = Path(path)
    if not p.exists():
        return fresh()
    try:
        return load(p)
    except error as exc:
        if not rebuild:
            raise
        move_aside(p, exc, instead)
        return fresh()
