"""Running the real ``remembrall run`` in a subprocess and looking inside it while it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Small frames keep the real EfficientNet fast enough for tests on two CPU cores.
FAST = ["--set", "decode.width=96", "--set", "decode.height=96", "--set", "infer.image_size=96",
        "--set", "infer.batch_size=8"]


class Run:
    """A ``remembrall run`` subprocess with its output directory."""

    def __init__(self, out: Path, *args: str, config: str = "configs/default.yaml", env: dict | None = None) -> None:
        self.out = out
        cmd = [sys.executable, "-m", "remembrall", "run", str(REPO / config), "--out", str(out),
               "--metrics-port", "0", "--ui-port", "0", *args]
        full_env = dict(os.environ, REMEMBRALL_LOG_FORMAT="text", **(env or {}))
        self.log_path = out.parent / f"{out.name}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if not self._log.closed:
                self._log.flush()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def status(self, timeout: float = 30) -> dict:
        """status.json, once the supervisor has written it with every stage started."""
        path = self.out / "status.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pipeline exited early ({self.proc.returncode}):\n{self.log()}")
            try:
                st = json.loads(path.read_text())
                if st.get("metrics_url") and all(s["pid"] for s in st["stages"].values()):
                    return st
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"no status.json after {timeout} s:\n{self.log()}")

    def scrape(self, path: str = "/metrics") -> tuple[int, str]:
        url = self.status()["metrics_url"] + path
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def predictions(self) -> list[dict]:
        return read_predictions(self.out / "predictions.jsonl")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def read_predictions(path: Path) -> list[dict]:
    """The predictions written so far (a line being written is left out)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in an exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_for(predicate, timeout: float = 60, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def labelled_clip(tmp_path: Path, make_video, frames: int = 48) -> Path:
    """A 96×96 clip whose sidecar labels its first half "early" and its second half "late"."""
    video = make_video(tmp_path / "clip.mp4", frames=frames, size=(96, 96))
    (tmp_path / "clip.mp4.labels.jsonl").write_text("".join(
        json.dumps({"frame": i, "label": "early" if i < frames // 2 else "late"}) + "\n" for i in range(frames)))
    return video
