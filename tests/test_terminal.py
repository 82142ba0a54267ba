"""``remembrall run`` on a real pseudo-terminal: live status lines (frames, fps, model version,
labels, UI address) with the stages' logs printed above them; off a terminal logs stay JSON."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from tests.pipeline_helpers import FAST, REPO


def test_a_terminal_gets_status_lines_and_the_stage_logs(tmp_path, make_video) -> None:
    video = make_video(tmp_path / "v.mp4", frames=60, size=(96, 96))
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "REMEMBRALL_LOG_FORMAT"}
    env.update(COLUMNS="160", TERM="xterm")
    cmd = [sys.executable, "-m", "remembrall", "run", "configs/default.yaml", "--source", str(video),
           "--set", "sources.0.loop=0", "--set", "sources.0.id=cam0", "--out", str(tmp_path / "out"),
           "--metrics-port", "0", "--ui-port", "0", "--duration", "8", *FAST]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the other side closed: the run is over
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        os.close(master)
    text = seen.decode("utf-8", "replace")
    assert proc.returncode == 0, text[-3000:]
    assert "cam0" in text and " fps" in text and "model v0" in text and "UI http://127.0.0.1:" in text
    assert "infer: serving vision" in text  # a stage's log line, printed above the status lines
    assert '{"ts":' not in text  # people get text, not JSON
