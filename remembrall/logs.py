"""Logging: readable lines on a terminal, one JSON object per line otherwise (journald, files)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "component": self.component,
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (it may be replaced)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup_logging(level: str = "info", component: str = "remembrall", json_logs: bool | None = None) -> None:
    """Configure the root logger once per process.

    ``json_logs`` defaults to "stderr is not a TTY" unless REMEMBRALL_LOG_FORMAT says
    ``json`` or ``text``.
    """
    if json_logs is None:
        fmt = os.environ.get("REMEMBRALL_LOG_FORMAT", "").lower()
        json_logs = fmt == "json" if fmt in ("json", "text") else not sys.stderr.isatty()
    handler = _StderrHandler()
    if json_logs:
        handler.setFormatter(JsonFormatter(component))
    else:
        fmt = logging.Formatter(f"%(asctime)s %(levelname)-7s [{component}] %(message)s", "%H:%M:%S")
        fmt.converter = time.localtime
        handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # faiss logs each CPU-specific build it fails to load at INFO: noise in every stage's log
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
