"""A ``remembrall serve`` server in a thread and CURVE key files, for the remote label and
training tests (fixture ``keys``, imported by conftest)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from remembrall.config import load_config
from remembrall.io.curve import generate_keys
from remembrall.stages.fleet_server import FleetServer


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    (d / "allowed").mkdir(parents=True)
    generate_keys(d, "teacher")
    for name in ("cam-a", "cam-b"):
        generate_keys(d, name)
        (d / "allowed" / f"{name}.key").write_bytes((d / f"{name}.key").read_bytes())
    generate_keys(d, "stranger")  # a valid key pair the server does not allow
    generate_keys(d, "impostor")  # a "server" key the clients were not given
    return d


class Server:
    """A FleetServer (oracle labeler: fast, and the answers are checkable) in a thread."""

    def __init__(self, keys: Path, port: int, tmp: Path, labeler: str = "oracle", **serve: object) -> None:
        cfg = load_config(None, {"label.labeler": labeler, "out": str(tmp / "server"),
                                 "serve.bind": f"tcp://127.0.0.1:{port}",
                                 "serve.secret_key": str(keys / "teacher.key_secret"),
                                 "serve.allowed_keys": str(keys / "allowed"),
                                 **{f"serve.{k}": v for k, v in serve.items()}})
        self.server = FleetServer(cfg, tmp / "server")
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


def value(metric, *labels: str) -> float:
    return metric.labels(*labels)._value.get()


