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


def accuracy_targets(systems: dict[str, Any], uniform_points: float) -> dict[str, Any]:
    """The learning benchmarks' accuracy targets: remembrall ≥ 15 points over the static model and
    ≥ ``uniform_points`` over uniform sampling, each with its measured value and whether it was met."""
    out: dict[str, Any] = {}
    if "remembrall" in systems and "static" in systems:
        gain = systems["remembrall"]["mean_accuracy"] - systems["static"]["mean_accuracy"]
        out["remembrall_vs_static_points"] = {"value": round(100 * gain, 1), "target": ">= 15", "met": gain >= 0.15}
    if "remembrall" in systems and "uniform" in systems:
        gain = systems["remembrall"]["mean_accuracy"] - systems["uniform"]["mean_accuracy"]
        out["remembrall_vs_uniform_points"] = {"value": round(100 * gain, 1), "target": f">= {uniform_points:g}",
                                               "met": gain >= uniform_points / 100}
    return out


def print_learning_report(report: dict[str, Any], figures: Sequence[Sequence[Any]], extra_columns: Sequence[str] = (),
                          segment_name: Callable[[str], str] = str) -> None:
    """Systems (accuracy, labels, retraining, swaps), accuracy by segment, ``figures``, targets."""
    systems = report["systems"]
    print_table([[n, r["mean_accuracy"], r["labels_used"], r["retrain_runs"], r["retrain_seconds"], r["swaps"],
                  *(r[c] for c in extra_columns)] for n, r in systems.items()],
                ["system", "mean_accuracy", "labels_used", "retrain_runs", "retrain_seconds", "swaps", *extra_columns])
    print()
    segs = list(next(iter(systems.values()))["per_segment_accuracy"])
    print_table([[n] + [r["per_segment_accuracy"][k] for k in segs] for n, r in systems.items()],
                ["accuracy by segment"] + [segment_name(k) for k in segs])
    print()
    print_table(figures, ["figure", "value"])
    print()
    print_table([[k, v["value"], v["target"], "yes" if v["met"] else "NO"] for k, v in report["targets"].items()],
                ["target", "measured", "wanted", "met"])
    print(f"machine: {report['machine']['cpus']} cpus, load {report['machine']['loadavg']}")
