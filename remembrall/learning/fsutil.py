"""Crash-safe JSON writes for the learning stages, on :mod:`remembrall.atomic` (no torch import)."""

from __future__ import annotations

import json
import os
from typing import Any

from remembrall.atomic import atomic_write_bytes

__all__ = ["atomic_write_bytes", "atomic_write_json"]


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON so that a reader sees the old file or the new one, never half."""
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"))
