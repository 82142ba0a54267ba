"""``remembrall serve CONFIG``: the label server a fleet shares (see :mod:`remembrall.stages.label_server`)."""

from __future__ import annotations

import logging
from pathlib import Path

from remembrall.config import Config
from remembrall.stages.label_server import LabelServer

log = logging.getLogger("remembrall")


def serve_main(cfg: Config, metrics_port: int | None = None) -> int:
    """Run the label server until SIGTERM; metrics and /healthz on ``metrics.host:port``."""
    work = Path(cfg.out).resolve()
    work.mkdir(parents=True, exist_ok=True)  # an external labeler's samples/ and labels/ live here
    server = LabelServer(cfg, work)
    server.install_signal_handlers()
    if cfg.metrics.enabled:
        port = cfg.metrics.port if metrics_port is None else metrics_port
        try:
            url = server.serve_metrics(cfg.metrics.host, port)
        except OSError:
            server.close()
            raise
        log.info("serve: metrics on %s/metrics (health: /healthz)", url)
    print(f"serving labels on {server.address}", flush=True)
    return server.run()
