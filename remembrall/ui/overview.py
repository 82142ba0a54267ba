"""What the Overview page shows: stages and streams from the supervisor's ``status.json`` and the
pipeline's own metrics (the same aggregated registry ``/metrics`` serves), rates included.

Collecting the multiprocess registry reads every stage's metrics file, so it happens at most once
per ``min_interval`` however many browsers poll; rates come from the newest two collections at
least ``rate_window`` seconds apart.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

#: (sample name, sorted label items) -> value
Snapshot = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def collect(registry: Any) -> Snapshot:
    """Every sample of ``registry`` as a flat mapping (histogram buckets left out)."""
    out: Snapshot = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name.endswith("_bucket"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def total(snap: Snapshot, name: str, by: str | None = None, **match: str) -> dict[str, float] | float:
    """Sum of sample ``name`` over the series matching ``match``; grouped by label ``by`` if given."""
    groups: dict[str, float] = defaultdict(float)
    whole = 0.0
    for (n, labels), v in snap.items():
        if n != name:
            continue
        d = dict(labels)
        if any(d.get(k) != want for k, want in match.items()):
            continue
        whole += v
        if by is not None:
            groups[d.get(by, "")] += v
    return dict(groups) if by is not None else whole


def highest(snap: Snapshot, name: str, by: str) -> dict[str, float]:
    """Largest value of gauge ``name`` per label ``by``."""
    out: dict[str, float] = {}
    for (n, labels), v in snap.items():
        if n == name:
            key = dict(labels).get(by, "")
            out[key] = max(out.get(key, v), v)
    return out


class MetricsView:
    """Cached collections of the run's metrics, with per-second rates between them."""

    def __init__(self, multiproc_dir: str | None, min_interval: float = 1.0, rate_window: float = 2.0) -> None:
        if multiproc_dir:
            self.registry: Any = CollectorRegistry()
            MultiProcessCollector(self.registry, path=multiproc_dir)
        else:  # in-process metrics (a library user, a unit test)
            from prometheus_client import REGISTRY

            self.registry = REGISTRY
        self.min_interval, self.rate_window = min_interval, rate_window
        self._history: deque[tuple[float, Snapshot]] = deque(maxlen=16)
        self._lock = threading.Lock()

    def snapshots(self) -> tuple[Snapshot, Snapshot | None, float]:
        """(newest, an older one at least ``rate_window`` back or None, seconds between them)."""
        with self._lock:
            now = time.monotonic()
            if not self._history or now - self._history[-1][0] >= self.min_interval:
                try:
                    self._history.append((now, collect(self.registry)))
                except Exception:  # a metrics file being written: keep the last good collection  # noqa: BLE001
                    if not self._history:
                        return {}, None, 0.0
            t_new, newest = self._history[-1]
            for t_old, older in reversed(self._history):
                if t_new - t_old >= self.rate_window:
                    return newest, older, t_new - t_old
            return newest, None, 0.0

    def rates(self, name: str, by: str, **match: str) -> dict[str, float]:
        """Per-second increase of counter ``name`` grouped by ``by`` (empty until two collections)."""
        newest, older, dt = self.snapshots()
        if older is None or dt <= 0:
            return {}
        now_v, then_v = total(newest, name, by, **match), total(older, name, by, **match)
        assert isinstance(now_v, dict) and isinstance(then_v, dict)
        return {k: max(0.0, v - then_v.get(k, 0.0)) / dt for k, v in now_v.items()}


def read_status(sock_dir: Path) -> dict[str, Any]:
    """The supervisor's status file (atomic, rewritten every second); {} before the first one."""
    try:
        data = json.loads((sock_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def overview(status: dict[str, Any], view: MetricsView, streams: dict[str, str], grafana_url: str | None,
             ) -> dict[str, Any]:
    """The Overview page's data. ``streams``: stream id -> modality."""
    snap, _, _ = view.snapshots()
    fps = view.rates("remembrall_frames_total", "stage")
    drops = total(snap, "remembrall_frames_dropped_total", "stage")
    queue = total(snap, "remembrall_queue_depth", "stage")
    stages = []
    for name, info in (status.get("stages") or {}).items():
        stages.append({"name": name, "type": info.get("type"), "state": info.get("state"),
                       "restarts": info.get("restarts", 0), "streams": info.get("streams") or [],
                       "fps": round(fps.get(name, 0.0), 2), "drops": int(drops.get(name, 0.0)),  # type: ignore[union-attr]
                       "queue": int(queue.get(name, 0.0))})  # type: ignore[union-attr]
    sink_fps = view.rates("remembrall_frames_total", "stream", stage="sink")
    stream_drops = total(snap, "remembrall_frames_dropped_total", "stream")
    accuracy = {k: v for k, v in highest(snap, "remembrall_online_accuracy", "stream").items() if k}
    labels = total(snap, "remembrall_frames_total", "stream", stage="buffer")
    out_streams = []
    for stream, modality in streams.items():
        source = next((s for s in stages if s["type"] in ("decode", "text_decode") and stream in s["streams"]), None)
        out_streams.append({
            "id": stream, "modality": modality, "state": source["state"] if source else None,
            "fps_in": source["fps"] if source else 0.0, "fps_out": round(sink_fps.get(stream, 0.0), 2),
            "drops": int(stream_drops.get(stream, 0.0)),  # type: ignore[union-attr]
            "labels": int(labels.get(stream, 0.0)),  # type: ignore[union-attr]
            "online_accuracy": round(accuracy[stream], 4) if stream in accuracy else None,
        })
    versions = highest(snap, "remembrall_model_version", "stage")
    share = highest(snap, "remembrall_gpu_share", "stage")
    return {
        "pipeline": {"pid": status.get("pid"), "started": status.get("started"), "updated": status.get("updated"),
                     "stopping": bool(status.get("stopping")), "out_dir": status.get("out_dir"),
                     "metrics_url": status.get("metrics_url")},
        "stages": stages,
        "streams": out_streams,
        "model_version": int(versions.get("infer", 0.0)),
        "modalities": sorted(set(streams.values())),
        "labels_used": int(total(snap, "remembrall_frames_total", stage="buffer")),  # type: ignore[arg-type]
        "retrain_runs": int(total(snap, "remembrall_retrain_runs_total")),  # type: ignore[arg-type]
        "retrain_share": round(share.get("retrain", 0.0), 4),
        "memory_items": int(total(snap, "remembrall_memory_items")),  # type: ignore[arg-type]
        "zoo_specialists": int(max(highest(snap, "remembrall_zoo_specialists", "stage").values(), default=0)),
        "grafana_url": grafana_url,
    }
