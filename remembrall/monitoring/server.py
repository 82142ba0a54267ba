"""One HTTP endpoint for the whole multi-process pipeline: ``/metrics``, ``/healthz``, ``/readyz``.

It runs in the supervisor, aggregating every stage process's metrics files (prometheus_client
multiprocess mode), so Prometheus scrapes one target however many stage processes there are.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

#: A probe returns (ok, details) for /healthz or /readyz.
Probe = Callable[[], tuple[bool, dict]]


def _ok_probe() -> tuple[bool, dict]:
    return True, {}


class MetricsServer:
    """Serve aggregated metrics and health probes on ``host:port`` (port 0 picks a free one)."""

    #: A stage process that is starting creates its metrics files empty and fills them a moment
    #: later: a scrape that meets one tries again this often before it answers 500.
    COLLECT_TRIES = 5

    def collect(self) -> bytes | None:
        """The exposition of every process's metrics, or None (logged) when it cannot be read."""
        for attempt in range(self.COLLECT_TRIES):
            try:
                return generate_latest(self.registry)
            except Exception as exc:  # a half-written metrics file must not kill the endpoint
                if attempt == self.COLLECT_TRIES - 1:
                    log.warning("metrics aggregation failed: %s", exc)
                    return None
                time.sleep(0.02 * (attempt + 1))
        return None

    def __init__(self, multiproc_dir: str | None, host: str = "127.0.0.1", port: int = 9108,
                 healthz: Probe = _ok_probe, readyz: Probe = _ok_probe) -> None:
        if multiproc_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=multiproc_dir)
        else:
            from prometheus_client import REGISTRY as registry
        self.registry = registry
        self.probes = {"/healthz": healthz, "/readyz": readyz}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                route = self.path.split("?", 1)[0]
                if route == "/metrics":
                    body = server.collect()
                    if body is None:
                        self._reply(500, b"metrics aggregation failed\n", "text/plain")
                        return
                    self._reply(200, body, CONTENT_TYPE_LATEST)
                elif route in server.probes:
                    ok, details = server.probes[route]()
                    body = json.dumps({"ok": ok, **details}, sort_keys=True).encode()
                    self._reply(200 if ok else 503, body, "application/json")
                else:
                    self._reply(404, b"try /metrics, /healthz or /readyz\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("metrics http: " + format, *args)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise OSError(f"cannot listen for metrics on {host}:{port}: {exc.strerror or exc}; "
                          "pick another --metrics-port (0 = any free port)") from None
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
