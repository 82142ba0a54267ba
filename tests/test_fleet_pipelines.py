"""Two real pipelines on one machine share a server (``remembrall serve``: a real EfficientNet
teacher labels for both, and their training runs there) over CURVE tcp on loopback, and a zoo in a
real Redis. The server is SIGKILLed mid-run: the edges keep predicting, and once it is back they
catch up and learn on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.broker_servers import Redis, free_port
from tests.pipeline_helpers import FAST, REPO, Run, metric_value, wait_for


class Teacher:
    """``remembrall serve`` in a subprocess."""

    def __init__(self, tmp: Path, keys: Path, port: int) -> None:
        self.metrics_port = free_port()
        self.log_path = tmp / "teacher.log"
        cfg = tmp / "teacher.yaml"
        cfg.write_text(f"""
serve:
  bind: tcp://127.0.0.1:{port}
  secret_key: {keys / 'teacher.key_secret'}
  allowed_keys: {keys / 'allowed'}
label:
  labeler: teacher
  teacher_model: efficientnet-lite0
  teacher_image_size: 96
  teacher_tta: false
  teacher_min_confidence: 0.0
out: {tmp / 'teacher-out'}
""")
        self.cmd = [sys.executable, "-m", "remembrall", "serve", str(cfg), "--metrics-port", str(self.metrics_port)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, REMEMBRALL_LOG_FORMAT="text"))

    def metric(self, name: str, **labels: str) -> float:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=3) as resp:
                return metric_value(resp.read().decode(), name, **labels)
        except OSError:
            return 0.0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def test_two_pipelines_share_a_teacher_over_curve_and_a_zoo_in_redis(tmp_path: Path, keys: Path,
                                                                      redis_server: Redis) -> None:
    port = free_port()
    teacher = Teacher(tmp_path, keys, port)
    teacher.start()
    runs: dict[str, Run] = {}
    try:
        for cam in ("cam-a", "cam-b"):
            runs[cam] = Run(tmp_path / cam, *FAST, "--set", "sources.0.loop=0", "--set", "sources.0.realtime=true",
                            "--set", "learn=true", "--set", "infer.head=none", "--set", "select.rate=0.5",
                            "--set", "label.labeler=remote", "--set", f"label.remote=tcp://127.0.0.1:{port}",
                            "--set", f"retrain.remote=tcp://127.0.0.1:{port}", "--set", "retrain.remote_fallback_s=0",
                            "--set", f"remote.server_key={keys / 'teacher.key'}",
                            "--set", f"remote.client_key={keys / (cam + '.key_secret')}",
                            "--set", f"remote.name={cam}", "--set", "retrain.min_labels=6",
                            "--set", "retrain.every_labels=6", "--set", "buffer.holdout_every=3",
                            "--set", "retrain.min_holdout=2", "--set", f"zoo.share={redis_server.url('zoo')}",
                            "--set", f"zoo.origin={cam}", "--set", "zoo.share_every_s=1")

        def labelled(cam: str) -> float:
            return teacher.metric("remembrall_label_server_requests_total", client=f"{cam}/label", outcome="labelled")

        wait_for(lambda: all(labelled(cam) >= 4 for cam in runs), timeout=180,
                 what=f"teacher labels for both pipelines\n{teacher.log_path.read_text()[-2000:]}")
        # the teacher dies: the edges keep predicting, and keep what they select for it
        teacher.kill()
        counts = {cam: len(run.predictions()) for cam, run in runs.items()}
        time.sleep(4)
        for cam, run in runs.items():
            assert len(run.predictions()) > counts[cam], f"{cam} stopped predicting without its teacher"
            text = run.scrape()[1]
            assert metric_value(text, "remembrall_remote_up") == 0  # neither label nor retrain reaches it
            assert metric_value(text, "remembrall_remote_pending", stage="label") > 0  # selected, waiting
        seen_while_down = {cam: max(p["seq"] for p in run.predictions()) for cam, run in runs.items()}
        restarted = time.time()
        teacher.start()  # back: both catch up (what they held is sent again) and learn on
        wait_for(lambda: all(labelled(cam) >= 4 for cam in runs), timeout=120,
                 what=f"labels after the restart\n{teacher.log_path.read_text()[-2000:]}")
        for cam, run in runs.items():
            wait_for(lambda run=run: (run.out / "models").is_dir() and any((run.out / "models").glob("head-v*.pt")),
                     timeout=120, what=f"{cam} to retrain on the teacher's labels\n{run.log()[-3000:]}")
            assert metric_value(run.scrape()[1], "remembrall_remote_up") == 2  # label and retrain
            wait_for(lambda cam=cam: teacher.metric("remembrall_train_server_jobs_total", client=f"{cam}/retrain",
                                                    outcome="trained") >= 1, timeout=60,
                     what=f"{cam}'s training on the server")
        # published right after the head file is written: give it a moment
        wait_for(lambda: redis_server.client().xlen("zoo") >= 1, timeout=30,
                 what="a specialist in the fleet's zoo in Redis")
    finally:
        for run in runs.values():
            run.stop()
        teacher.kill()
    for cam, run in runs.items():
        log = run.log()
        assert "Traceback" not in log, log[-3000:]
        events = [json.loads(line) for line in (run.out / "events.jsonl").read_text().splitlines()]
        accepted = [e for e in events if e["event"] == "accepted"]
        assert accepted and {e["source"] for e in accepted} == {"teacher"}, accepted[:3]
        assert any(e["event"] == "run" and e["accepted"] for e in events)  # it learned from them
        caught_up = [e for e in accepted if e["ts"] > restarted and int(e["id"].split(":")[1]) <= seen_while_down[cam]]
        assert caught_up, f"{cam}: nothing selected before the teacher came back was labelled after"
