"""``remembrall serve CONFIG``: the server a fleet shares for labels and training
(see :mod:`remembrall.stages.fleet_server`)."""

from __future__ import annotations

import logging
from pathlib import Path

from remembrall.config import Config
from remembrall.stages.fleet_server import FleetServer

log = logging.getLogger("remembrall")


def serve_main(cfg: Config, metrics_port: int | None = None) -> int:
    """Run the server until SIGTERM; metrics and /healthz on ``metrics.host:port``."""
    work = Path(cfg.out).resolve()
    work.mkdir(parents=True, exist_ok=True)  # an external labeler's samples/ and labels/ live here
    server = FleetServer(cfg, work)
    server.install_signal_handlers()
    if cfg.metrics.enabled:
        port = cfg.metrics.port if metrics_port is None else metrics_port
        try:
            url = server.serve_metrics(cfg.metrics.host, port)
        except OSError:
            server.close()
            raise
        log.info("serve: metrics on %s/metrics (health: /healthz)", url)
    print(f"serving on {server.address}", flush=True)
    return server.run()
