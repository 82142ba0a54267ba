"""Text files and directories: read once, or followed like ``tail -F`` (appends, rename
rotation, truncation; a followed file resumes at its saved offset after a restart)."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from remembrall.config import TextConfig
from remembrall.io.text.base import CHUNK, TextItem, TextSource, TextSourceError, _never
from remembrall.io.text.lines import LineSplitter, Record, TextStats

log = logging.getLogger(__name__)


class TextFileSource(TextSource):
    """A file read once, or followed (``tail -F``): appends, rename rotation and truncation.

    Following: at EOF it polls every ``text.poll_interval_s``. When the path names a different
    file (rotated by rename) it reads the old file to its end, then opens the new one from
    offset 0; when the file shrinks below the read offset (truncated, e.g. copytruncate) it
    starts again from 0. A missing file is waited for. An unfinished last line is held until
    its newline arrives. With ``state_path`` the offset of the last consumed line is saved
    atomically, so a restarted stage resumes there (at-least-once: lines after the last save
    are read again).
    """

    def __init__(self, path: str, text_cfg: TextConfig, stats: TextStats, should_stop: Callable[[], bool] = _never,
                 *, follow: bool = False, state_path: str | None = None) -> None:
        super().__init__(path, text_cfg, stats, should_stop)
        self.path = path
        self.follows = self.live = follow
        self.state_path = state_path
        self._f: BinaryIO | None = None
        self._committed: dict[str, Any] | None = None
        self._last_save = 0.0
        #: Rotations and truncations seen (for logs and tests).
        self.rotations = 0
        self.truncations = 0
        if not follow and not os.path.isfile(path):
            raise TextSourceError(f"text source {path!r}: no such file (use live: yes to wait for it to appear)")

    def close(self) -> None:
        if self._f is not None:
            self._save_state(force=True)
            self._f.close()
            self._f = None

    def _items(self) -> Iterator[TextItem]:
        if not self.follows:
            with open(self.path, "rb") as f:
                yield from self._read_stream(f, self.path)
            return
        yield from self._follow()

    # ---------------------------------------------------------------- follow
    def _load_state(self, st: os.stat_result) -> tuple[int, int] | None:
        if not self.state_path or not os.path.exists(self.state_path):
            return None
        try:
            state = json.loads(Path(self.state_path).read_text(encoding="utf-8"))
            same = (state["dev"], state["ino"]) == (st.st_dev, st.st_ino) and state["path"] == self.path
            offset = int(state["offset"])
            if same and 0 <= offset <= st.st_size and state.get("check") == self._check_bytes(offset):
                return offset, int(state["line"])
            log.info("%s: saved offset is for another file, beyond its end, or the bytes before it changed "
                     "(rewritten in place); reading it from the start", self.path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: ignoring unreadable follow state %s: %s", self.path, self.state_path, exc)
        return None

    def _check_bytes(self, offset: int) -> str:
        """Fingerprint of the bytes just before ``offset``: a file truncated and rewritten in place
        (same inode, size past the offset) is caught instead of resumed mid-line."""
        if offset == 0:
            return ""
        try:
            with open(self.path, "rb") as f:
                f.seek(max(0, offset - 64))
                return hashlib.sha1(f.read(min(64, offset))).hexdigest()
        except OSError:
            return "unreadable"

    def _save_state(self, force: bool = False) -> None:
        if not self.state_path or self._committed is None:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.text_cfg.checkpoint_interval_s:
            return
        self._last_save = now
        if self._f is not None and not self._f.closed:  # fingerprint the open file, not the path
            off = int(self._committed["offset"])
            self._committed["check"] = hashlib.sha1(os.pread(self._f.fileno(), min(64, off), max(0, off - 64))
                                                    ).hexdigest() if off else ""
        tmp = f"{self.state_path}.tmp.{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(self.state_path) or ".", exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self._committed, f)
            os.replace(tmp, self.state_path)
        except OSError as exc:
            log.warning("%s: cannot save follow state to %s: %s", self.path, self.state_path, exc)

    def _open(self, first: bool) -> tuple[BinaryIO, os.stat_result, int, int] | None:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - held across yields, closed in close()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TextSourceError(f"text source {self.path!r}: cannot open: {exc}") from None
        st = os.fstat(f.fileno())
        offset, line = 0, 0
        if first:
            saved = self._load_state(st)
            if saved is not None:
                offset, line = saved
                log.info("%s: resuming at byte %d (line %d)", self.path, offset, line)
            elif self.text_cfg.follow_from == "end":
                offset = st.st_size
        f.seek(offset)
        return f, st, offset, line

    def _follow(self) -> Iterator[TextItem]:
        cfg = self.text_cfg
        splitter = LineSplitter(cfg.max_line_bytes)
        first, waiting_logged = True, False
        offset = line_no = 0  # offset: just past the last complete line consumed
        st: os.stat_result | None = None
        while not self.should_stop():
            if self._f is None:
                opened = self._open(first)
                if opened is None:
                    if not waiting_logged:
                        log.info("%s: waiting for the file to appear", self.path)
                        waiting_logged = True
                    if self._wait(cfg.poll_interval_s):
                        return
                    continue
                self._f, st, offset, line_no = opened
                first, waiting_logged = False, False
                splitter.reset()
                self._committed = {"path": self.path, "dev": st.st_dev, "ino": st.st_ino,
                                   "offset": offset, "line": line_no}
            chunk_start = self._f.tell()
            chunk = self._f.read(CHUNK)
            if chunk:
                for raw, overflow, end in splitter.feed(chunk):
                    line_no += 1
                    pos = f"{self.path}:{line_no}"
                    rec = self._check(raw, overflow, pos)
                    offset = chunk_start + end
                    if isinstance(rec, Record):
                        yield self._item(rec, pos)
                    # the consumer asked for the next item: everything up to here is consumed
                    self._committed.update(offset=offset, line=line_no)  # type: ignore[union-attr]
                    self._save_state()
                continue
            # at the end of what is written now: rotated? truncated? else wait
            size = os.fstat(self._f.fileno()).st_size
            if size < self._f.tell():
                self.truncations += 1
                log.warning("%s: file truncated (size %d < offset %d); reading from the start",
                            self.path, size, self._f.tell())
                yield from self._flush_partial(splitter, line_no)
                self._f.seek(0)
                offset = line_no = 0
                splitter.reset()
                self._committed.update(offset=0, line=0)  # type: ignore[union-attr]
                continue
            try:
                now = os.stat(self.path)
                rotated = (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)  # type: ignore[union-attr]
            except FileNotFoundError:
                rotated = False  # renamed away, the new one not there yet: keep the old one open
            if rotated:
                tail = self._f.read(CHUNK)
                if tail:  # the writer appended between our read and the rename: drain first
                    self._f.seek(-len(tail), os.SEEK_CUR)
                    continue
                self.rotations += 1
                log.info("%s: file rotated; following the new file from its start", self.path)
                yield from self._flush_partial(splitter, line_no)
                self._f.close()
                self._f = None
                continue
            self._save_state()
            if self._wait(cfg.poll_interval_s):
                return

    def _flush_partial(self, splitter: LineSplitter, line_no: int) -> Iterator[TextItem]:
        """An unfinished last line of a rotated or truncated file will never be finished: emit it."""
        last = splitter.flush()
        if last is not None:
            pos = f"{self.path}:{line_no + 1}"
            rec = self._check(last[0], last[1], pos)
            if isinstance(rec, Record):
                yield self._item(rec, pos)


class DirectorySource(TextSource):
    """Every file of a directory once (a snapshot), then, when ``live``, new files as they appear.

    Order: by name (``text.dir_order: name``) or by modification time then name (``mtime``).
    Hidden files and ``*.tmp``/``*.part`` are skipped, and in live mode a new file is read only
    once its size and mtime have not changed for ``text.dir_settle_s``: write files elsewhere
    (or under a hidden/.tmp name) and rename them in. Each file is read once; files that
    change after being read are not re-read. Subdirectories are not descended into.
    """

    def __init__(self, path: str, text_cfg: TextConfig, stats: TextStats, should_stop: Callable[[], bool] = _never,
                 *, live: bool = False) -> None:
        super().__init__(path, text_cfg, stats, should_stop)
        self.path = path
        self.follows = self.live = live
        self._done: set[tuple[str, int, int]] = set()
        self._settling: dict[str, tuple[int, int, float]] = {}

    def _candidates(self) -> list[tuple[str, os.stat_result]]:
        out = []
        for p in glob.glob(os.path.join(glob.escape(self.path), self.text_cfg.dir_glob)):
            base = os.path.basename(p)
            if base.startswith(".") or base.endswith((".tmp", ".part", ".swp")):
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (p, st.st_dev, st.st_ino) not in self._done:
                out.append((p, st))
        if self.text_cfg.dir_order == "mtime":
            out.sort(key=lambda e: (e[1].st_mtime_ns, e[0]))
        else:
            out.sort(key=lambda e: e[0])
        return out

    def _read_file(self, p: str, st: os.stat_result) -> Iterator[TextItem]:
        self._done.add((p, st.st_dev, st.st_ino))
        try:
            f = open(p, "rb")  # noqa: SIM115
        except OSError as exc:
            log.warning("%s: cannot read %s: %s; skipped", self.path, p, exc)
            return
        with f:
            yield from self._read_stream(f, p)

    def _items(self) -> Iterator[TextItem]:
        if not os.path.isdir(self.path):
            raise TextSourceError(f"text source {self.path!r}: not a directory")
        for p, st in self._candidates():
            if self.should_stop():
                return
            yield from self._read_file(p, st)
        if not self.live:
            return
        settle = self.text_cfg.dir_settle_s
        while not self._wait(self.text_cfg.poll_interval_s):
            now = time.monotonic()
            for p, st in self._candidates():
                sig = (st.st_size, st.st_mtime_ns)
                prev = self._settling.get(p)
                if prev is None or prev[:2] != sig:
                    self._settling[p] = (*sig, now)
                    if settle > 0:
                        continue
                elif now - prev[2] < settle:
                    continue
                self._settling.pop(p, None)
                yield from self._read_file(p, st)
                if self.should_stop():
                    return
