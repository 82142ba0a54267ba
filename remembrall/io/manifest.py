"""Labelled sources for replaying annotated footage (benchmarks, the ``oracle`` labeler).

Two forms:

* a ``.jsonl`` **manifest**, one item per line: ``{"image": PATH, "label": NAME}`` with optional
  ``"id"`` and ``"ts"`` (seconds). Relative image paths are relative to the manifest's folder.
  Images are decoded with PyAV (png, jpg, anything FFmpeg reads) and resized like video frames.
* a video with a **sidecar** of per-frame labels: ``sources[].labels`` or, by default,
  ``<video>.labels.jsonl`` (``clip.mp4.labels.jsonl``, else ``clip.labels.jsonl``) next to the
  video; lines ``{"frame": N, "label": NAME}`` (N counts decoded frames from 0) or
  ``{"pts": SECONDS, "label": NAME}``, optional ``"id"``. Frames without a line get label None.

A malformed line or an unreadable image is logged with its line number and counted through
``stats.decode_error()``; it is never fatal, because one bad annotation must not stop a replay.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

from remembrall.io.errors import SourceError
from remembrall.io.frames import CountingStats, FrameSource, SourceStats, VideoFrame

log = logging.getLogger(__name__)

#: Bad lines logged one by one per file before only the summary is logged.
_LOG_FIRST = 20


def _label_value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f"'label' must be a string or an integer, got {v!r}")
    return str(v)


def _id_value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f"'id' must be a string or an integer, got {v!r}")
    return str(v)


def _number(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{key!r} must be a finite number, got {v!r}")
    return float(v)


class _BadLines:
    """Logs the first bad lines of a file individually and counts all of them."""

    def __init__(self, path: Path, stats: SourceStats) -> None:
        self.path = path
        self.stats = stats
        self.count = 0

    def bad(self, lineno: int, why: str) -> None:
        self.count += 1
        self.stats.decode_error(1)
        if self.count <= _LOG_FIRST:
            log.warning("%s:%d: skipped: %s", self.path, lineno, why)
        elif self.count == _LOG_FIRST + 1:
            log.warning("%s: more bad lines, logging only the summary from now on", self.path)


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if line:
                yield lineno, line


# ----------------------------------------------------------------------------------- manifest
class ManifestSource(FrameSource):
    """Frames from the images a ``.jsonl`` manifest lists, each carrying its label and id."""

    def __init__(self, uri: str, path: Path, *, loop: int = 1, **kw: Any) -> None:
        super().__init__(uri, **kw)
        self.path = Path(path)
        self.loop = loop
        self.base = self.path.resolve().parent
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(65536)
        except OSError as exc:
            raise SourceError(f"{uri}: cannot read manifest: {exc}") from None
        if b"\0" in head:
            raise SourceError(f"{uri}: is binary, not a JSONL manifest (one JSON object per line)")

    def _load_image(self, path: Path) -> np.ndarray:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no image stream in the file")
            for frame in container.decode(video=0):
                return self._to_rgb(frame)
        raise ValueError("no decodable image in the file")

    def _frames(self) -> Iterator[VideoFrame]:
        plays = 0
        while (self.loop == 0 or plays < self.loop) and not self._stopped():
            bad = _BadLines(self.path, self.stats)
            good = 0
            for lineno, line in _read_lines(self.path):
                if self._stopped():
                    return
                try:
                    item = json.loads(line)
                    if not isinstance(item, dict):
                        raise ValueError("a line must be a JSON object")
                    image = item.get("image")
                    if not isinstance(image, str) or not image:
                        raise ValueError("missing 'image' (a path to a png/jpg)")
                    label = _label_value(item.get("label"))
                    item_id = _id_value(item.get("id"))
                    ts = _number(item["ts"], "ts") if item.get("ts") is not None else None
                except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
                    bad.bad(lineno, f"malformed line ({exc})")
                    continue
                img_path = Path(image).expanduser()
                if not img_path.is_absolute():
                    img_path = self.base / img_path
                if not img_path.is_file():
                    bad.bad(lineno, f"image not found: {img_path}")
                    continue
                try:
                    img = self._load_image(img_path)
                except (av.FFmpegError, OSError, ValueError) as exc:
                    bad.bad(lineno, f"unreadable image {img_path}: {exc}")
                    continue
                good += 1
                yield VideoFrame(img, ts, -1, label, item_id)
            if bad.count:
                log.warning("%s: %d bad line(s) skipped, %d item(s) read", self.path, bad.count, good)
            if good == 0:
                if not self._stopped():
                    log.warning("%s: no usable item in the manifest", self.path)
                return
            plays += 1


# ----------------------------------------------------------------------------------- sidecar
class SidecarLabels:
    """Per-frame labels for a video, looked up by decoded frame number or by pts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.by_frame: dict[int, tuple[str | None, str | None]] = {}
        self._pts: list[float] = []
        self._pts_vals: list[tuple[str | None, str | None]] = []
        #: How far (seconds) a frame's pts may be from a line's ``pts`` to take its label.
        self.tolerance = 0.02

    def add_pts(self, pts: float, value: tuple[str | None, str | None]) -> None:
        i = bisect.bisect_left(self._pts, pts)
        self._pts.insert(i, pts)
        self._pts_vals.insert(i, value)

    def __len__(self) -> int:
        return len(self.by_frame) + len(self._pts)

    def lookup(self, frame_no: int, pts: float | None) -> tuple[str | None, str | None]:
        """``(label, id)`` for decoded frame ``frame_no`` at media time ``pts``, or ``(None, None)``."""
        hit = self.by_frame.get(frame_no)
        if hit is not None:
            return hit
        if pts is None or not self._pts:
            return None, None
        i = bisect.bisect_left(self._pts, pts)
        best = None
        for j in (i - 1, i):
            if 0 <= j < len(self._pts) and abs(self._pts[j] - pts) <= self.tolerance:
                if best is None or abs(self._pts[j] - pts) < abs(self._pts[best] - pts):
                    best = j
        return self._pts_vals[best] if best is not None else (None, None)


def sidecar_path(video: Path, configured: str | None) -> Path | None:
    """The sidecar file for ``video``: the configured one, or a default one that exists."""
    if configured:
        p = Path(configured).expanduser()
        if not p.is_absolute() and not p.exists() and (video.parent / p).exists():
            p = video.parent / p
        if not p.is_file():
            raise SourceError(f"{video}: labels file {configured} not found (sources[].labels)")
        return p
    for cand in (video.with_name(video.name + ".labels.jsonl"), video.with_suffix(".labels.jsonl")):
        if cand.is_file():
            return cand
    return None


def load_sidecar(video: Path, configured: str | None, stats: SourceStats | None = None) -> SidecarLabels | None:
    """Parse the sidecar labels of ``video`` (None when there is none); bad lines are skipped."""
    path = sidecar_path(Path(video), configured)
    if path is None:
        return None
    labels = SidecarLabels(path)
    bad = _BadLines(path, stats if stats is not None else CountingStats())
    try:
        lines = list(_read_lines(path))
    except OSError as exc:
        raise SourceError(f"{video}: cannot read labels file {path}: {exc}") from None
    for lineno, line in lines:
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError("a line must be a JSON object")
            value = (_label_value(item.get("label")), _id_value(item.get("id")))
            if item.get("frame") is not None:
                frame = item["frame"]
                if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
                    raise ValueError(f"'frame' must be an integer >= 0, got {frame!r}")
                labels.by_frame[frame] = value
            elif item.get("pts") is not None:
                labels.add_pts(_number(item["pts"], "pts"), value)
            else:
                raise ValueError("needs 'frame' (decoded frame number) or 'pts' (seconds)")
        except (ValueError, TypeError) as exc:
            bad.bad(lineno, f"malformed label line ({exc})")
    log.info("%s: %d label line(s) from %s (%d bad)", video, len(labels), path, bad.count)
    return labels
