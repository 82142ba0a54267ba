"""Video sources: files, labelled manifests, RTSP/HTTP streams and cameras, all decoded by PyAV.

``open_source`` turns a :class:`~remembrall.config.SourceConfig` into a :class:`FrameSource`, an
iterator of :class:`VideoFrame` (RGB ``uint8``, optionally resized by FFmpeg's swscale, which is
far cheaper than resizing in numpy afterwards). Files are probed when opened, so a missing path or
a file that is not a video fails fast with a :class:`SourceError` instead of at the first frame.
Live sources (RTSP, live HTTP, cameras) never give up on a transient failure: they reconnect with
exponential backoff, sleep in short slices so a stop request is honoured within ~0.1 s, and keep
the frame ``index`` increasing across reconnects so downstream sequence numbers stay monotonic.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av

from remembrall.io.builtin import resolve_builtin
from remembrall.io.errors import SourceError
from remembrall.io.frames import (
    SLEEP_SLICE_S,
    ErrorCounter,
    FrameSource,
    SourceStats,
    StreamLost,
    VideoFrame,
    describe_error,
    redact,
)
from remembrall.io.manifest import ManifestSource, SidecarLabels, load_sidecar
from remembrall.io.sources import parse_source

if TYPE_CHECKING:
    from remembrall.config import SourceConfig

log = logging.getLogger(__name__)

#: FFmpeg "demuxers" that accept arbitrary text (ANSI art) and would turn a text file into frames.
_TEXT_FORMATS = {"tty"}
_TEXT_CODECS = {"ansi", "bintext", "xbin", "idf"}
#: Packets read while probing a file for its first decodable frame.
_PROBE_PACKETS = 300


_FILE_HINT = (
    "check that it is a video file (an .mp4 cut short loses its index and cannot be opened; "
    "re-encode or remux it)"
)
_URL_HINT = (
    "check the URL and that the server is up; set sources[].live: yes to keep retrying a server "
    "that is not up yet"
)


def _probe_video(
    target: str, uri: str, open_kwargs: dict[str, Any], hint: str = _FILE_HINT
) -> tuple[float | None, float | None]:
    """Open ``target`` and decode its first frame; return (duration s, fps) or raise SourceError."""
    try:
        container = av.open(target, **open_kwargs)
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(
            f"{redact(uri)}: cannot open as a video ({describe_error(exc)}); {hint}"
        ) from None
    try:
        streams = list(container.streams)
        if not container.streams.video:
            kinds = ", ".join(s.type for s in streams) or "none"
            raise SourceError(f"{redact(uri)}: has no video stream (streams found: {kinds})")
        stream = container.streams.video[0]
        codec = stream.codec_context.name if stream.codec_context else ""
        if container.format.name in _TEXT_FORMATS or codec in _TEXT_CODECS:
            raise SourceError(f"{redact(uri)}: looks like a text file, not a video (FFmpeg reads it as {codec!r})")
        duration = container.duration / 1e6 if container.duration else None
        fps = float(stream.average_rate) if stream.average_rate else None
        for i, packet in enumerate(container.demux(stream)):
            try:
                if packet.decode():
                    return duration, fps
            except (av.FFmpegError, ValueError):
                pass
            if i >= _PROBE_PACKETS:
                break
        raise SourceError(
            f"{redact(uri)}: no decodable video frame in the first {_PROBE_PACKETS} packets; "
            "the file is corrupt or uses a codec this FFmpeg build lacks"
        )
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(f"{redact(uri)}: unreadable video ({exc})") from None
    finally:
        container.close()


class VideoFileSource(FrameSource):
    """A finite video (a local file or a non-live HTTP URL): plays ``loop`` times (0 = forever),
    counts undecodable packets, gives up after ``max_decode_errors`` consecutive ones, and logs a
    summary of the damage at the end of each play."""

    def __init__(
        self,
        uri: str,
        target: str,
        *,
        loop: int = 1,
        open_kwargs: dict[str, Any] | None = None,
        labels: SidecarLabels | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(uri, **kw)
        self.target = target
        self.loop = loop
        self.open_kwargs = open_kwargs or {}
        self.labels = labels

    def _frames(self) -> Iterator[VideoFrame]:
        plays = 0
        offset = 0.0
        while (self.loop == 0 or plays < self.loop) and not self._stopped():
            try:
                container = self._track(av.open(self.target, **self.open_kwargs))
            except (av.FFmpegError, OSError) as exc:
                raise SourceError(f"{redact(self.uri)}: could not reopen for play {plays + 1}: {exc}") from None
            errors = ErrorCounter(self.stats, self.max_decode_errors)
            first_pts = last_pts = None
            n = 0
            try:
                stream = self._setup_stream(container)
                if self.labels is not None and self.fps:
                    self.labels.tolerance = 0.5 / self.fps
                for frame_no, pts, img in self._decode(container, stream, errors):
                    if pts is None and self.fps:  # raw elementary streams carry no timestamps
                        pts = frame_no / self.fps
                    label = item_id = None
                    if self.labels is not None:
                        label, item_id = self.labels.lookup(frame_no, pts)
                    if pts is not None:
                        if first_pts is None:
                            first_pts = pts
                        last_pts = pts
                    n += 1
                    yield VideoFrame(img, None if pts is None else pts + offset, -1, label, item_id)
            finally:
                self._release(container)
            if errors.total:
                log.warning(
                    "%s: %d undecodable packet(s) skipped, %d frame(s) decoded%s; first error: %s",
                    redact(self.uri), errors.total, n,
                    f", gave up after {errors.consecutive} consecutive errors" if errors.exhausted else "",
                    errors.first,
                )
            if n == 0:
                if not self._stopped():
                    log.warning("%s: no frame decoded in play %d, not looping further", redact(self.uri), plays + 1)
                return
            plays += 1
            if first_pts is not None and last_pts is not None:
                offset += last_pts - first_pts + (1.0 / self.fps if self.fps else 0.0)


class StreamSource(FrameSource):
    """A live source (RTSP, live HTTP, camera): reconnects with exponential backoff on failure or
    end of stream, forever or up to ``max_reconnects`` consecutive failed attempts."""

    def __init__(
        self,
        uri: str,
        target: str,
        *,
        open_kwargs: dict[str, Any],
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        max_reconnects: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__(uri, **kw)
        self.target = target
        self.open_kwargs = open_kwargs
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = max(reconnect_max_s, reconnect_initial_s)
        self.max_reconnects = max_reconnects
        self.attempts = 0  # consecutive failed (re)connection attempts

    def _sleep(self, seconds: float) -> bool:
        """Sleep in short slices; True if a stop was requested meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            if self._stopped():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(SLEEP_SLICE_S, left))

    def _frames(self) -> Iterator[VideoFrame]:
        delay = self.reconnect_initial_s
        name = redact(self.uri)
        while not self._stopped():
            got = 0
            try:
                container = self._track(av.open(self.target, **self.open_kwargs))
            except (av.FFmpegError, OSError) as exc:
                reason = f"cannot connect ({describe_error(exc)})"
            else:
                self.stats.connected(True)
                log.info("%s: connected", name)
                errors = ErrorCounter(self.stats, self.max_decode_errors)
                reason = "stream ended"
                try:
                    if not container.streams.video:
                        raise StreamLost("the stream carries no video")
                    stream = self._setup_stream(container)
                    for _no, pts, img in self._decode(container, stream, errors, stream_lost=True):
                        if got == 0:
                            self.attempts = 0
                            delay = self.reconnect_initial_s
                        got += 1
                        yield VideoFrame(img, pts, -1)
                except StreamLost as exc:
                    reason = str(exc)
                finally:
                    self._release(container)
                    self.stats.connected(False)
                if errors.total:
                    log.warning("%s: %d undecodable packet(s) skipped on this connection", name, errors.total)
            if self._stopped():
                return
            if not self.live:
                if got == 0:
                    raise SourceError(f"{name}: {reason}; (live: no, so no reconnect)")
                log.info("%s: %s after %d frame(s); live is off, not reconnecting", name, reason, got)
                return
            self.attempts += 1
            if self.max_reconnects and self.attempts > self.max_reconnects:
                raise SourceError(
                    f"{name}: {reason}; gave up after {self.max_reconnects} reconnect attempt(s) "
                    "(raise sources[].max_reconnects, or 0 to retry forever)"
                )
            limit = f"/{self.max_reconnects}" if self.max_reconnects else ""
            log.warning("%s: %s; reconnect attempt %d%s in %.2f s", name, reason, self.attempts, limit, delay)
            self.stats.reconnect()
            if self._sleep(delay):
                return
            delay = min(delay * 2.0, self.reconnect_max_s)


# ----------------------------------------------------------------------------------- opening


def open_source(
    cfg: SourceConfig,
    width: int | None,
    height: int | None,
    threads: int = 0,
    stats: SourceStats | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    max_decode_errors: int = 100,
) -> FrameSource:
    """Open the video source ``cfg`` describes; raise :class:`SourceError` if it cannot be used.

    Files and manifests are probed here (missing path, not a video, no decodable frame). Live
    sources connect lazily during iteration and retry with backoff, so a camera or server that is
    not up yet does not fail the stage.
    """
    parsed = parse_source(cfg)
    uri, scheme = parsed.uri, parsed.scheme
    if not uri:
        raise SourceError("source uri is empty: set sources[].uri to a path, rtsp://, http(s)://, /dev/videoN or builtin:NAME")
    common: dict[str, Any] = dict(
        width=width, height=height, threads=threads, stats=stats, should_stop=should_stop,
        max_fps=cfg.max_fps, max_decode_errors=max_decode_errors, realtime=cfg.realtime,
    )
    timeout = float(cfg.timeout_s)
    net_timeout_us = str(int(timeout * 1e6))
    reconnect = dict(
        reconnect_initial_s=cfg.reconnect_initial_s, reconnect_max_s=cfg.reconnect_max_s,
        max_reconnects=cfg.max_reconnects,
    )

    if scheme == "builtin":
        path = resolve_builtin(uri.split(":", 1)[1])
        return _open_file(cfg, uri, path, common)
    if scheme in ("rtsp", "rtsps"):
        opts = {"rtsp_transport": cfg.rtsp_transport, "timeout": net_timeout_us}
        return StreamSource(
            uri, uri, live=cfg.live != "no",
            open_kwargs={"options": opts, "timeout": (timeout, timeout)}, **reconnect, **common,
        )
    if scheme in ("http", "https"):
        open_kwargs = {"options": {"timeout": net_timeout_us}, "timeout": (timeout, timeout)}
        if cfg.live == "yes":
            return StreamSource(uri, uri, live=True, open_kwargs=open_kwargs, **reconnect, **common)
        duration, fps = _probe_video(uri, uri, open_kwargs, _URL_HINT)
        if cfg.live == "auto" and duration is None:
            log.info("%s: no duration advertised, treating it as a live stream", redact(uri))
            return StreamSource(uri, uri, live=True, open_kwargs=open_kwargs, **reconnect, **common)
        src = VideoFileSource(uri, uri, loop=cfg.loop, open_kwargs=open_kwargs, live=False, **common)
        src.fps = fps
        return src
    if scheme in ("v4l2", "camera"):
        dev = str(parsed.path)
        if not os.path.exists(dev):
            raise SourceError(f"{uri}: camera device {dev} does not exist (is the camera plugged in? `ls /dev/video*`)")
        return StreamSource(
            uri, dev, live=cfg.live != "no",
            open_kwargs={"format": "v4l2", "timeout": (timeout, timeout)}, **reconnect, **common,
        )
    if scheme in ("", "file"):
        return _open_file(cfg, uri, parsed.path, common)
    raise SourceError(
        f"{uri}: unsupported source scheme {scheme!r}; use a file path, file://, rtsp://, rtsps://, "
        "http(s)://, /dev/videoN, v4l2:///dev/videoN or builtin:NAME"
    )


def _open_file(cfg: SourceConfig, uri: str, path: Path, common: dict[str, Any]) -> FrameSource:
    if not path.exists():
        raise SourceError(f"{uri}: no such file ({path.resolve()}); check sources[].uri")
    if path.is_dir():
        raise SourceError(f"{uri}: is a directory; point sources[].uri at a video file or a .jsonl manifest")
    live = cfg.live == "yes"
    if path.suffix.lower() == ".jsonl":
        return ManifestSource(uri, path, loop=cfg.loop, live=live, **common)
    _, fps = _probe_video(str(path), uri, {})
    labels = load_sidecar(path, cfg.labels, common.get("stats"))
    src = VideoFileSource(uri, str(path), loop=cfg.loop, labels=labels, live=live, **common)
    src.fps = fps
    return src
