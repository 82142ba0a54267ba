"""Text sources against real files, directories, pipes, ZeroMQ sockets and HTTP requests."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import zmq

from remembrall.config import SourceConfig, TextConfig
from remembrall.io.text import (
    HttpSource,
    TextFileSource,
    TextItem,
    TextSourceError,
    open_text_source,
)
from remembrall.io.text.lines import LineSplitter, TextStats

FAST = TextConfig(poll_interval_s=0.02, dir_settle_s=0.05, checkpoint_interval_s=0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Consumer:
    """Iterate a source in a thread, as a stage would, so a test can write while it reads."""

    def __init__(self, source: object) -> None:
        self.items: queue.Queue[TextItem] = queue.Queue()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.source = source
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.source:  # type: ignore[attr-defined]
                self.items.put(item)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.done.set()

    def take(self, n: int, timeout: float = 5.0) -> list[TextItem]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"got {len(out)} of {n} items: {[i.text for i in out]}"
            try:
                out.append(self.items.get(timeout=left))
            except queue.Empty:
                continue
        return out


def _read_all(uri: str, cfg: TextConfig = FAST, **kw: object) -> tuple[list[TextItem], TextStats]:
    stats = TextStats()
    with open_text_source(SourceConfig(uri=uri, **kw), cfg, stats) as src:
        return list(src), stats


# ------------------------------------------------------------------------------ line handling
def test_splitter_bounds_a_long_line_and_keeps_offsets() -> None:
    sp = LineSplitter(8)
    out = sp.feed(b"short\n0123456789abcdef")
    assert out == [(b"short", False, 6)]
    assert sp.pending == 16
    out = sp.feed(b"ghij\nnext")
    assert out == [(b"01234567", True, 5)]
    assert sp.flush() == (b"next", False)
    assert sp.flush() is None


def test_file_with_every_kind_of_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(
        b"\xef\xbb\xbfplain line one\r\n"
        b"\n   \n"
        b'{"text": "a json record", "id": "doc-7", "label": "sport", "ts": 1700000000.5}\n'
        b'{"text": "no close"\n'
        b"caf\xe9 latin-1 is not utf-8\n"
        + os.urandom(2000).replace(b"\n", b"") + b"\n"
        b'{"id": 3}\n'
        b'{"text": "ok", "label": [1]}\n'
        b'{"text": ["a list"]}\n'
        b'{"text": "int id", "id": 12, "label": 4}\n'
        b"last line without newline"
    )
    items, stats = _read_all(str(p))
    assert [i.text for i in items] == ["plain line one", "a json record", "int id", "last line without newline"]
    assert [i.index for i in items] == [0, 1, 2, 3]
    first, rec, intid, last = items
    assert first.id == f"{p}:1" and first.position == f"{p}:1" and first.label is None
    assert (rec.id, rec.label, rec.ts, rec.position) == ("doc-7", "sport", 1700000000.5, f"{p}:4")
    assert (intid.id, intid.label) == (12, 4)
    assert last.position == f"{p}:12"
    assert stats.dropped == {"malformed_json": 1, "invalid_utf8": 1, "binary": 1, "bad_record": 3}
    assert stats.empty == 2 and stats.lines == 12 and stats.items == 4
    where = {pos: reason for pos, reason, _ in stats.errors}
    assert where[f"{p}:5"] == "malformed_json"
    assert where[f"{p}:6"] == "invalid_utf8"
    assert where[f"{p}:7"] == "binary"
    assert where[f"{p}:8"] == where[f"{p}:9"] == where[f"{p}:10"] == "bad_record"


def test_invalid_utf8_replace_mode_keeps_the_line(tmp_path: Path) -> None:
    p = tmp_path / "latin.txt"
    p.write_bytes(b"caf\xe9 au lait\n")
    items, stats = _read_all(str(p), TextConfig(invalid_utf8="replace"))
    assert [i.text for i in items] == ["caf\ufffd au lait"]
    assert stats.replaced == 1 and not stats.dropped


def test_binary_file_is_counted_not_fatal(tmp_path: Path) -> None:
    p = tmp_path / "garbage.bin"
    p.write_bytes(os.urandom(256 << 10))
    items, stats = _read_all(str(p))
    assert items == [] or all("\x00" not in i.text for i in items)
    dropped = sum(stats.dropped.values())
    assert dropped >= 0.95 * stats.lines and stats.dropped["binary"] >= 0.9 * dropped


@pytest.mark.parametrize("mode", ["truncate", "reject"])
def test_ten_megabyte_line_costs_bounded_memory(tmp_path: Path, mode: str) -> None:
    p = tmp_path / "huge.txt"
    with p.open("wb") as f:
        f.write(b"before\n")
        f.write(("\u00e9" * (5 << 20)).encode())  # 10 MB of 2-byte characters, one line
        f.write(b"\nafter\n")
    cfg = TextConfig(max_line_bytes=1 << 20, oversize=mode)
    tracemalloc.start()
    try:
        items, stats = _read_all(str(p), cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20, f"peak {peak} bytes: the 10 MB line was held whole"
    texts = [i.text for i in items]
    if mode == "truncate":
        assert texts[0] == "before" and texts[2] == "after"
        assert texts[1] == "\u00e9" * (1 << 19)  # cut at the limit, on a character boundary
        assert stats.truncated == 1 and not stats.dropped
    else:
        assert texts == ["before", "after"]
        assert stats.dropped == {"oversized": 1}
        assert stats.errors[0][0] == f"{p}:2"


def test_oversized_json_line_is_rejected_even_in_truncate_mode(tmp_path: Path) -> None:
    p = tmp_path / "big.jsonl"
    p.write_text(json.dumps({"text": "x" * 5000}) + "\n" + json.dumps({"text": "small"}) + "\n")
    items, stats = _read_all(str(p), TextConfig(max_line_bytes=1024))
    assert [i.text for i in items] == ["small"]
    assert stats.dropped == {"oversized": 1}


def test_empty_inputs_end_cleanly(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_bytes(b"\n\n  \n")
    (tmp_path / "emptydir").mkdir()
    for name in ("empty.txt", "blank.txt", "emptydir"):
        items, stats = _read_all(str(tmp_path / name))
        assert items == [] and not stats.dropped


def test_missing_file_and_bad_scheme_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TextSourceError, match="no such file.*live: yes"):
        open_text_source(SourceConfig(uri=str(tmp_path / "nope.txt")), FAST, TextStats())
    with pytest.raises(TextSourceError, match="unsupported scheme"):
        open_text_source(SourceConfig(uri="ftp://x/y"), FAST, TextStats())
    with pytest.raises(TextSourceError, match="pull or sub"):
        open_text_source(SourceConfig(uri="zmq+push:tcp://127.0.0.1:5999"), FAST, TextStats())
    with pytest.raises(TextSourceError, match="refusing to listen"):
        open_text_source(SourceConfig(uri="http+listen://0.0.0.0:0/ingest"), FAST, TextStats())


# ---------------------------------------------------------------------------------- following
def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()


def test_follow_appends_partial_lines_rotation_and_truncation(tmp_path: Path) -> None:
    log_path = tmp_path / "app.log"
    log_path.write_text("one\ntwo\n")
    stop = threading.Event()
    src = open_text_source(SourceConfig(uri=str(log_path), live="yes"), FAST, TextStats(), stop.is_set)
    assert src.follows and src.live
    c = Consumer(src)
    try:
        assert [i.text for i in c.take(2)] == ["one", "two"]
        _append(log_path, "three\nfo")  # a writer caught mid-line
        assert c.take(1)[0].text == "three"
        time.sleep(0.1)  # several polls: the unfinished line must not come out early
        assert c.items.empty()
        _append(log_path, "ur\n")
        four = c.take(1)[0]
        assert (four.text, four.position) == ("four", f"{log_path}:4")

        # rotation by rename: the old file gets a last line after the rename, then a new file appears
        os.rename(log_path, tmp_path / "app.log.1")
        _append(tmp_path / "app.log.1", "five (late write to the rotated file)\n")
        time.sleep(0.1)
        log_path.write_text("six\n")
        got = c.take(2)
        assert [i.text for i in got] == ["five (late write to the rotated file)", "six"]
        assert got[1].position == f"{log_path}:1"
        assert src.rotations == 1

        # truncation (copytruncate): the file shrinks, reading restarts at 0
        _append(log_path, "seven\n")
        assert c.take(1)[0].text == "seven"
        with log_path.open("w") as f:
            f.write("eight\n")
        got = c.take(1)
        assert (got[0].text, got[0].position) == ("eight", f"{log_path}:1")
        assert src.truncations == 1
        assert [i.index for i in [four, *got]] == [3, 7]
    finally:
        stop.set()
        c.done.wait(5)
        src.close()
    assert c.done.is_set() and c.error is None


def test_follow_waits_for_missing_file_and_resumes_at_saved_offset(tmp_path: Path) -> None:
    log_path = tmp_path / "late.log"
    state = tmp_path / "state" / "follow.json"
    stop = threading.Event()
    src = TextFileSource(str(log_path), FAST, TextStats(), stop.is_set, follow=True, state_path=str(state))
    c = Consumer(src)
    time.sleep(0.1)
    log_path.write_text("a\nb\nc\n")
    assert [i.text for i in c.take(3)] == ["a", "b", "c"]
    stop.set()
    c.done.wait(5)
    src.close()
    saved = json.loads(state.read_text())
    assert saved["offset"] == 6 and saved["line"] == 3

    _append(log_path, "d\ne\n")  # written while the stage was down
    stop2 = threading.Event()
    src2 = TextFileSource(str(log_path), FAST, TextStats(), stop2.is_set, follow=True, state_path=str(state))
    c2 = Consumer(src2)
    try:
        got = c2.take(2)
        assert [(i.text, i.position) for i in got] == [("d", f"{log_path}:4"), ("e", f"{log_path}:5")]
        time.sleep(0.1)
        assert c2.items.empty()
    finally:
        stop2.set()
        c2.done.wait(5)
        src2.close()

    with log_path.open("r+b") as f:  # rewritten in place while down: same inode, longer, other bytes
        f.write(b"X\nY\nZ\nW\nV\nU\n")
    stop3 = threading.Event()
    src3 = TextFileSource(str(log_path), FAST, TextStats(), stop3.is_set, follow=True, state_path=str(state))
    c3 = Consumer(src3)
    try:
        assert [i.position for i in c3.take(6)][:2] == [f"{log_path}:1", f"{log_path}:2"]
    finally:
        stop3.set()
        c3.done.wait(5)
        src3.close()


def test_follow_prefix_and_follow_from_end(tmp_path: Path) -> None:
    log_path = tmp_path / "x.log"
    log_path.write_text("old\n")
    stop = threading.Event()
    cfg = TextConfig(poll_interval_s=0.02, follow_from="end")
    src = open_text_source(SourceConfig(uri=f"follow://{log_path}"), cfg, TextStats(), stop.is_set)
    c = Consumer(src)
    try:
        time.sleep(0.1)
        _append(log_path, "new\n")
        assert [i.text for i in c.take(1)] == ["new"]
    finally:
        stop.set()
        c.done.wait(5)
        src.close()


# ------------------------------------------------------------------------------- directories
def test_directory_snapshot_order_then_new_files_when_live(tmp_path: Path) -> None:
    d = tmp_path / "inbox"
    d.mkdir()
    (d / "b.txt").write_text("b1\nb2\n")
    (d / "a.txt").write_text("a1\n")
    (d / ".hidden").write_text("never\n")
    (d / "c.txt.part").write_text("never\n")
    (d / "sub").mkdir()
    items, _ = _read_all(str(d))
    assert [(i.text, i.position) for i in items] == [("a1", f"{d}/a.txt:1"), ("b1", f"{d}/b.txt:1"),
                                                    ("b2", f"{d}/b.txt:2")]
    stop = threading.Event()
    src = open_text_source(SourceConfig(uri=str(d), live="yes"), FAST, TextStats(), stop.is_set)
    c = Consumer(src)
    try:
        assert [i.text for i in c.take(3)] == ["a1", "b1", "b2"]
        tmp = d / ".incoming"
        tmp.write_text("z1\n")
        os.rename(tmp, d / "z.txt")
        (d / "m.txt").write_text("m1\n")
        got = [i.text for i in c.take(2)]
        assert sorted(got) == ["m1", "z1"]
        time.sleep(0.15)
        assert c.items.empty()  # nothing is read twice
    finally:
        stop.set()
        c.done.wait(5)
        src.close()


# ------------------------------------------------------------------------------------ stdin
def test_stdin_through_a_real_pipe() -> None:
    code = (
        "import json,sys\n"
        "from remembrall.config import SourceConfig\n"
        "from remembrall.config import TextConfig\n"
        "from remembrall.io.text.lines import TextStats\n"
        "from remembrall.io.text import open_text_source\n"
        "st = TextStats()\n"
        "for it in open_text_source(SourceConfig(uri='-'), TextConfig(), st):\n"
        "    print(json.dumps([it.text, it.position, it.label]), flush=True)\n"
        "print(json.dumps(dict(st.dropped)))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline()) == ["hello", "stdin:1", None]  # streamed, not buffered
    out, err = proc.communicate(b'{"text": "labelled", "label": "tech"}\ncaf\xe9\n{broken\n', timeout=20)
    lines = out.decode().splitlines()
    assert proc.returncode == 0, err.decode()
    assert json.loads(lines[0]) == ["labelled", "stdin:2", "tech"]
    assert json.loads(lines[1]) == {"invalid_utf8": 1, "malformed_json": 1}
    assert b"stdin:3" in err and b"stdin:4" in err

    empty = subprocess.run([sys.executable, "-c", code], input=b"", capture_output=True, timeout=20)
    assert empty.returncode == 0 and empty.stdout.decode().splitlines() == ["{}"]


# ------------------------------------------------------------------------------------- ZeroMQ
def test_zmq_pull_from_a_real_producer_until_eos() -> None:
    port = _free_port()
    stats = TextStats()
    src = open_text_source(SourceConfig(uri=f"zmq+pull:tcp://127.0.0.1:{port}"), FAST, stats)
    assert src.live and src.follows

    def produce() -> None:
        ctx = zmq.Context.instance()
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{port}")
        push.send(b"plain message")
        push.send(json.dumps({"text": "json message", "id": "m2", "label": 1}).encode())
        push.send(b"\x00\x01garbage\xff")
        push.send(b"{not json")
        push.send(b"batched one\nbatched two\n")
        push.send_multipart([b"part a", b"part b"])
        push.send(b'{"eos": true}')
        push.close(linger=2000)

    t = threading.Thread(target=produce)
    t.start()
    try:
        items = list(src)
    finally:
        t.join(5)
        src.close()
    assert [i.text for i in items] == ["plain message", "json message", "batched one", "batched two",
                                       "part a", "part b"]
    assert items[1].id == "m2" and items[1].label == 1
    assert items[3].position.endswith("#5:2")
    assert src.ended_by_marker
    assert stats.dropped == {"binary": 1, "malformed_json": 1}


def test_zmq_sub_connects_to_a_publisher() -> None:
    port = _free_port()
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()
    src = open_text_source(SourceConfig(uri=f"zmq+sub:tcp://127.0.0.1:{port}"), FAST, TextStats(), stop.is_set)
    c = Consumer(src)
    try:
        deadline = time.monotonic() + 5
        got: list[TextItem] = []
        while not got and time.monotonic() < deadline:  # PUB drops until the subscription arrives
            pub.send(b"ping")
            try:
                got.append(c.items.get(timeout=0.05))
            except queue.Empty:
                pass
        assert got and got[0].text == "ping"
    finally:
        stop.set()
        c.done.wait(5)
        src.close()
        pub.close(0)


# --------------------------------------------------------------------------------------- HTTP
def _post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {"Content-Type": "application/x-ndjson"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_http_post_json_lines_errors_limits_and_eos() -> None:
    cfg = TextConfig(max_request_bytes=1 << 20)
    stats = TextStats()
    src = open_text_source(SourceConfig(uri="http+listen://127.0.0.1:0/ingest"), cfg, stats)
    assert isinstance(src, HttpSource) and src.live
    port = src.port
    c = Consumer(src)
    try:
        good = b'{"text": "first", "id": "a"}\n{"text": "second", "label": "politics"}\n\nplain third\n'
        assert _post(port, "/ingest", good) == (200, {"accepted": 3, "eos": False})
        got = c.take(3)
        assert [i.text for i in got] == ["first", "second", "plain third"]
        assert got[0].id == "a" and got[1].label == "politics" and got[2].position.endswith("#1:4")

        bad = b'{"text": "fine"}\n{"text": 5}\n{oops\ncaf\xe9 au lait\n'
        code, payload = _post(port, "/ingest", bad)
        assert code == 400 and payload["accepted"] == 0
        assert [(e["line"], e["reason"]) for e in payload["errors"]] == [
            (2, "bad_record"), (3, "malformed_json"), (4, "invalid_utf8")]
        time.sleep(0.1)
        assert c.items.empty()  # all or nothing: "fine" was not taken either

        big = b'{"text": "' + b"x" * (10 << 20) + b'"}\n'
        code, payload = _post(port, "/ingest", big)
        assert code == 413 and "max_request_bytes" in payload["error"]
        assert stats.dropped["oversized"] == 1

        # a client that asks first (Expect: 100-continue) is refused before it sends the body
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n"
                      b"Expect: 100-continue\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 413")

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        assert _post(port, "/elsewhere", b"x\n")[0] == 404
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 411")

        assert _post(port, "/ingest", b'{"text": "last"}\n{"eos": true}\n') == (200, {"accepted": 1, "eos": True})
        assert c.take(1)[0].text == "last"
        assert c.done.wait(5) and c.error is None  # the source ended on the marker
        assert _post(port, "/ingest", b"late\n")[0] == 410
    finally:
        src.close()


def test_http_backpressure_answers_503() -> None:
    cfg = TextConfig(max_pending_bytes=1024)
    src = open_text_source(SourceConfig(uri="http+listen://127.0.0.1:0/in"), cfg, TextStats())
    try:
        body = b"y" * 800 + b"\n"
        assert _post(src.port, "/in", body)[0] == 200  # nobody is reading: it stays pending
        code, payload = _post(src.port, "/in", body)
        assert code == 503 and "retry" in payload["error"]
    finally:
        src.close()


def test_zmq_big_messages_are_cut_or_refused_with_bounded_memory() -> None:
    port = _free_port()
    cfg = TextConfig(max_request_bytes=2 << 20, max_line_bytes=64 << 10)
    stats = TextStats()
    src = open_text_source(SourceConfig(uri=f"zmq+pull:tcp://127.0.0.1:{port}"), cfg, stats)
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    try:
        push.send(b"a" * (1_500_000))  # under the message limit: one line, cut at max_line_bytes
        push.send(b"b" * (10 << 20))  # over it: libzmq refuses it and drops that connection
        push.send(b'{"eos": true}')  # PUSH reconnects; what was queued behind the big one may be lost
        items: list[TextItem] = []
        c = Consumer(src)
        items += c.take(1)
        deadline = time.monotonic() + 10
        while not c.done.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(zmq.Again):
                push.send(b'{"eos": true}', zmq.NOBLOCK)
            c.done.wait(0.2)
        assert c.done.is_set() and c.error is None
        while not c.items.empty():
            items.append(c.items.get())
    finally:
        push.close(0)
        src.close()
    assert items[0].text == "a" * (64 << 10) and stats.truncated == 1
    assert all(i.text[0] != "b" for i in items)
