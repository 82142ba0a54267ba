"""Broker URLs: where a sink publishes and a text source reads, in one string.

==========================================================  =========================================
URL                                                         means
==========================================================  =========================================
``mqtt://HOST[:1883]/TOPIC[?qos=0|1][&retain=yes]``         MQTT topic (``mqtts://``: TLS, port 8883);
                                                            a source may use ``+``/``#`` wildcards
``redis://HOST[:6379][/DB]?stream=KEY[&maxlen=N]``          a Redis Stream (``rediss://``: TLS);
``[&group=G][&consumer=C]``                                 a source reads it in consumer group G
==========================================================  =========================================

Secrets never sit in a config file: a URL with ``user:password@`` is refused, and credentials
and TLS files come from the environment (``REMEMBRALL_MQTT_USERNAME``, ``…_PASSWORD``,
``…_CA_FILE``, ``…_CERT_FILE``, ``…_KEY_FILE``; the same with ``REDIS``).

>>> u = parse_broker_url("mqtt://127.0.0.1:1884/cams/lobby?qos=1", env={})
>>> u.scheme, u.host, u.port, u.topic, u.qos, u.tls
('mqtt', '127.0.0.1', 1884, 'cams/lobby', 1, False)
>>> r = parse_broker_url("rediss://cache.local/2?stream=preds&maxlen=1000", env={"REMEMBRALL_REDIS_PASSWORD": "s3"})
>>> r.scheme, r.port, r.db, r.stream, r.maxlen, r.tls, r.password
('redis', 6380, 2, 'preds', 1000, True, 's3')
>>> r.safe
'rediss://cache.local:6380/2?stream=preds'
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = {"mqtt": ("mqtt", False, 1883), "mqtts": ("mqtt", True, 8883),
           "redis": ("redis", False, 6379), "rediss": ("redis", True, 6380)}
_PARAMS = {"mqtt": {"qos", "retain", "client_id", "events"},
           "redis": {"stream", "maxlen", "group", "consumer", "events"}}
_YES, _NO = {"1", "yes", "true", "on"}, {"0", "no", "false", "off"}


class BrokerUrlError(ValueError):
    """A broker URL that cannot be used; the message says what to write instead."""


@dataclass(frozen=True)
class BrokerUrl:
    """A parsed broker URL (see the module docstring); ``safe`` is it without secrets, for logs."""

    scheme: str  # mqtt | redis
    host: str
    port: int
    tls: bool
    safe: str
    topic: str = ""  # mqtt
    qos: int = 0
    retain: bool = False
    client_id: str = ""
    db: int = 0  # redis
    stream: str = ""
    maxlen: int | None = None
    group: str = ""
    consumer: str = ""
    events: bool = False  # a sink also publishes model events (swaps, recalls, drift)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def secure_mqtt(self, client: Any) -> None:
        """Set this URL's credentials and TLS on a paho-mqtt client (before it connects)."""
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_file, certfile=self.cert_file, keyfile=self.key_file)

    def redis_kwargs(self) -> dict[str, Any]:
        """Where and as whom ``redis.Redis`` connects (address, database, credentials, TLS)."""
        kw: dict[str, Any] = {"host": self.host, "port": self.port, "db": self.db, "username": self.username,
                              "password": self.password}
        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=self.ca_file, ssl_certfile=self.cert_file, ssl_keyfile=self.key_file)
        return kw


def is_broker_url(text: str) -> bool:
    return isinstance(text, str) and text.split(":", 1)[0].lower() in SCHEMES and "://" in text


def _flag(url: str, name: str, value: str) -> bool:
    if value.lower() in _YES:
        return True
    if value.lower() in _NO:
        return False
    raise BrokerUrlError(f"broker URL {url!r}: {name}={value!r} must be yes or no")


def _int(url: str, name: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = lo - 1
    if not lo <= n <= hi:
        raise BrokerUrlError(f"broker URL {url!r}: {name}={value!r} must be a whole number from {lo} to {hi}")
    return n


def parse_broker_url(url: str, env: Mapping[str, str] | None = None) -> BrokerUrl:
    """Parse ``url``; credentials and TLS files from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    if not is_broker_url(url):
        raise BrokerUrlError(f"broker URL {url!r}: expected mqtt://HOST/TOPIC, mqtts://…, "
                             "redis://HOST/DB?stream=KEY or rediss://…")
    parts = urlsplit(url)
    scheme, tls, default_port = SCHEMES[parts.scheme.lower()]
    if parts.username is not None or parts.password is not None:
        raise BrokerUrlError(f"broker URL {parts.scheme}://…@{parts.hostname}: credentials do not belong in a "
                             f"config file; set REMEMBRALL_{scheme.upper()}_USERNAME and "
                             f"REMEMBRALL_{scheme.upper()}_PASSWORD in the environment")
    if not parts.hostname:
        raise BrokerUrlError(f"broker URL {url!r}: no host")
    try:
        port = parts.port or default_port
    except ValueError:
        raise BrokerUrlError(f"broker URL {url!r}: the port must be a number from 1 to 65535") from None
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(query) - _PARAMS[scheme]
    if unknown:
        raise BrokerUrlError(f"broker URL {url!r}: unknown parameter(s) {sorted(unknown)}; "
                             f"{scheme} takes {sorted(_PARAMS[scheme])}")
    q = {k: v[-1] for k, v in query.items()}
    prefix = f"REMEMBRALL_{scheme.upper()}_"
    common: dict = dict(scheme=scheme, host=parts.hostname, port=port, tls=tls,
                        events=_flag(url, "events", q["events"]) if "events" in q else False,
                        username=env.get(prefix + "USERNAME") or None, password=env.get(prefix + "PASSWORD") or None,
                        ca_file=env.get(prefix + "CA_FILE") or None, cert_file=env.get(prefix + "CERT_FILE") or None,
                        key_file=env.get(prefix + "KEY_FILE") or None)
    base = f"{parts.scheme.lower()}://{parts.hostname}:{port}"
    if scheme == "mqtt":
        topic = unquote(parts.path.lstrip("/"))
        if not topic:
            raise BrokerUrlError(f"broker URL {url!r}: no topic; write mqtt://HOST/TOPIC (e.g. mqtt://127.0.0.1/remembrall/predictions)")
        return BrokerUrl(**common, safe=f"{base}/{topic}", topic=topic,
                         qos=_int(url, "qos", q["qos"], 0, 1) if "qos" in q else 0,
                         retain=_flag(url, "retain", q["retain"]) if "retain" in q else False,
                         client_id=q.get("client_id", ""))
    path = parts.path.strip("/")
    db = _int(url, "database", path, 0, 1 << 20) if path else 0
    stream = q.get("stream", "")
    if not stream:
        raise BrokerUrlError(f"broker URL {url!r}: no stream; write redis://HOST/DB?stream=KEY "
                             "(e.g. redis://127.0.0.1/0?stream=remembrall:predictions)")
    return BrokerUrl(**common, safe=f"{base}/{db}?stream={stream}", db=db, stream=stream,
                     maxlen=_int(url, "maxlen", q["maxlen"], 1, 1 << 40) if "maxlen" in q else None,
                     group=q.get("group", ""), consumer=q.get("consumer", ""))


_LIBRARIES = {"mqtt": ("paho.mqtt", "paho-mqtt"), "redis": ("redis", "redis")}


def check_url(url: str, key: str) -> BrokerUrl:
    """Parse the broker URL of config key ``key`` and check that its client library is installed,
    so a bad one stops the run before any stage starts; the error names the key
    (``sink.brokers[1]: broker URL …: no topic; …``)."""
    try:
        parsed = parse_broker_url(url)
    except BrokerUrlError as exc:
        raise BrokerUrlError(f"{key}: {exc}") from None
    module, package = _LIBRARIES[parsed.scheme]
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise BrokerUrlError(f"{key}: {parsed.safe} needs the {package} package: "
                             "pip install 'remembrall-stream[brokers]'")
    return parsed


def check_urls(urls: list[str], key: str) -> list[BrokerUrl]:
    """:func:`check_url` for each item of a list setting."""
    return [check_url(url, f"{key}[{i}]") for i, url in enumerate(urls)]
