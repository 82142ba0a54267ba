"""Shared benchmark helpers: rate measurement with warm-up, machine context, JSON and tables.

Every benchmark reports what the machine was doing (load average, cores) next to its figures,
because on a shared or small machine a number without its context is not reproducible.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remembrall.atomic import atomic_write_bytes


@dataclass
class Rate:
    """``items`` processed in ``seconds`` (warm-up excluded)."""

    items: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def measure_rate(step: Callable[[], int], *, seconds: float, warmup_s: float = 0.5,
                 min_items: int = 1, warmup_steps: int = 1) -> Rate:
    """Call ``step`` (returns how many items it did) repeatedly: at least ``warmup_s`` and
    ``warmup_steps`` uncounted, then at least ``seconds`` and ``min_items`` counted. Steps are
    timed whole, never interrupted."""
    end_warm = time.perf_counter() + warmup_s
    done = 0
    while done < warmup_steps or time.perf_counter() < end_warm:
        step()
        done += 1
    items = 0
    t0 = time.perf_counter()
    while True:
        items += step()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and items >= min_items:
            return Rate(items, elapsed)


def machine() -> dict[str, Any]:
    """Where a result was measured: cores, load average right now, Python and platform."""
    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def loadavg_1m() -> float:
    return round(os.getloadavg()[0], 2)


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write ``data`` atomically (a crashed benchmark never leaves half a JSON file)."""
    atomic_write_bytes(Path(path), (json.dumps(data, indent=1, sort_keys=False) + "\n").encode())


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """Print (and return) ``rows`` as an aligned plain-text table."""
    cells = [[fmt(c) for c in row] for row in rows]
    if header is not None:
        cells.insert(0, list(header))
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(map(len, cells)))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells]
    if header is not None:
        lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text, flush=True)
    return text
