"""Broker sinks (``sink.brokers``) against real Mosquitto and Redis servers on loopback: order,
trimming, a broker killed and restarted, the bounded buffer, refused credentials, a message too
large, the events journal, config validation, and the whole pipeline publishing its predictions."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from remembrall.io.brokers.publish import (
    BrokerPublisher,
    MqttPublisher,
    PublisherHooks,
    RedisPublisher,
    close_all,
    open_publisher,
)
from remembrall.io.brokers.urls import parse_broker_url
from remembrall.stages.sink import EventTail
from tests.broker_servers import Mosquitto, Redis
from tests.pipeline_helpers import FAST, Run

mqtt = pytest.importorskip("paho.mqtt.client")
pytest.importorskip("redis")


def until(predicate, timeout: float = 8.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Counts:
    """The hooks of one publisher, recorded."""

    def __init__(self) -> None:
        self.published = 0
        self.dropped: Counter[str] = Counter()
        self.buffered = 0
        self.connected: list[bool] = []
        self._lock = threading.Lock()

    def hooks(self) -> PublisherHooks:
        def published(n: int) -> None:
            with self._lock:
                self.published += n

        def dropped(reason: str, n: int) -> None:
            with self._lock:
                self.dropped[reason] += n

        return PublisherHooks(published=published, dropped=dropped,
                              buffered=lambda n: setattr(self, "buffered", n), connected=self.connected.append)


class Subscriber:
    """A paho client subscribed (QoS 1) to ``topic`` on ``server``, collecting (topic, payload)."""

    def __init__(self, server: Mosquitto, topic: str = "#") -> None:
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes]] = []
        connected, subscribed = threading.Event(), threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda *a: connected.set()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, msg.payload))
        self.client.connect("127.0.0.1", server.port)
        self.client.loop_start()
        assert connected.wait(5), "subscriber: no CONNACK"
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5), "subscriber: no SUBACK"

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p in list(self.messages) if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def gate(monkeypatch):  # type: ignore[no-untyped-def]
    """While cleared, publishers cannot connect (as if the broker were down): a test can bring a
    broker back and subscribe before the publisher gets there."""
    event = threading.Event()
    event.set()
    for cls in (MqttPublisher, RedisPublisher):
        real = cls._open

        def gated(self, timeout_s, _real=real):  # type: ignore[no-untyped-def]
            if not event.is_set():
                raise ConnectionRefusedError("test gate closed")
            return _real(self, timeout_s)

        monkeypatch.setattr(cls, "_open", gated)
    return event


def lines(n: int, prefix: str = "m") -> list[bytes]:
    return [json.dumps({"seq": i, "id": f"{prefix}{i}"}).encode() for i in range(n)]


def xrange_payloads(server: Redis, stream: str) -> list[bytes]:
    return [fields["data"].encode() for _, fields in server.client().xrange(stream)]


# ------------------------------------------------------------------------------ in order
def test_mqtt_qos1_arrives_in_order_and_events_go_to_their_topic(mosquitto):
    sub = Subscriber(mosquitto, "preds/#")
    counts = Counts()
    pub = open_publisher(mosquitto.url("preds/cam", qos=1), hooks=counts.hooks())
    try:
        sent = lines(300)
        for payload in sent:
            pub.publish(payload)
        pub.publish(b'{"event": "swap"}', events=True)
        until(lambda: counts.published == 301, what="301 PUBACKs")
        until(lambda: len(sub.messages) == 301, what="the subscriber to get 301 messages")
        assert sub.payloads("preds/cam") == sent
        assert sub.payloads("preds/cam/events") == [b'{"event": "swap"}']
        assert counts.connected == [True] and not counts.dropped
    finally:
        pub.close(2)
        sub.close()
    assert counts.connected == [True, False] and not counts.dropped


def test_redis_arrives_in_order_and_maxlen_trims(redis_server):
    counts, trimmed = Counts(), Counts()
    pub = open_publisher(redis_server.url("preds"), hooks=counts.hooks())
    short = open_publisher(redis_server.url("short", maxlen=50), hooks=trimmed.hooks())
    try:
        sent = lines(700)
        for payload in sent:
            pub.publish(payload)
            short.publish(payload)
        pub.publish(b'{"event": "drift"}', events=True)
        until(lambda: counts.published == 701 and trimmed.published == 700, what="every XADD")
        assert xrange_payloads(redis_server, "preds") == sent
        assert xrange_payloads(redis_server, "preds:events") == [b'{"event": "drift"}']
        kept = xrange_payloads(redis_server, "short")
        # approximate trimming (~) removes whole stream nodes (100 entries): at least 50 stay,
        # far fewer than 700, and they are the newest, in order
        assert 50 <= len(kept) < 300 and kept == sent[-len(kept):]
    finally:
        close_all([pub, short], 2)
    assert not counts.dropped and not trimmed.dropped


# ------------------------------------------------------------------------------ broker down
@pytest.mark.parametrize("kind", ["mqtt", "redis"])
def test_broker_killed_and_restarted_loses_nothing_and_never_blocks(kind, gate, request):
    server = Mosquitto() if kind == "mqtt" else Redis()
    request.addfinalizer(server.close)
    server.start()
    url = server.url("live/preds", qos=1) if kind == "mqtt" else server.url("preds")
    sub = Subscriber(server, "live/#") if kind == "mqtt" else None
    counts = Counts()
    pub = open_publisher(url, buffer=1000, hooks=counts.hooks())
    try:
        before, during = lines(20, "a"), lines(30, "b")
        for payload in before:
            pub.publish(payload)
        until(lambda: counts.published == 20, what="the first 20")
        gate.clear()
        server.stop()
        if kind == "mqtt":
            until(lambda: not pub.connected, what="the publisher to notice the broker died")
            sub.close()
        took = []
        for payload in during:
            t0 = time.perf_counter()
            pub.publish(payload)
            took.append(time.perf_counter() - t0)
        assert max(took) < 0.005, f"publish() blocked while the broker was down: {max(took) * 1000:.1f} ms"
        until(lambda: not pub.connected, what="the publisher to notice the broker died")
        assert counts.published == 20 and pub.pending == 30
        server.start()
        if kind == "mqtt":
            sub = Subscriber(server, "live/#")
        gate.set()
        until(lambda: counts.published == 50, timeout=10, what="the 30 buffered during the outage")
        if kind == "mqtt":
            until(lambda: len(sub.messages) >= 30, what="the subscriber to get them")
            assert sub.payloads("live/preds") == during
        else:  # the server kept nothing across SIGKILL (no persistence): the stream is what came after
            assert xrange_payloads(server, "preds") == during
        assert counts.connected == [True, False, True] and not counts.dropped
    finally:
        pub.close(2)
        if sub is not None:
            sub.close()


@pytest.mark.parametrize("kind", ["mqtt", "redis"])
def test_buffer_keeps_the_newest_while_the_broker_is_down(kind, gate, request):
    server = Mosquitto() if kind == "mqtt" else Redis()
    request.addfinalizer(server.close)
    url = server.url("buf/preds", qos=1) if kind == "mqtt" else server.url("preds")
    counts = Counts()
    gate.clear()
    pub = open_publisher(url, buffer=10, hooks=counts.hooks())  # nothing listens on the port yet
    sub = None
    try:
        sent = lines(25)
        for payload in sent:
            pub.publish(payload)
        assert counts.dropped == {"buffer_full": 15} and pub.pending == 10 and counts.buffered == 10
        server.start()
        sub = Subscriber(server, "buf/#") if kind == "mqtt" else None
        gate.set()
        until(lambda: counts.published == 10, timeout=10, what="the 10 kept")
        got = (until(lambda: len(sub.messages) == 10 and sub.payloads("buf/preds")) if sub
               else xrange_payloads(server, "preds"))
        assert got == sent[15:]
    finally:
        pub.close(2)
        if sub is not None:
            sub.close()
    assert counts.dropped == {"buffer_full": 15}


def test_close_with_the_broker_down_takes_the_timeout_and_counts_the_rest(gate):
    server = Redis()  # never started
    counts = Counts()
    pub = open_publisher(server.url("preds"), hooks=counts.hooks())
    for payload in lines(40):
        pub.publish(payload)
    t0 = time.monotonic()
    pub.close(0.5)
    assert time.monotonic() - t0 < 1.5
    assert counts.dropped == {"shutdown": 40} and counts.buffered == 0
    pub.publish(b"late")  # after close: counted, not queued
    assert counts.dropped["shutdown"] == 41 and pub.pending == 0
    server.close()


# ------------------------------------------------------------------------------ refused, too large
@pytest.mark.parametrize("kind", ["mqtt", "redis"])
def test_wrong_credentials_are_logged_once_and_counted(kind, request, caplog):
    server = Mosquitto(users={"edge": "right"}) if kind == "mqtt" else Redis(password="right")
    request.addfinalizer(server.close)
    server.start()
    env = {f"REMEMBRALL_{kind.upper()}_USERNAME": "edge", f"REMEMBRALL_{kind.upper()}_PASSWORD": "wrong"}
    if kind == "redis":
        env.pop("REMEMBRALL_REDIS_USERNAME")  # requirepass: the default user
    url = parse_broker_url(server.url("sec/preds", qos=1) if kind == "mqtt" else server.url("preds"), env=env)
    counts = Counts()
    caplog.set_level(logging.INFO, logger="remembrall.io.brokers.publish")
    pub = open_publisher(url, hooks=counts.hooks())
    try:
        for payload in lines(5):
            pub.publish(payload)
        until(lambda: counts.dropped["refused"] == 5, what="5 messages counted refused")
        time.sleep(1.7)  # let it retry (0.5 s, then 1 s): still one log line
        refusals = [r.getMessage() for r in caplog.records if "refused the credentials" in r.getMessage()]
        assert len(refusals) == 1, refusals
        assert url.safe in refusals[0] and f"REMEMBRALL_{kind.upper()}_" in refusals[0] and "wrong" not in refusals[0]
        assert not pub.connected and counts.published == 0
        pub.publish(b"more")
        assert counts.dropped["refused"] == 6
    finally:
        pub.close(1)


def test_right_credentials_are_accepted(request):
    server = Mosquitto(users={"edge": "right"})
    request.addfinalizer(server.close)
    server.start()
    url = parse_broker_url(server.url("sec/preds", qos=1),
                           env={"REMEMBRALL_MQTT_USERNAME": "edge", "REMEMBRALL_MQTT_PASSWORD": "right"})
    counts = Counts()
    pub = open_publisher(url, hooks=counts.hooks())
    pub.publish(b"x")
    until(lambda: counts.published == 1, what="PUBACK")
    pub.close(1)


@pytest.mark.parametrize("qos", [0, 1])
def test_message_over_the_brokers_max_packet_size_is_dropped_and_the_rest_go(mosquitto, qos):
    sub = Subscriber(mosquitto, "big/#")
    counts = Counts()
    pub = open_publisher(mosquitto.url("big/preds", qos=qos), hooks=counts.hooks())
    try:
        pub.publish(b"small-1")
        pub.publish(b"x" * (2 << 20))  # Mosquitto takes packets of 1 MiB at most
        pub.publish(b"small-2")
        until(lambda: counts.published == 2, what="the two small ones")
        until(lambda: len(sub.messages) == 2, what="the subscriber to get them")
        assert sub.payloads("big/preds") == [b"small-1", b"small-2"]
        assert counts.dropped == {"too_large": 1} and counts.connected == [True]
    finally:
        pub.close(1)
        sub.close()


def test_broker_that_disconnects_on_a_large_packet_drops_it_and_resends_the_rest(mosquitto, monkeypatch):
    """A broker that does not announce its limit (MQTT 3.1.1) disconnects on a packet too large:
    that message is dropped, the others in flight are sent again after reconnecting."""
    real = MqttPublisher._open

    def unannounced(self, timeout_s):  # type: ignore[no-untyped-def]
        real(self, timeout_s)
        self._max_packet = 1 << 28

    monkeypatch.setattr(MqttPublisher, "_open", unannounced)
    sub = Subscriber(mosquitto, "big/#")
    counts = Counts()
    pub = open_publisher(mosquitto.url("big/preds", qos=1), hooks=counts.hooks())
    try:
        until(lambda: pub.connected, what="connected")
        pub.publish(b"x" * (2 << 20))
        pub.publish(b"small")
        until(lambda: counts.published == 1, what="the small one")
        until(lambda: sub.payloads("big/preds") == [b"small"], what="the subscriber to get it")
        assert counts.dropped == {"too_large": 1} and counts.connected[:3] == [True, False, True]
    finally:
        pub.close(1)
        sub.close()


def test_redis_command_errors_drop_that_message_only(redis_server):
    redis_server.client().set("notastream", "x")  # XADD to a string key: WRONGTYPE
    counts = Counts()
    bad = open_publisher(redis_server.url("notastream"), hooks=counts.hooks())
    good = Counts()
    ok = open_publisher(redis_server.url("fine"), hooks=good.hooks())
    try:
        bad.publish(b"1")
        ok.publish(b"2")
        until(lambda: counts.dropped["error"] == 1 and good.published == 1, what="one error, one XADD")
    finally:
        close_all([bad, ok], 1)


# ------------------------------------------------------------------------------ events journal
def test_event_tail_starts_at_the_end_and_waits_for_whole_lines(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event": "old", "ts": 1}\n{"event": "cut')
    tail = EventTail(path)
    assert tail.poll() == []
    with path.open("ab") as fh:
        fh.write(b'", "ts": 2}\n{"event": "swap", "ts": 3}\n{"event": "dri')
    assert tail.poll() == [b'{"event": "swap", "ts": 3}']  # the cut line before it is skipped
    with path.open("ab") as fh:
        fh.write(b'ft", "ts": 4}\nnot json\n')
    assert tail.poll() == [b'{"event": "drift", "ts": 4}']
    assert tail.poll() == []
    path.write_bytes(b'{"event": "new", "ts": 5}\n')  # a new, shorter file: read from its start
    assert tail.poll() == [b'{"event": "new", "ts": 5}']


def test_event_tail_of_a_file_that_appears_later(tmp_path: Path):
    tail = EventTail(tmp_path / "events.jsonl")
    assert tail.poll() == []
    (tmp_path / "events.jsonl").write_bytes(b'{"event": "label", "ts": 1}\n')
    assert tail.poll() == [b'{"event": "label", "ts": 1}']


def test_sink_publishes_new_journal_events_to_brokers_that_ask_for_them(tmp_path, mosquitto, redis_server):
    from remembrall.monitoring.journal import Journal
    from remembrall.stages.sink import SinkStage
    from tests.learning_harness import ipc, spec

    journal = Journal(tmp_path, "retrain")
    journal.write("swap", version=1)  # before the sink started: not published
    brokers = [mosquitto.url("ev/preds", events="yes"), redis_server.url("preds", events="yes"),
               redis_server.url("quiet")]
    stage = SinkStage(spec(tmp_path, "sink", "sink", {"in": f"pull+bind:{ipc(tmp_path, 'sink')}"}, {},
                           overrides={"sink.brokers": brokers}))
    sub = Subscriber(mosquitto, "ev/#")
    try:
        stage._open_brokers()
        until(lambda: all(b.connected for b in stage._brokers), what="the sink's publishers to connect")
        journal.write("swap", version=2)
        journal.write("drift", modality="vision", drift=0.4)
        stage._publish_events()
        stage._close_brokers()
        got = [json.loads(x) for x in xrange_payloads(redis_server, "preds:events")]
        assert [(e["event"], e.get("version")) for e in got] == [("swap", 2), ("drift", None)]
        until(lambda: len(sub.messages) == 2, what="the MQTT events")
        assert [json.loads(x)["event"] for x in sub.payloads("ev/preds/events")] == ["swap", "drift"]
        assert not redis_server.client().exists("quiet:events")
        from prometheus_client import REGISTRY

        def sample(name: str, broker: str, **labels: str) -> float | None:
            return REGISTRY.get_sample_value(name, {"stage": "sink", "broker": parse_broker_url(broker).safe, **labels})

        assert sample("remembrall_broker_published_total", brokers[0]) == 2
        assert sample("remembrall_broker_published_total", brokers[2]) == 0
        assert sample("remembrall_broker_dropped_total", brokers[1], reason="buffer_full") == 0
        assert sample("remembrall_broker_connected", brokers[0]) == 0  # closed
        assert sample("remembrall_broker_buffered", brokers[0]) == 0
    finally:
        sub.close()
        stage.close()


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize("url, expected", [
    ("mqtt://user:secret@127.0.0.1/x", "credentials do not belong in a config file"),
    ("mqtt://127.0.0.1/x?qos=1&color=red", "unknown parameter(s) ['color']"),
    ("mqtt://127.0.0.1", "no topic"),
    ("redis://127.0.0.1/0", "no stream"),
    ("amqp://127.0.0.1/x", "expected mqtt://HOST/TOPIC"),
])
def test_a_bad_broker_url_stops_the_run_before_any_stage_naming_the_key(tmp_path: Path, url: str, expected: str):
    from remembrall.config import ConfigError
    from remembrall.config.loading import load_config
    from remembrall.pipeline.graph import build_graph

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({"sink": {"brokers": ["redis://127.0.0.1/0?stream=ok", url]}}))
    with pytest.raises(ConfigError) as err:  # when the run is built, before any stage starts
        build_graph(load_config(cfg_file), tmp_path / "run", tmp_path / "out")
    text = str(err.value)
    assert text.startswith("sink.brokers[1]: ") and expected in text, text
    assert "secret" not in text


def test_broker_settings_load_and_are_bounded():
    from remembrall.config import ConfigError
    from remembrall.config.loading import load_config, parse_overrides

    cfg = load_config(None, parse_overrides(["sink.brokers=[mqtt://127.0.0.1/a, 'redis://h/1?stream=s']",
                                             "sink.broker_buffer=5"]))
    assert cfg.sink.brokers == ["mqtt://127.0.0.1/a", "redis://h/1?stream=s"] and cfg.sink.broker_buffer == 5
    assert load_config(None).sink.brokers == [] and load_config(None).sink.broker_buffer == 10000
    with pytest.raises(ConfigError, match="sink.broker_buffer: must be >= 1"):
        load_config(None, {"sink.broker_buffer": 0})
    with pytest.raises(ConfigError, match=r"sink.brokers\[0\]: expected a string"):
        load_config(None, {"sink.brokers": [5]})


def test_an_unquoted_url_list_in_set_is_a_config_error_not_a_traceback():
    from remembrall.config import ConfigError
    from remembrall.config.loading import parse_overrides

    with pytest.raises(ConfigError, match=r"not valid YAML .*quote it"):
        parse_overrides(["sink.brokers=[mqtt://h/t?qos=1, redis://h/0?stream=s]"])


# ------------------------------------------------------------------------------ the pipeline
def test_pipeline_publishes_every_prediction_to_mqtt_and_redis(tmp_path, make_video, mosquitto, redis_server):
    sub = Subscriber(mosquitto, "remembrall/#")
    try:
        video = make_video(tmp_path / "clip.mp4", frames=24, size=(96, 96))
        brokers = f"['{mosquitto.url('remembrall/preds', qos=1)}', '{redis_server.url('remembrall:preds')}']"
        run = Run(tmp_path / "out", "--source", str(video), *FAST, "--set", f"sink.brokers={brokers}")
        assert run.wait(120) == 0, run.log()
        written = (tmp_path / "out" / "predictions.jsonl").read_bytes().splitlines()
        assert len(written) == 24
        # the sink closed its publishers before exiting: everything is at the brokers already
        assert xrange_payloads(redis_server, "remembrall:preds") == written
        until(lambda: len(sub.messages) >= 24, what="the MQTT subscriber to get every prediction")
        assert sub.payloads("remembrall/preds") == written
        assert "publishing predictions to mqtt://127.0.0.1" in run.log()
    finally:
        sub.close()


def test_publisher_classes_share_the_base():
    assert issubclass(MqttPublisher, BrokerPublisher) and issubclass(RedisPublisher, BrokerPublisher)
