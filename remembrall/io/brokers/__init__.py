"""Brokers a fleet already runs (MQTT on the edge, Redis in the back end): URLs, clients."""

from remembrall.io.brokers.urls import (
    BrokerUrl,
    BrokerUrlError,
    check_url,
    check_urls,
    is_broker_url,
    parse_broker_url,
)

__all__ = ["BrokerUrl", "BrokerUrlError", "check_url", "check_urls", "is_broker_url", "parse_broker_url"]
