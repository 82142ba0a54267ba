"""An MQTT topic (wildcards allowed) as a live text source.

Each message's payload is one record or several newline-separated ones, as on ZeroMQ; the
payload ``{"eos": true}`` ends the stream. With ``qos=1`` the session is persistent (a stable
client id, clean_session off): the broker keeps what arrives while the pipeline restarts and
hands it over on reconnect. paho-mqtt reconnects with backoff by itself. A payload larger than
``text.max_request_bytes`` is dropped and counted; so is a message that arrives while the stage
is behind by :data:`QUEUE` messages: the broker is never held back, and a burst (what a
persistent session kept while the pipeline restarted) waits in that queue instead. paho
acknowledges a QoS 1 message when it arrives: what waits in the queue when the stage is killed
is lost (at most :data:`QUEUE` messages; a Redis Stream source loses nothing).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

from remembrall.config import TextConfig
from remembrall.io.brokers import BrokerUrl
from remembrall.io.text.base import TextItem, TextSource, TextSourceError, _never
from remembrall.io.text.lines import TextStats

log = logging.getLogger(__name__)

QUEUE = 1000  # messages between paho's network thread and the stage
CONNECT_WAIT_S = 10.0  # how long the first connection may take before the source reports it


class MqttSource(TextSource):
    """``mqtt://HOST[:PORT]/TOPIC[?qos=1][&client_id=ID]`` (see the module docstring)."""

    follows = True
    #: the stage blocks on backpressure: messages wait in :attr:`queue` (bounded; beyond it they
    #: are dropped and counted), so a burst the broker hands over at once is not cut short
    live = False

    def __init__(self, url: BrokerUrl, text_cfg: TextConfig, stats: TextStats,
                 should_stop: Callable[[], bool] = _never, *, client_id: str,
                 on_connection: Callable[[bool], None] | None = None) -> None:
        super().__init__(url.safe, text_cfg, stats, should_stop)
        import paho.mqtt.client as mqtt

        self.url = url
        self.on_connection = on_connection or (lambda up: None)
        self.queue: queue.Queue[tuple[bytes, float]] = queue.Queue(QUEUE)
        self._refused: str | None = None
        self._connected = threading.Event()  # answered: subscribed, or refused
        self._closing = False
        self._messages = 0
        persistent = url.qos > 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=url.client_id or client_id,
                                  clean_session=not persistent)
        url.secure_mqtt(self.client)
        self.client.reconnect_delay_set(0.5, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        try:
            self.client.connect_async(url.host, url.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise TextSourceError(f"text source {url.safe}: {exc}") from None
        self.client.loop_start()
        self._connected.wait(CONNECT_WAIT_S)
        if self._refused:
            self.close()
            raise TextSourceError(f"text source {url.safe}: the broker refused the connection ({self._refused}); "
                                  "check REMEMBRALL_MQTT_USERNAME / REMEMBRALL_MQTT_PASSWORD and the topic's ACL")
        if not self._connected.is_set():
            log.warning("%s: the broker is not reachable yet; paho keeps trying with backoff", self.name)

    # ------------------------------------------------------------------ paho callbacks (its thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            self._refused = str(reason_code)
            log.error("%s: the broker refused the connection: %s", self.name, reason_code)
            self._connected.set()
            return
        self._refused = None
        client.subscribe(self.url.topic, qos=self.url.qos)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            self._refused = f"subscription to {self.url.topic!r} refused: {failed[0]}"
            log.error("%s: %s", self.name, self._refused)
        else:
            log.info("%s: connected; subscribed (QoS %d)", self.name, self.url.qos)
            self.on_connection(True)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.on_connection(False)
        if not self._closing and not self.should_stop():
            log.warning("%s: disconnected (%s); reconnecting with backoff", self.name, reason_code)

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        payload = message.payload
        if len(payload) > self.text_cfg.max_request_bytes:
            self.stats.drop("oversized", f"{self.name}@{message.topic}", f"{len(payload)} bytes > "
                            f"text.max_request_bytes ({self.text_cfg.max_request_bytes})", line=False)
            return
        try:
            self.queue.put_nowait((payload, time.time()))
        except queue.Full:
            self.stats.drop("backpressure", f"{self.name}@{message.topic}",
                            f"the stage is {QUEUE} messages behind", line=False)

    # ------------------------------------------------------------------ reading (the stage's thread)
    def _items(self) -> Iterator[TextItem | None]:  # type: ignore[override]
        while not self.should_stop():
            try:
                payload, ts = self.queue.get(timeout=0.1)
            except queue.Empty:
                yield None  # idle: the stage takes acknowledgements meanwhile
                continue
            self._messages += 1
            yield from self._message_items(payload, self._messages, ts)
            if self.ended_by_marker:
                return

    def close(self) -> None:
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
