"""Shared pytest fixtures."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import pytest

# ================================================================================================
# Video files and RTSP (owner: io/video sources). Other fixtures go in their own block below.
# ================================================================================================

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def write_video(
    path: str | os.PathLike[str],
    frames: int = 60,
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
    codec: str = "libx264",
    faststart: bool = False,
) -> Path:
    """Encode a real video with PyAV: moving gradients plus a bright square that travels, so
    consecutive frames differ and a decoder that repeats or drops frames is caught."""
    import av
    import numpy as np

    path = Path(path)
    w, h = size
    opts = {"movflags": "faststart"} if faststart else {}
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w", options=opts) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(frames):
            img = np.stack(
                [(xx * 2 + i * 7) % 256, (yy * 2 + i * 5) % 256, (xx + yy + i * 11) % 256], axis=-1
            ).astype(np.uint8)
            s = max(4, min(w, h) // 6)
            x0 = (i * 9) % max(1, w - s)
            y0 = (i * 4) % max(1, h - s)
            img[y0 : y0 + s, x0 : x0 + s] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def make_video() -> Callable[..., Path]:
    """``make_video(path, frames=60, size=(320, 240), fps=25, codec="libx264", faststart=False)``."""
    return write_video


@pytest.fixture
def truncated_video(tmp_path: Path) -> Path:
    """A 50-frame faststart mp4 cut at half its bytes: the index survives, the media data ends
    mid-stream, so the first ~half of the frames decode and the last packet is damaged."""
    full = write_video(tmp_path / "full.mp4", frames=50, faststart=True)
    data = full.read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.fixture
def vtest_path() -> Path:
    """OpenCV's vtest.avi (Debian opencv-doc), or skip where it is not installed."""
    from remembrall.io.builtin import list_builtins

    path = list_builtins().get("vtest")
    if path is None:
        pytest.skip(
            "vtest.avi not found: install Debian opencv-doc or set REMEMBRALL_OPENCV_DATA to its "
            "examples/data folder"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@lru_cache(maxsize=1)
def _gst_rtsp_problem() -> str | None:
    """Why the system Python cannot run the RTSP server, or None if it can."""
    check = "import gi; gi.require_version('GstRtspServer', '1.0')"
    try:
        r = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} unusable: {exc}"
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["?"])[-1]
    return None


class RtspServer:
    """A gst-rtsp-server child process on a fixed port; ``stop()``/``start()`` simulate an outage."""

    def __init__(self, port: int, file: str | None = None, lifetime_s: float = 90.0) -> None:
        self.port = port
        self.file = file
        self.lifetime_s = lifetime_s
        self.url = f"rtsp://127.0.0.1:{port}/test"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        cmd = [SYSTEM_PYTHON, str(RTSP_SERVER_SCRIPT), str(self.port), "--lifetime", str(self.lifetime_s)]
        if self.file:
            cmd += ["--file", self.file]
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = self._read_ready(deadline)
            if line.startswith("READY"):
                return
            err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
            self.stop()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"RTSP server did not start on port {self.port}: {line!r} {err.strip()}")
            time.sleep(0.2)  # e.g. the port is still held by the previous instance: retry

    def _read_ready(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                return self.proc.stdout.readline().strip()
            if self.proc.poll() is not None:
                return ""
        return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # abrupt, like a crashed camera
        proc.wait(timeout=10)
        for fh in (proc.stdout, proc.stderr):
            if fh is not None:
                fh.close()


@pytest.fixture
def rtsp_server() -> Iterator[RtspServer]:
    """A live RTSP test-pattern server on a free port (``.url``, ``.stop()``, ``.start()``)."""
    problem = _gst_rtsp_problem()
    if problem is not None:
        pytest.skip(
            f"gst-rtsp-server not available to {SYSTEM_PYTHON} ({problem}); install: apt-get install -y "
            "--no-install-recommends python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp "
            "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-tools"
        )
    server = RtspServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


# rtsp_server.py imports gi, which only the system interpreter has: never collect it (doctests).
collect_ignore = ["rtsp_server.py"]

# ================================================================================================
# End of video/RTSP fixtures.
# ================================================================================================


# ================================================================================================
# Torch
# ================================================================================================


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny matrices gain nothing from threads, and on a shared 2-core box they thrash: 1 thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Real brokers (Mosquitto, Redis) on loopback: fixtures `mosquitto` and `redis_server`.
from tests.broker_servers import mosquitto, redis_server  # noqa: E402, F401

# CURVE key files for the remote label/training tests: fixture `keys`.
from tests.remote_servers import keys  # noqa: E402, F401
