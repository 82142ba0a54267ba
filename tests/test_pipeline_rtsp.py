"""An RTSP camera through the whole pipeline: the server dies mid-stream and comes back."""

from __future__ import annotations

import signal
import time

from tests.pipeline_helpers import FAST, Run, metric_value, wait_for


def test_rtsp_source_reconnects_and_keeps_going(tmp_path, rtsp_server):
    run = Run(tmp_path / "out", "--source", rtsp_server.url, *FAST,
              "--set", "sources.0.timeout_s=2", "--set", "sources.0.reconnect_initial_s=0.2",
              "--set", "sources.0.reconnect_max_s=1")
    try:
        wait_for(lambda: len(run.predictions()) >= 20, timeout=90, what="predictions from the RTSP camera")
        assert metric_value(run.scrape()[1], "remembrall_source_connected", stage="decode-cam0") == 1
        rtsp_server.stop()
        wait_for(lambda: metric_value(run.scrape()[1], "remembrall_source_reconnects_total") >= 1,
                 timeout=30, what="a reconnect attempt")
        before = len(run.predictions())
        time.sleep(1.0)
        rtsp_server.start()
        wait_for(lambda: len(run.predictions()) >= before + 20, timeout=60, what="frames after the server came back")
        text = run.scrape()[1]
        assert metric_value(text, "remembrall_source_connected", stage="decode-cam0") == 1
        assert run.status()["stages"]["decode-cam0"]["restarts"] == 0, "reconnected inside the stage"
        run.proc.send_signal(signal.SIGINT)
        assert run.wait(60) == 0, run.log()
    finally:
        run.stop()
    seqs = [p["seq"] for p in run.predictions()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "indexes keep increasing across the reconnect"
    assert "reconnect" in run.log().lower()
