"""A real RTSP server for tests (Debian's gst-rtsp-server), bound to 127.0.0.1 only.

Run with the *system* interpreter, which has the GObject bindings:

    /usr/bin/python3 tests/rtsp_server.py PORT [--file VIDEO.mp4] [--lifetime SECONDS] [--path /test]

Serves ``rtsp://127.0.0.1:PORT/test``: a live ``videotestsrc`` (moving pattern, 320x240, 30 fps,
H.264) by default, or the H.264 track of an mp4 file. Prints ``READY rtsp://...`` on stdout once
listening. Exits after ``--lifetime`` seconds (default 120) so a forgotten server never lingers;
SIGTERM/SIGINT stop it at once.

Needs: apt-get install -y --no-install-recommends python3-gi gir1.2-gst-rtsp-server-1.0
gstreamer1.0-rtsp gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
gstreamer1.0-tools
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

TEST_PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={fps}/1 "
    "! timeoverlay ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
    "! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
FILE_PIPELINE = "( filesrc location={path} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--file", help="serve the H.264 track of this mp4 instead of a test pattern")
    ap.add_argument("--lifetime", type=float, default=120.0, help="exit after this many seconds")
    ap.add_argument("--path", default="/test", help="mount point")
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--fps", type=int, default=30)
    args = ap.parse_args(argv)

    Gst.init(None)
    if args.file:
        # GStreamer parses the launch line itself; quote the path for its tokenizer.
        launch = FILE_PIPELINE.format(path='"' + args.file.replace("\\", "\\\\").replace('"', '\\"') + '"')
    else:
        w, h = (int(x) for x in args.size.lower().split("x"))
        launch = TEST_PIPELINE.format(w=w, h=h, fps=args.fps)
    if not Gst.ElementFactory.find("timeoverlay"):
        launch = launch.replace("! timeoverlay ", "")  # plugins-base built without pango

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 2

    loop = GLib.MainLoop()
    GLib.timeout_add(int(args.lifetime * 1000), loop.quit)
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
