"""Shared benchmark helpers: rate measurement with warm-up, machine context, JSON and tables.

Every benchmark reports what the machine was doing (load average, cores) next to its figures,
because on a shared or small machine a number without its context is not reproducible.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remembrall.atomic import atomic_write_bytes


@dataclass
class Rate:
    """``items`` processed in ``seconds`` (warm-up excluded)."""

    items: int
    seconds: float
    #: CPU seconds this process used meanwhile (every thread): ``cpu_s / seconds`` cores busy
    cpu_s: float = 0.0

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
    t0, c0 = time.perf_counter(), time.process_time()
    while True:
        items += step()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and items >= min_items:
            return Rate(items, elapsed, time.process_time() - c0)


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


# ------------------------------------------------------------------------------------ learning metrics
#: Items after a segment starts over which adaptation is scored, and items either side of a
#: return over which recall is scored; both shrink to half the shortest segment (--smoke).
ADAPTATION_WINDOW = 200
RECALL_WINDOW = 100


def window(nominal: int, segments: Sequence[Mapping[str, Any]]) -> int:
    """``nominal`` items, or half the shortest segment when that is less (short --smoke segments)."""
    shortest = min((s["end"] - s["start"] for s in segments), default=2 * nominal)
    return max(1, min(nominal, shortest // 2))


def _accuracy(correct: Mapping[int, bool], start: int, end: int) -> tuple[int, int]:
    """(right, scored) over the items ``[start, end)`` that have a labelled prediction."""
    vals = [correct[i] for i in range(start, end) if i in correct]
    return sum(vals), len(vals)


def adaptation_accuracy(correct: Mapping[int, bool], segments: Sequence[Mapping[str, Any]], size: int
                        ) -> float | None:
    """Prequential accuracy pooled over the first ``size`` items of every segment in ``segments``
    (callers pass the segments that follow a scene change): how fast a system recovers after one,
    which a whole-stream mean dilutes."""
    right = scored = 0
    for s in segments:
        r, n = _accuracy(correct, s["start"], min(s["end"], s["start"] + size))
        right, scored = right + r, scored + n
    return round(right / scored, 4) if scored else None


def _scene(s: Mapping[str, Any]) -> str:
    return str(s.get("scene") or s["name"])


def recall(correct: Mapping[int, bool], segments: Sequence[Mapping[str, Any]], size: int) -> list[dict[str, Any]]:
    """Every return of a scene among ``segments`` (a segment whose scene had an earlier segment
    there): accuracy over its first ``size`` items (``first100``) against the last ``size`` of the
    scene's previous visit (``previous_end100``), and their ``ratio`` (None when either has no
    scored item, or the previous end scored 0). 1.0 means the system came back where it left off."""
    out: list[dict[str, Any]] = []
    last: dict[str, Mapping[str, Any]] = {}
    for s in segments:
        prev = last.get(_scene(s))
        last[_scene(s)] = s
        if prev is None:
            continue
        r1, n1 = _accuracy(correct, s["start"], min(s["end"], s["start"] + size))
        r0, n0 = _accuracy(correct, max(prev["start"], prev["end"] - size), prev["end"])
        first = r1 / n1 if n1 else None
        before = r0 / n0 if n0 else None
        out.append({"segment": s["name"], "scene": _scene(s), "visit": s.get("visit"), "previous": prev["name"],
                    "first100": round(first, 4) if first is not None else None,
                    "previous_end100": round(before, 4) if before is not None else None,
                    "ratio": round(first / before, 4) if first is not None and before else None})
    return out


def learning_metrics(correct: Mapping[int, bool], segments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``adaptation_accuracy`` over ``segments`` (the scored ones after a scene change) and, where a
    scene comes back among them, ``recall_ratio``: the mean over returns of :func:`recall`'s ratio."""
    out: dict[str, Any] = {}
    size = window(ADAPTATION_WINDOW, segments)
    out["adaptation_accuracy"], out["adaptation_window"] = adaptation_accuracy(correct, segments, size), size
    size = window(RECALL_WINDOW, segments)
    returns = recall(correct, segments, size)
    if returns:
        ratios = [r["ratio"] for r in returns if r["ratio"] is not None]
        out["recall_ratio"] = round(sum(ratios) / len(ratios), 4) if ratios else None
        out["recall_window"], out["recall"] = size, returns
    return out


def recurring_buffer(per_segment: int, rate: float, holdout_every: int, segments: int = 2) -> int:
    """Replay capacity on the recurring stream: the training labels of about ``segments`` segments
    at label rate ``rate``. A deployment's stream outlasts its buffer; a benchmark of a few thousand
    items would fit whole in the default one, and a head retrained on every scene at once holds
    them all (bench/scene_conflict.py), so the buffer is bounded to fewer scenes than recur."""
    return max(8, round(segments * per_segment * rate * (1 - 1 / holdout_every)))


# ------------------------------------------------------------------------------------ targets
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


def learning_targets(systems: dict[str, Any], *, uniform_points: float = 3,
                     min_accuracy: float | None = None) -> dict[str, Any]:
    """Both learning benchmarks' targets, for the systems that ran: :func:`accuracy_targets`;
    remembrall's mean accuracy ≥ ``min_accuracy`` (drifting streams); its retraining compute ≤ 0.5×
    uniform's; its adaptation accuracy ≥ uniform's + 5 points; its recall ratio ≥ 0.95 (streams
    whose scenes return)."""
    out = accuracy_targets(systems, uniform_points)
    rem, uni = systems.get("remembrall"), systems.get("uniform")
    if rem is None:
        return out
    if min_accuracy is not None:
        out["remembrall_mean_accuracy"] = {"value": rem["mean_accuracy"], "target": f">= {min_accuracy:g}",
                                           "met": rem["mean_accuracy"] >= min_accuracy}
    if uni is not None:
        ru, rr = uni["retrain_seconds"], rem["retrain_seconds"]
        out["retrain_seconds_ratio"] = {"value": round(rr / ru, 3) if ru > 0 else None, "target": "<= 0.5",
                                        "met": ru > 0 and rr <= 0.5 * ru}
        a, b = rem.get("adaptation_accuracy"), uni.get("adaptation_accuracy")
        gain = a - b if a is not None and b is not None else None
        out["remembrall_vs_uniform_adaptation_points"] = {
            "value": round(100 * gain, 1) if gain is not None else None, "target": ">= 5",
            "met": gain is not None and gain >= 0.05 - 1e-9}
    if "recall_ratio" in rem:
        ratio = rem["recall_ratio"]
        out["remembrall_recall_ratio"] = {"value": ratio, "target": ">= 0.95", "met": ratio is not None and ratio >= 0.95}
    return out


#: Per-system columns of the report that only some streams have (printed where present).
LEARNING_COLUMNS = ("adaptation_accuracy", "recall_ratio")


def print_learning_report(report: dict[str, Any], figures: Sequence[Sequence[Any]], extra_columns: Sequence[str] = (),
                          segment_name: Callable[[str], str] = str) -> None:
    """Systems (accuracy, labels, retraining, swaps, adaptation and recall where measured), accuracy
    by segment, recall per return, ``figures``, targets."""
    systems = report["systems"]
    extra = [c for c in LEARNING_COLUMNS if any(c in r for r in systems.values())] + list(extra_columns)
    print_table([[n, r["mean_accuracy"], r["labels_used"], r["retrain_runs"], r["retrain_seconds"], r["swaps"],
                  *(r.get(c) for c in extra)] for n, r in systems.items()],
                ["system", "mean_accuracy", "labels_used", "retrain_runs", "retrain_seconds", "swaps", *extra])
    print()
    segs = list(next(iter(systems.values()))["per_segment_accuracy"])
    print_table([[n] + [r["per_segment_accuracy"][k] for k in segs] for n, r in systems.items()],
                ["accuracy by segment"] + [segment_name(k) for k in segs])
    print()
    with_recall = {n: r["recall"] for n, r in systems.items() if r.get("recall")}
    if with_recall:
        first = next(iter(with_recall))
        print_table([[n] + [_recall_cell(x) for x in rs] for n, rs in with_recall.items()],
                    [f"recall: first / previous end ({systems[first]['recall_window']} items)"]
                    + [segment_name(x["segment"]) for x in with_recall[first]])
        print()
    print_table(figures, ["figure", "value"])
    print()
    print_table([[k, v["value"], v["target"], "yes" if v["met"] else "NO"] for k, v in report["targets"].items()],
                ["target", "measured", "wanted", "met"])
    print(f"machine: {report['machine']['cpus']} cpus, load {report['machine']['loadavg']}")


def _recall_cell(x: Mapping[str, Any]) -> str:
    first, before = x["first100"], x["previous_end100"]
    return f"{fmt(first) if first is not None else '-'} / {fmt(before) if before is not None else '-'}"


def recurring_schedule(order: str, scenes: Sequence[Any]) -> list[tuple[Any, int]]:
    """``(scene, visit)`` per segment for a visit order of scene ids such as ``"ABCDABCD"``
    (``scenes``: anything with an ``id``; both recurring streams use it)."""
    by_id = {s.id: s for s in scenes}
    unknown = sorted(set(order) - set(by_id))
    if unknown or not order:
        raise ValueError(f"recurring order {order!r}: unknown scene ids {unknown} (known: {sorted(by_id)})")
    visits: dict[str, int] = {}
    out = []
    for sid in order:
        visits[sid] = visits.get(sid, 0) + 1
        out.append((by_id[sid], visits[sid]))
    return out
