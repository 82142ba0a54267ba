"""``remembrall status`` on real files and a real HTTP metrics endpoint (the full pipeline case is
in test_prometheus_e2e.py): finding the run, rates from two scrapes, and every failure mode
giving an actionable message and a distinct exit status."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from remembrall.monitoring.status import (
    EXIT_DEGRADED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    find_run_dir,
    metrics_endpoint,
    parse_metrics,
    rates,
    status_main,
)


def write_status(d: Path, pid: int, url: str | None, stages: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    doc = {"pid": pid, "started": time.time() - 90, "metrics_url": url, "out_dir": str(d),
           "stages": stages if stages is not None else {
               "decode-cam": {"pid": pid, "state": "running", "restarts": 2, "type": "decode", "streams": ["cam"]},
               "infer": {"pid": pid, "state": "running", "restarts": 0, "type": "infer", "streams": ["cam"]}}}
    (d / "status.json").write_text(json.dumps(doc), encoding="utf-8")
    return d


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(text: str) -> dict[str, list[str]]:
    return {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.split()[:1] and ln.split()[0] in
            ("decode-cam", "infer", "sink")}


@pytest.fixture()
def live_metrics() -> tuple[str, threading.Event]:
    """A real metrics endpoint whose frame counters advance ~200/s while the test runs."""
    reg = CollectorRegistry()
    frames = Counter("remembrall_frames", "x", ["stage", "stream"], registry=reg)
    version = Gauge("remembrall_model_version", "x", ["stage", "stream"], registry=reg)
    Gauge("remembrall_stage_up", "x", ["stage"], registry=reg).labels("decode-cam").set(1)
    version.labels("infer", "").set(3)
    port = closed_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            frames.labels("decode-cam", "cam").inc(2)
            frames.labels("infer", "cam").inc(2)
            time.sleep(0.01)

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{port}", stop
    stop.set()
    t.join()
    server.shutdown()
    server.server_close()


def test_status_of_a_running_pipeline(tmp_path: Path, live_metrics: tuple[str, threading.Event],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = live_metrics
    run = write_status(tmp_path / "remembrall-abc", os.getpid(), url)
    assert status_main(["--run-dir", str(tmp_path), "--interval", "0.5"]) == EXIT_OK
    out = capsys.readouterr().out
    r = rows(out)
    assert r["decode-cam"][:5] == ["decode-cam", "decode", "running", str(os.getpid()), "2"]
    assert 20 < float(r["decode-cam"][5]) < 1000 and 20 < float(r["infer"][5]) < 1000, out
    assert "serving model version: 3" in out and str(run) in out


def test_json_output_and_metrics_url_only(live_metrics: tuple[str, threading.Event],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = live_metrics
    assert status_main(["--metrics-url", url.removeprefix("http://"), "--interval", "0.3", "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["metrics_url"] == url + "/metrics" and doc["model_version"] == {"infer": 3.0}
    assert doc["frames_per_s"]["infer"] > 0


def test_stale_status_file_and_unreachable_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path, dead_pid(), f"http://127.0.0.1:{closed_port()}")
    assert status_main(["--run-dir", str(tmp_path), "--interval", "0.1"]) == EXIT_DEGRADED
    out = capsys.readouterr().out
    assert "NOT RUNNING" in out and "metrics unreachable" in out


def test_a_failed_stage_is_degraded(tmp_path: Path, live_metrics: tuple[str, threading.Event],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = live_metrics
    write_status(tmp_path, os.getpid(), url, {
        "infer": {"pid": None, "state": "failed", "restarts": 10, "type": "infer", "streams": ["cam"]}})
    assert status_main(["--run-dir", str(tmp_path), "--interval", "0.1"]) == EXIT_DEGRADED
    assert rows(capsys.readouterr().out)["infer"][2:5] == ["failed", "-", "10"]


def test_no_run_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert status_main(["--run-dir", str(tmp_path)]) == EXIT_NOT_FOUND
    assert "no status.json" in capsys.readouterr().err
    (tmp_path / "status.json").write_text("{not json", encoding="utf-8")
    assert status_main(["--run-dir", str(tmp_path)]) == EXIT_NOT_FOUND
    assert "unreadable status file" in capsys.readouterr().err
    assert status_main(["--metrics-url", "ftp://x/metrics"]) == EXIT_NOT_FOUND
    assert "http:// or https://" in capsys.readouterr().err
    monkeypatch.setenv("REMEMBRALL_RUN_DIR", str(tmp_path / "nothing"))
    assert status_main([]) == EXIT_NOT_FOUND
    assert "nothing" in capsys.readouterr().err


def test_newest_run_wins(tmp_path: Path) -> None:
    old = write_status(tmp_path / "remembrall-old", 1, None)
    new = write_status(tmp_path / "remembrall-new", 1, None)
    os.utime(old / "status.json", (time.time() - 100, time.time() - 100))
    assert find_run_dir(str(tmp_path)) == new


def test_rates_handle_counter_resets() -> None:
    a = parse_metrics('remembrall_frames_total{stage="infer",stream="a"} 100\n', 0.0)
    b = parse_metrics('remembrall_frames_total{stage="infer",stream="a"} 30\n'
                      'remembrall_frames_total{stage="infer",stream="b"} 20\n', 2.0)
    assert rates(a, b) == {"infer": 25.0}  # restarted stage: counts from zero again
    assert metrics_endpoint("http://h:1/") == "http://h:1/metrics"
