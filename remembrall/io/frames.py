"""What every video source is made of: the frame it yields, the stats callbacks it reports to,
and :class:`FrameSource`, the PyAV decode loop (resize in swscale, corrupt-packet counting, the
frame index kept monotonic over loops and reconnects) that files, streams and manifests share."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import av
import numpy as np

log = logging.getLogger(__name__)

#: Consecutive container read errors tolerated in a file even when max_decode_errors is 0.
_MAX_DEMUX_RETRIES = 10
#: Granularity of backoff sleeps, so ``should_stop`` is noticed quickly.
SLEEP_SLICE_S = 0.05


@dataclass
class VideoFrame:
    """One decoded frame, as the decode stage ships it downstream."""

    image: np.ndarray  # HxWx3 uint8 RGB, C-contiguous
    pts: float | None  # media time in seconds (monotonic over loops of a file)
    index: int  # 0,1,2,... over the whole source life (across reconnects and loops)
    label: str | None = None  # per-frame label from a manifest or sidecar file
    id: str | None = None  # item id from a manifest / sidecar line


class SourceStats(Protocol):
    """Callbacks the decode stage passes in so a source's troubles become metrics."""

    def decode_error(self, n: int = 1) -> None: ...

    def reconnect(self) -> None: ...

    def connected(self, up: bool) -> None: ...


class CountingStats:
    """A :class:`SourceStats` that only counts: for callers without metrics (fit-base, tests)."""

    def __init__(self) -> None:
        self.errors = 0
        self.reconnects = 0
        self.up = False

    def decode_error(self, n: int = 1) -> None:
        self.errors += n

    def reconnect(self) -> None:
        self.reconnects += 1

    def connected(self, up: bool) -> None:
        self.up = up


def redact(uri: str) -> str:
    """``uri`` with any password replaced, for log lines (RTSP cameras embed credentials)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ----------------------------------------------------------------------------------- helpers
class _RateLimiter:
    """Keeps frames on a ``1/max_fps`` grid of media time, so 25 fps -> 10 fps gives 10, not 8."""

    def __init__(self, max_fps: float | None) -> None:
        self.period = 1.0 / max_fps if max_fps else None
        self.next: float | None = None
        self.last: float | None = None

    def keep(self, pts: float | None) -> bool:
        if self.period is None:
            return True
        t = pts if pts is not None else time.monotonic()
        if self.next is None or (self.last is not None and t < self.last - self.period):
            self.next = t  # first frame, or the clock went back (reconnect): restart the grid
        self.last = t
        if t < self.next - 1e-6:
            return False
        self.next += self.period
        if self.next <= t:  # a gap in the stream: do not burst to catch up
            self.next = t + self.period
        return True


class _Pacer:
    """Holds frames to wall-clock time, one every ``period`` seconds (``ffmpeg -re``): a file played
    as a camera would deliver it. Falling behind by more than a second restarts the clock, so a
    stall is not followed by a burst."""

    def __init__(self) -> None:
        self.next: float | None = None

    def wait(self, period: float, stopped: Callable[[], bool]) -> None:
        now = time.monotonic()
        if self.next is None or now - self.next > 1.0:
            self.next = now
        while not stopped() and (delay := self.next - time.monotonic()) > 0:
            time.sleep(min(delay, 0.1))
        self.next += period


class ErrorCounter:
    """Counts undecodable packets (all and consecutive) and reports them to the stats sink."""

    def __init__(self, stats: SourceStats, cap: int) -> None:
        self.stats = stats
        self.cap = cap
        self.total = 0
        self.consecutive = 0
        self.first: str | None = None

    def error(self, exc: BaseException) -> None:
        self.total += 1
        self.consecutive += 1
        if self.first is None:
            self.first = str(exc)
        self.stats.decode_error(1)

    def ok(self) -> None:
        self.consecutive = 0

    @property
    def exhausted(self) -> bool:
        return self.cap > 0 and self.consecutive >= self.cap


class _CorruptPacket(Exception):
    """A packet the demuxer flagged as corrupt (truncated or damaged data)."""

    def __init__(self, frames: list[Any]) -> None:
        super().__init__("packet flagged corrupt by the demuxer (truncated or damaged data)")
        self.frames = frames


class StreamLost(Exception):
    """A live stream stopped delivering (read error, timeout, too many bad packets)."""


def describe_error(exc: BaseException) -> str:
    """A network error in words: PyAV reports its own timeout as "Immediate exit requested"."""
    if isinstance(exc, av.ExitError):
        return "timed out (no answer within sources[].timeout_s)"
    return str(exc)


def _target_size(width: int | None, height: int | None, src_w: int, src_h: int) -> tuple[int, int] | None:
    if width is None and height is None:
        return None
    if width is None:
        width = max(2, round(src_w * height / src_h))  # type: ignore[operator]
    if height is None:
        height = max(2, round(src_h * width / src_w))
    return int(width), int(height)


# ----------------------------------------------------------------------------------- sources
class FrameSource:
    """An iterator of :class:`VideoFrame`. Subclasses implement :meth:`_frames`; this class
    assigns the global ``index``, applies ``max_fps`` and stops on ``should_stop()``/``close()``."""

    live: bool = False
    uri: str = ""

    def __init__(
        self,
        uri: str,
        *,
        live: bool,
        width: int | None = None,
        height: int | None = None,
        threads: int = 0,
        stats: SourceStats | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        max_fps: float | None = None,
        max_decode_errors: int = 100,
        realtime: bool = False,
    ) -> None:
        self.uri = uri
        self.live = live
        self.width = width
        self.height = height
        self.threads = threads
        self.stats: SourceStats = stats if stats is not None else CountingStats()
        self.should_stop = should_stop
        self.max_decode_errors = max_decode_errors
        self.fps: float | None = None
        self._rate = _RateLimiter(max_fps)
        self._max_fps = max_fps
        self._pacer = _Pacer() if realtime else None
        self._index = 0
        self._closed = False
        self._containers: set[Any] = set()
        self._iterators: list[Iterator[VideoFrame]] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.uri)!r}, live={self.live})"

    def _stopped(self) -> bool:
        return self._closed or bool(self.should_stop())

    def __iter__(self) -> Iterator[VideoFrame]:
        it = self._iterate()
        self._iterators.append(it)
        return it

    def _iterate(self) -> Iterator[VideoFrame]:
        frames = self._frames()
        try:
            for frame in frames:
                if self._stopped():
                    return
                if not self._rate.keep(frame.pts):
                    continue
                if self._pacer is not None:
                    self._pacer.wait(1.0 / (self._max_fps or self.fps or 25.0), self._stopped)
                frame.index = self._index
                self._index += 1
                yield frame
        finally:
            frames.close()
            self._close_containers()

    def _frames(self) -> Iterator[VideoFrame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Stop iteration and release the decoder; safe to call twice. Called from another
        thread while a frame is being decoded, it only flags the stop; the reading thread then
        releases the decoder before its next frame (freeing it under its feet would crash)."""
        self._closed = True
        busy = False
        for it in self._iterators:
            try:
                it.close()  # type: ignore[attr-defined]
            except ValueError:  # "generator already executing" in another thread
                busy = True
        if not busy:
            self._iterators.clear()
            self._close_containers()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- shared PyAV plumbing
    def _track(self, container: Any) -> Any:
        self._containers.add(container)
        return container

    def _release(self, container: Any) -> None:
        self._containers.discard(container)
        try:
            container.close()
        except Exception:  # noqa: BLE001 - closing a broken container must not mask the real error
            pass

    def _close_containers(self) -> None:
        for c in list(self._containers):
            self._release(c)

    def _setup_stream(self, container: Any) -> Any:
        stream = container.streams.video[0]
        if self.threads:
            stream.codec_context.thread_count = self.threads
        stream.thread_type = "AUTO"
        if stream.average_rate:
            self.fps = float(stream.average_rate)
        return stream

    def _to_rgb(self, frame: Any) -> np.ndarray:
        size = _target_size(self.width, self.height, frame.width, frame.height)
        if size is None:
            img = frame.to_ndarray(format="rgb24")
        else:
            img = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
        return np.ascontiguousarray(img)

    def _decode(
        self, container: Any, stream: Any, errors: ErrorCounter, stream_lost: bool = False
    ) -> Iterator[tuple[int, float | None, np.ndarray]]:
        """Yield ``(frame number in this container, pts seconds, RGB image)``.

        An undecodable packet is counted and skipped. For files, a container read error is
        retried (FFmpeg resyncs) and the file is abandoned after ``max_decode_errors``
        consecutive failures; for streams (``stream_lost``) either condition raises
        :class:`StreamLost` so the caller reconnects.
        """
        frame_no = 0
        packets = container.demux(stream)
        demux_retries = 0
        while True:
            if self._stopped():
                return
            try:
                packet = next(packets)
            except StopIteration:
                return
            except (av.FFmpegError, OSError) as exc:
                if stream_lost:
                    raise StreamLost(f"read failed: {describe_error(exc)}") from exc
                errors.error(exc)
                demux_retries += 1
                if errors.exhausted or demux_retries >= _MAX_DEMUX_RETRIES:
                    return
                packets = container.demux(stream)
                continue
            try:
                frames = packet.decode()
                if packet.is_corrupt:  # e.g. the partial last packet of a truncated file
                    raise _CorruptPacket(frames)
            except (av.FFmpegError, ValueError, _CorruptPacket) as exc:
                # Frame-threaded decoders swallow errors on packets the demuxer flagged as
                # corrupt; count those anyway, and keep whatever frames they still produced.
                errors.error(exc)
                if errors.exhausted:
                    if stream_lost:
                        raise StreamLost(f"{errors.consecutive} consecutive undecodable packets") from exc
                    return
                frames = exc.frames if isinstance(exc, _CorruptPacket) else []
            else:
                errors.ok()
            demux_retries = 0
            for f in frames:
                yield frame_no, f.time, self._to_rgb(f)
                frame_no += 1
