"""Publishing lines to a broker without ever making the caller wait for it.

A :class:`BrokerPublisher` (one per broker URL) takes a message in :meth:`~BrokerPublisher.publish`
by appending it to a bounded in-memory queue and returns; a daemon thread drains the queue to
the broker. The caller (the sink) therefore runs at its own pace whatever the broker does:

- **down or unreachable**: messages stay queued while the thread reconnects with exponential
  backoff (0.5 s doubling to 30 s); the queue is bounded (``buffer``), and when it is full the
  *oldest* message is dropped (``buffer_full``): the newest predictions matter most.
- **refuses the credentials**: logged once (with the environment variables to set), what is
  queued and what comes while refused is dropped (``refused``) instead of filling the queue;
  reconnection keeps being tried, so fixing the broker side heals it.
- **refuses one message** (larger than the broker accepts, not authorised for the topic, a
  Redis error): that message is dropped (``too_large``, ``refused``, ``error``), the rest go.
- **shutdown**: :meth:`~BrokerPublisher.close` sends what it can within its timeout and counts
  the rest (``shutdown``).

Delivery is at-least-once across a reconnect: a message sent but not confirmed (no PUBACK, a
Redis pipeline cut) is sent again. Only the transport differs between MQTT (paho-mqtt,
:class:`MqttPublisher`) and Redis Streams (redis-py, :class:`RedisPublisher`); queueing, the
thread, backoff, counting and logging are :class:`BrokerPublisher`'s. This module sits below the
monitoring layer, so counts leave through :class:`PublisherHooks` callbacks.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from remembrall.io.brokers.urls import BrokerUrl, parse_broker_url

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
#: Longest a connection attempt (TCP, TLS, CONNACK / PING) may take.
CONNECT_TIMEOUT_S = 5.0
#: Reasons a message is dropped (the ``reason`` label of ``remembrall_broker_dropped_total``).
DROP_REASONS = ("buffer_full", "refused", "too_large", "error", "shutdown")
#: The Redis Stream entry field that holds the line.
REDIS_FIELD = "data"

Item = tuple[bytes, bool]  # (payload, is an event)


def _nothing(*_: Any) -> None:
    return None


@dataclass
class PublisherHooks:
    """Where a publisher reports what it does: the caller wires them to its metrics (the io
    layer does not import monitoring). Called from the publisher's thread and from publish()."""

    published: Callable[[int], None] = _nothing  # n messages confirmed by the broker
    dropped: Callable[[str, int], None] = _nothing  # (reason, n)
    buffered: Callable[[int], None] = _nothing  # messages waiting now
    connected: Callable[[bool], None] = _nothing


class BrokerRefused(Exception):
    """The broker refused the credentials; retrying soon will not fix it."""


class BrokerLost(Exception):
    """The connection is gone; ``unsent`` are the items of the batch the transport did not take."""

    def __init__(self, message: str, unsent: Iterable[Item] = ()) -> None:
        super().__init__(message)
        self.unsent = list(unsent)


@dataclass
class _State:
    """What the log last said about the connection, so a state is logged once, not per retry."""

    name: str = "new"
    drops_logged: set[str] = field(default_factory=set)


class BrokerPublisher:
    """Bounded queue + drain thread + backoff; subclasses implement the four transport methods
    (:meth:`_open`, :meth:`_deliver`, :meth:`_wait_confirmed`, :meth:`_teardown`)."""

    #: the environment variables that hold this broker's credentials (for the refusal message)
    credentials_hint = ""
    #: most messages taken from the queue per delivery
    batch_size = 256

    def __init__(self, url: BrokerUrl, buffer: int = 10_000, hooks: PublisherHooks | None = None) -> None:
        if buffer < 1:
            raise ValueError("buffer must be >= 1")
        self.url = url
        self.buffer = buffer
        self.hooks = hooks or PublisherHooks()
        self._queue: deque[Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = math.inf
        self._refused = False
        self._connected = False
        self._state = _State()
        self._thread = threading.Thread(target=self._run, name=f"broker {url.safe}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side
    def publish(self, payload: bytes, events: bool = False) -> None:
        """Queue ``payload`` (for the events topic/stream when ``events``); never blocks."""
        reason = None
        with self._cond:
            if self._closing:
                reason = "shutdown"
            elif self._refused:
                reason = "refused"
            else:
                if len(self._queue) >= self.buffer:
                    self._queue.popleft()
                    reason = "buffer_full"
                self._queue.append((payload, events))
                self._cond.notify()
            waiting = len(self._queue)
        if reason is not None:
            self._drop(reason, 1, f"the queue holds {self.buffer} messages: dropping the oldest"
                       if reason == "buffer_full" else "")
        self.hooks.buffered(waiting)

    @property
    def pending(self) -> int:
        """Messages waiting to be sent."""
        with self._cond:
            return len(self._queue)

    @property
    def connected(self) -> bool:
        return self._connected

    def close(self, timeout_s: float = 2.0) -> None:
        """Send what is queued for at most ``timeout_s``, then count the rest as dropped
        (``shutdown``); a broker that is down costs the caller ``timeout_s`` at most."""
        self.start_close(timeout_s)
        self.join_close()

    def start_close(self, timeout_s: float) -> None:
        """Stop taking messages; the thread sends what it can until ``timeout_s`` from now."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + timeout_s
            self._cond.notify_all()

    def join_close(self) -> None:
        """Wait for :meth:`start_close`'s deadline at most; count what is left (``shutdown``)."""
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + 0.5)
        with self._cond:  # the thread is stuck in a network call: what it has not taken is lost
            rest = len(self._queue)
            self._queue.clear()
        if rest:
            self._drop("shutdown", rest)
        self.hooks.buffered(0)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        delay = BACKOFF_INITIAL_S
        try:
            while True:
                if not self._connected:
                    if self._closing and (not self.pending or self._past_deadline()):
                        break
                    if self._connect():
                        delay = BACKOFF_INITIAL_S
                    else:
                        self._wait(delay)
                        delay = min(2 * delay, BACKOFF_MAX_S)
                    continue
                batch = self._take()
                if batch is None:
                    break
                try:
                    if not self._alive():
                        raise BrokerLost(self._lost_reason())
                    if batch:
                        self._deliver(batch)
                except BrokerLost as exc:
                    self._lost(exc)
                except Exception as exc:  # noqa: BLE001 - unexpected from a client library: start over
                    log.warning("%s: sending failed unexpectedly", self.url.safe, exc_info=True)
                    self._lost(BrokerLost(_describe(exc), batch))
            if self._connected:
                self._wait_confirmed(self._deadline)
        except Exception:  # pragma: no cover - a bug here must not take the caller down
            log.exception("%s: broker publisher stopped", self.url.safe)
        finally:
            unconfirmed = self._teardown() if self._connected else []
            if unconfirmed:
                self._drop("shutdown", len(unconfirmed))
            self._set_connected(False)

    def _connect(self) -> bool:
        timeout = min(CONNECT_TIMEOUT_S, max(0.1, self._deadline - time.monotonic()))
        try:
            self._open(timeout)
        except BrokerRefused as exc:
            with self._cond:
                self._refused = True
                refused = len(self._queue)
                self._queue.clear()
            self._state_log("refused", logging.ERROR, f"broker refused the credentials ({exc}); set "
                            f"{self.credentials_hint}; messages are dropped (reason=refused) until it accepts")
            if refused:
                self._drop("refused", refused)
            self.hooks.buffered(0)
            return False
        except Exception as exc:  # noqa: BLE001 - any failure to connect is retried the same way
            self._state_log("down", logging.WARNING, f"cannot connect ({_describe(exc)}); retrying with backoff "
                            f"up to {BACKOFF_MAX_S:.0f} s, keeping at most {self.buffer} messages meanwhile")
            return False
        with self._cond:
            self._refused = False
        self._set_connected(True)
        self._state_log("up", logging.INFO, "connected")
        return True

    def _lost(self, exc: BrokerLost) -> None:
        unconfirmed = self._teardown()
        self._requeue(unconfirmed + exc.unsent)
        self._set_connected(False)
        self._state_log("down", logging.WARNING, f"connection lost ({exc}); reconnecting, "
                        f"{self.pending} messages kept (at most {self.buffer})")

    def _take(self) -> list[Item] | None:
        """The next batch; [] to look at the connection again; None when closing is done."""
        with self._cond:
            if not self._queue and not self._closing:
                self._cond.wait(0.5)
            if self._closing and (not self._queue or self._past_deadline()):
                return None
            n = min(len(self._queue), self.batch_size)
            batch = [self._queue.popleft() for _ in range(n)]
            waiting = len(self._queue)
        self.hooks.buffered(waiting)
        return batch

    def _requeue(self, items: list[Item]) -> None:
        """Put items that were not confirmed back at the front, oldest first, within the bound."""
        with self._cond:
            self._queue.extendleft(reversed(items))
            over = max(0, len(self._queue) - self.buffer)
            for _ in range(over):
                self._queue.popleft()
            waiting = len(self._queue)
        if over:
            self._drop("buffer_full", over, f"the queue holds {self.buffer} messages: dropping the oldest")
        self.hooks.buffered(waiting)

    def _wait(self, seconds: float) -> None:
        """Back off for ``seconds``; close() cuts it short (and it never outlasts close's deadline)."""
        with self._cond:
            closing = self._closing
            self._cond.wait_for(lambda: self._closing != closing,
                                min(seconds, max(0.0, self._deadline - time.monotonic())))

    def _past_deadline(self) -> bool:
        return time.monotonic() >= self._deadline

    # ------------------------------------------------------------------ reporting
    def _confirm(self, n: int) -> None:
        if n:
            self.hooks.published(n)

    def _drop(self, reason: str, n: int, detail: str = "") -> None:
        """Count ``n`` dropped messages; the first of each reason per connection state is logged
        with ``detail`` (none: the state's own log line already said why)."""
        self.hooks.dropped(reason, n)
        if reason == "shutdown":
            log.warning("%s: %d message(s) not sent before shutdown (reason=shutdown)", self.url.safe, n)
        elif detail and reason not in self._state.drops_logged:
            self._state.drops_logged.add(reason)
            log.warning("%s: dropped %d message(s) (reason=%s): %s", self.url.safe, n, reason, detail)

    def _state_log(self, name: str, level: int, text: str) -> None:
        if self._state.name != name:
            self._state = _State(name)
            log.log(level, "%s: %s", self.url.safe, text)

    def _set_connected(self, up: bool) -> None:
        if up != self._connected:
            self._connected = up
            self.hooks.connected(up)

    # ------------------------------------------------------------------ the transport
    def _open(self, timeout_s: float) -> None:  # pragma: no cover - abstract
        """Connect; raise :class:`BrokerRefused` for refused credentials, anything else to retry."""
        raise NotImplementedError

    def _deliver(self, batch: list[Item]) -> None:  # pragma: no cover - abstract
        """Send ``batch`` in order, calling :meth:`_confirm` / :meth:`_drop` as the broker answers;
        raise :class:`BrokerLost` (with what it did not take) when the connection goes."""
        raise NotImplementedError

    def _alive(self) -> bool:
        """False when the transport already knows the connection is gone."""
        return True

    def _lost_reason(self) -> str:
        return "connection lost"

    def _wait_confirmed(self, deadline: float) -> None:
        """Wait (until ``deadline``) for confirmations of what was sent (MQTT QoS 1)."""
        return None

    def _teardown(self) -> list[Item]:  # pragma: no cover - abstract
        """Close the connection; return what was sent but not confirmed (to send again)."""
        raise NotImplementedError


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "…"


# ---------------------------------------------------------------------------------- MQTT
_MQTT_REFUSED = {134, 135}  # Bad user name or password, Not authorized
_MQTT_UNSUPPORTED_PROTOCOL = 132
_MQTT_PACKET_TOO_LARGE = 149
_MQTT_MAX_PACKET = 268_435_455 + 5  # the protocol's own bound


class MqttPublisher(BrokerPublisher):
    """MQTT (paho-mqtt, MQTT 5 falling back to 3.1.1): QoS 0 counts a message published once
    written to the socket, QoS 1 once the broker's PUBACK says so. A message larger than the
    Maximum Packet Size the broker announced is dropped (``too_large``) rather than sent (a
    broker disconnects a client that sends one)."""

    credentials_hint = "REMEMBRALL_MQTT_USERNAME/PASSWORD"
    #: messages handed to paho and not yet confirmed, at most
    window = 256

    def __init__(self, url: BrokerUrl, buffer: int = 10_000, hooks: PublisherHooks | None = None) -> None:
        self._client: Any = None
        self._protocol_v5 = True
        self._inflight: dict[int, Item] = {}
        self._early: dict[int, Any] = {}  # PUBACKs that came before publish() returned the mid
        self._lost_flag = False
        self._disconnect_reason: Any = None
        self._max_packet = _MQTT_MAX_PACKET
        super().__init__(url, buffer, hooks)

    def _open(self, timeout_s: float) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        v5 = self._protocol_v5
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.url.client_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, reconnect_on_failure=False)
        self.url.secure_mqtt(client)
        client.connect_timeout = timeout_s
        client.max_inflight_messages_set(self.window)
        connack = threading.Event()
        answer: dict[str, Any] = {}

        def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, properties: Any) -> None:
            answer["reason"], answer["properties"] = reason, properties
            connack.set()

        def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: Any, _properties: Any) -> None:
            with self._cond:
                self._lost_flag, self._disconnect_reason = True, reason
                self._cond.notify_all()

        client.on_connect, client.on_disconnect, client.on_publish = on_connect, on_disconnect, self._on_publish
        with self._cond:
            self._inflight.clear()
            self._early.clear()
            self._lost_flag, self._disconnect_reason = False, None
        client.connect(self.url.host, self.url.port, keepalive=30)
        client.loop_start()
        self._client = client
        if not connack.wait(timeout_s):
            self._teardown()
            raise TimeoutError(f"no CONNACK within {timeout_s:.1f} s")
        reason = answer["reason"]
        if reason.is_failure:
            self._teardown()
            if reason.value in _MQTT_REFUSED:
                raise BrokerRefused(str(reason).lower())
            if reason.value == _MQTT_UNSUPPORTED_PROTOCOL and v5:
                self._protocol_v5 = False
                raise ConnectionError("the broker does not speak MQTT 5; trying 3.1.1")
            raise ConnectionError(f"the broker refused the connection: {reason}")
        self._max_packet = getattr(answer["properties"], "MaximumPacketSize", None) or _MQTT_MAX_PACKET

    def _topic(self, events: bool) -> str:
        return f"{self.url.topic}/events" if events else self.url.topic

    def _deliver(self, batch: list[Item]) -> None:
        import paho.mqtt.client as mqtt

        for i, (payload, events) in enumerate(batch):
            topic = self._topic(events)
            size = len(payload) + len(topic.encode()) + 16  # fixed + variable header, generously
            if size > self._max_packet:
                self._drop("too_large", 1, f"{len(payload)} bytes; the broker takes packets of at most "
                           f"{self._max_packet} bytes")
                continue
            with self._cond:
                while len(self._inflight) >= self.window and not self._lost_flag:
                    self._cond.wait(0.5)
                if self._lost_flag:
                    raise BrokerLost(self._lost_reason(), batch[i:])
            try:
                info = self._client.publish(topic, payload, qos=self.url.qos, retain=self.url.retain)
            except ValueError as exc:  # larger than MQTT allows
                self._drop("too_large", 1, str(exc))
                continue
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                raise BrokerLost("not connected", batch[i:])
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._drop("error", 1, mqtt.error_string(info.rc))
                continue
            with self._cond:
                early = self._early.pop(info.mid, None)
                if early is None:
                    self._inflight[info.mid] = (payload, events)
            if early is not None:
                self._settle(early)

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, reason: Any, _properties: Any) -> None:
        """paho's thread: the message is written (QoS 0) or acknowledged (QoS 1)."""
        with self._cond:
            item = self._inflight.pop(mid, None)
            if item is None:
                self._early[mid] = reason
                return
            self._cond.notify_all()
        self._settle(reason)

    def _settle(self, reason: Any) -> None:
        if reason is None or not reason.is_failure:
            self._confirm(1)
        elif reason.value == 135:
            self._drop("refused", 1, f"the broker did not authorise publishing to {self.url.topic!r}")
        elif reason.value == _MQTT_PACKET_TOO_LARGE:
            self._drop("too_large", 1, str(reason))
        else:
            self._drop("error", 1, f"the broker answered {reason}")

    def _alive(self) -> bool:
        return not self._lost_flag

    def _lost_reason(self) -> str:
        reason = self._disconnect_reason
        return f"disconnected: {reason}" if reason is not None else "connection lost"

    def _wait_confirmed(self, deadline: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._inflight or self._lost_flag,
                                max(0.0, deadline - time.monotonic()))

    def _teardown(self) -> list[Item]:
        client, self._client = self._client, None
        if client is not None:
            if not self._lost_flag:
                client.disconnect()
            client.loop_stop()
        with self._cond:
            items = list(self._inflight.values())
            self._inflight.clear()
            self._early.clear()
            too_large = getattr(self._disconnect_reason, "value", None) == _MQTT_PACKET_TOO_LARGE
        if too_large and items:  # the broker cut us off for a packet it would not take: not that one again
            biggest = max(range(len(items)), key=lambda k: len(items[k][0]))
            size = len(items.pop(biggest)[0])
            self._drop("too_large", 1, f"{size} bytes: the broker disconnected on it (packet too large)")
        return items


# ---------------------------------------------------------------------------------- Redis
class RedisPublisher(BrokerPublisher):
    """Redis Streams (redis-py): XADD ``{data: LINE}`` to ``stream`` (events to
    ``stream:events``), trimmed to about ``maxlen`` entries, pipelined by batch. A command the
    server rejects (a key of another type, no permission) drops that message, not the batch."""

    credentials_hint = "REMEMBRALL_REDIS_PASSWORD (and REMEMBRALL_REDIS_USERNAME for an ACL user)"

    def __init__(self, url: BrokerUrl, buffer: int = 10_000, hooks: PublisherHooks | None = None) -> None:
        self._client: Any = None
        super().__init__(url, buffer, hooks)

    def _open(self, timeout_s: float) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(**self.url.redis_kwargs(), socket_timeout=CONNECT_TIMEOUT_S,
                             socket_connect_timeout=timeout_s,
                             retry=Retry(NoBackoff(), 0))  # our backoff, not redis-py's
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            client.close()
            raise BrokerRefused(str(exc)) from None
        except redis.ResponseError as exc:
            client.close()
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
                raise BrokerRefused(str(exc)) from None
            raise
        except Exception:
            client.close()
            raise
        self._client = client

    def _deliver(self, batch: list[Item]) -> None:
        import redis

        pipe = self._client.pipeline(transaction=False)
        for payload, events in batch:
            pipe.xadd(f"{self.url.stream}:events" if events else self.url.stream, {REDIS_FIELD: payload},
                      maxlen=self.url.maxlen, approximate=True)
        try:
            results = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise BrokerLost(_describe(exc), batch) from None
        ok = 0
        for result in results:
            if not isinstance(result, Exception):
                ok += 1
                continue
            text = str(result)
            if isinstance(result, redis.exceptions.NoPermissionError) or text.startswith(("NOPERM", "NOAUTH")):
                self._drop("refused", 1, text)
            elif "too large" in text.lower() or ("max" in text.lower() and "bulk" in text.lower()):
                self._drop("too_large", 1, text)
            else:
                self._drop("error", 1, text)
        self._confirm(ok)

    def _teardown(self) -> list[Item]:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail; it is gone either way
                pass
        return []


def open_publisher(url: str | BrokerUrl, buffer: int = 10_000, hooks: PublisherHooks | None = None) -> BrokerPublisher:
    """A started publisher for ``url`` (a string is parsed with :func:`parse_broker_url`)."""
    parsed = parse_broker_url(url) if isinstance(url, str) else url
    cls = MqttPublisher if parsed.scheme == "mqtt" else RedisPublisher
    return cls(parsed, buffer, hooks)


#: The client library each scheme needs (the ``brokers`` extra installs both).


def close_all(publishers: Iterable[BrokerPublisher], timeout_s: float = 2.0) -> None:
    """Close several publishers at once: together they take ``timeout_s``, not one each."""
    publishers = list(publishers)
    for pub in publishers:
        pub.start_close(timeout_s)
    for pub in publishers:
        pub.join_close()
