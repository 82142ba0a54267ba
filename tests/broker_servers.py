"""Real brokers on 127.0.0.1 for the tests: Debian's ``mosquitto`` and ``redis-server``.

Each server is a child process on a free port, with its files in a temporary folder; ``stop()``
kills it (a broker "going away"), ``start()`` brings it back on the same port. Tests that need
one are skipped when the package is not installed (``scripts/system-deps.sh`` installs both).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


class _Server:
    binary = ""

    def __init__(self) -> None:
        if shutil.which(self.binary) is None:
            pytest.skip(f"{self.binary} is not installed (scripts/system-deps.sh installs it)")
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.binary}-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), cwd=self.dir, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "stderr.log", "ab"))  # noqa: SIM115
        _wait_port(self.port, self.proc, self.binary)

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to its clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Mosquitto(_Server):
    """``mosquitto`` on loopback; with ``users`` ({name: password}) anonymous clients are refused."""

    binary = "mosquitto"

    def __init__(self, users: dict[str, str] | None = None) -> None:
        super().__init__()
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr",
                 "user root",  # run as root (CI): keep root, or the private temp folder is unreadable
                 f"allow_anonymous {'false' if users else 'true'}", "max_packet_size 1048576"]
        if users:
            pw = self.dir / "passwd"
            pw.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lines.append(f"password_file {pw}")
        (self.dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return ["mosquitto", "-c", str(self.dir / "mosquitto.conf")]

    def url(self, topic: str, **params: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"mqtt://127.0.0.1:{self.port}/{topic}" + (f"?{query}" if query else "")


class Redis(_Server):
    """``redis-server`` on loopback, nothing saved to disk unless ``appendonly``; ``password``
    makes it refuse unauthenticated clients."""

    binary = "redis-server"

    def __init__(self, password: str | None = None, appendonly: bool = False) -> None:
        super().__init__()
        self.password, self.appendonly = password, appendonly

    def command(self) -> list[str]:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.dir)]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def url(self, stream: str, db: int = 0, **params: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"stream": stream, **params}.items())
        return f"redis://127.0.0.1:{self.port}/{db}?{query}"

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True)


@pytest.fixture
def mosquitto():
    server = Mosquitto()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_server():
    server = Redis()
    server.start()
    yield server
    server.close()
