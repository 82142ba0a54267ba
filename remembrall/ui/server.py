"""The UI server: the Starlette app on uvicorn, in a thread of the supervisor process, beside the
metrics endpoint. It reads the run (status file, metrics, journal, exported samples) and writes
to it only through the pipeline's own sockets, so nothing it does can slow or stop a stage.

The socket is bound here, before the thread starts: a port in use or a refused address is an
error the caller sees at once, with the setting to change.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn

from remembrall.config import Config
from remembrall.io.sources import detect_modality
from remembrall.ui.app import UIState, build_app
from remembrall.ui.auth import make_token
from remembrall.ui.labeldesk import LabelDesk
from remembrall.ui.learning import LearningLog
from remembrall.ui.live import LiveFeed
from remembrall.ui.overview import MetricsView

log = logging.getLogger(__name__)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise OSError(f"cannot serve the UI on {host}:{port}: {exc.strerror or exc}; pick another ui.port "
                      "(--ui-port, 0 = any free port) or set ui.enabled: false") from None
    sock.setblocking(False)
    return sock


class UIServer:
    """Serve one pipeline's UI on ``ui.host:ui.port`` until :meth:`stop`."""

    def __init__(self, cfg: Config, out_dir: Path, sock_dir: Path, multiproc_dir: str | None) -> None:
        ucfg = cfg.ui
        self.sock = _listen(ucfg.host, ucfg.port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.token = make_token(out_dir)
        streams = {src.id: detect_modality(src) for src in cfg.sources}
        self.state = UIState(
            token=self.token, sock_dir=sock_dir, out_dir=out_dir, streams=streams,
            metrics=MetricsView(multiproc_dir), learning=LearningLog(out_dir, cfg.sink.path),
            desk=LabelDesk(cfg, out_dir, sock_dir), live=LiveFeed(sock_dir, ucfg.max_viewers,
                                                                  cfg.transport.max_message_bytes),
            grafana_url=ucfg.grafana_url, max_request_bytes=ucfg.max_request_bytes, live_fps=ucfg.live_fps)
        config = uvicorn.Config(build_app(self.state), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="ui-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except Exception:  # the UI is not the pipeline: log, and let the stages run on
            log.exception("the UI server stopped")

    def start(self) -> UIServer:
        self.state.desk.start()
        self.state.live.start()
        self._thread.start()
        log.info("UI on %s/?token=%s (token also in %s)", self.url, self.token, self.state.out_dir / "ui-token")
        return self

    def status(self) -> dict[str, Any]:
        """What the supervisor writes into status.json."""
        return {"ui_url": self.url}

    def stop(self) -> None:
        self.state.live.close_viewers()
        self.server.should_exit = True
        self._thread.join(5)
        self.state.live.stop()
        self.state.desk.stop()
        self.sock.close()
