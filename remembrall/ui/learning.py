"""The Learning page's data and ``remembrall report``'s: how accuracy moved, which model served
when, what the labels were, how each retraining run went — read from the run's own files.

- ``OUT/events.jsonl`` (:mod:`remembrall.monitoring.journal`): labels, retraining runs, swaps,
  drift, rollbacks, recalls.
- ``OUT/predictions.jsonl`` (the sink): where a stream carries its own labels (an annotated
  manifest), the accuracy of every prediction over time.

Both files are read incrementally (from the last byte offset), so a page that refreshes every
few seconds costs only the new lines, and a cut last line is read once it is whole.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter, deque
from pathlib import Path
from typing import Any

from remembrall.monitoring.journal import FILE_NAME as EVENTS_FILE
from remembrall.monitoring.journal import read_events

#: a chart keeps at most this many points per series (older ones are thinned, every other kept)
MAX_POINTS = 1500


class Series:
    """A rolling-window accuracy series: one point every ``every`` outcomes, thinned past MAX_POINTS."""

    def __init__(self, window: int, every: int) -> None:
        self.window: deque[bool] = deque(maxlen=window)
        self.every = every
        self.points: list[list[float]] = []
        self.n = 0

    def add(self, ts: float, correct: bool) -> None:
        self.window.append(correct)
        self.n += 1
        if self.n % self.every == 0:
            self.points.append([round(ts, 3), round(sum(self.window) / len(self.window), 4)])
            if len(self.points) > MAX_POINTS:
                self.points = self.points[::2]
                self.every *= 2


class LearningLog:
    """Aggregates one run's learning history; :meth:`refresh` reads what was appended since."""

    def __init__(self, out_dir: str | os.PathLike[str], predictions: str = "predictions.jsonl") -> None:
        self.out_dir = Path(out_dir)
        self.events_path = self.out_dir / EVENTS_FILE
        self.predictions_path = self.out_dir / predictions
        self._events_offset = 0
        self._pred_offset = 0
        self._pred_inode: int | None = None
        self._lock = threading.Lock()
        self.truth: dict[str, Series] = {}  # stream -> accuracy of every prediction with a label
        self.labelled: dict[str, Series] = {}  # stream -> the model's accuracy on the samples people labelled
        self.labels_per_class: Counter[str] = Counter()
        self.label_sources: Counter[str] = Counter()
        self.runs: list[dict[str, Any]] = []
        self.swaps: list[dict[str, Any]] = []
        self.marks: list[dict[str, Any]] = []  # drift, rollback, recall
        self.predictions = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        with self._lock:
            events, self._events_offset = read_events(self.events_path, self._events_offset)
            for e in events:
                self._event(e)
            self._read_predictions()

    def _seen(self, ts: float) -> None:
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

    def _event(self, e: dict[str, Any]) -> None:
        kind, ts = e["event"], float(e["ts"])
        self._seen(ts)
        if kind == "label":
            label = str(e.get("label"))
            self.labels_per_class[label] += 1
            self.label_sources[str(e.get("source") or "?")] += 1
            if e.get("pred") is not None:
                stream = str(e.get("stream", ""))
                self.labelled.setdefault(stream, Series(50, 5)).add(ts, e.get("pred") == e.get("label"))
        elif kind == "run":
            keep = ("started", "accepted", "stop_reason", "steps", "compute_s", "val_accuracy",
                    "baseline_accuracy", "labels", "consolidation", "version", "modality")
            self.runs.append({"ended": ts, **{k: e.get(k) for k in keep}})
        elif kind == "swap":
            self.swaps.append({"ts": ts, "modality": e.get("modality"), "role": e.get("role"),
                               "version": e.get("version"), "pause_ms": e.get("pause_ms")})
        elif kind in ("drift", "rollback", "recall", "consolidation"):
            self.marks.append({"ts": ts, "event": kind, **{k: e.get(k) for k in ("modality", "version", "drift",
                                                                                "from_version")}})

    def _read_predictions(self) -> None:
        try:
            st = self.predictions_path.stat()
        except OSError:
            return
        if self._pred_inode != st.st_ino or st.st_size < self._pred_offset:  # a new run's file
            self._pred_inode, self._pred_offset = st.st_ino, 0
        try:
            with self.predictions_path.open("rb") as fh:
                fh.seek(self._pred_offset)
                data = fh.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self._pred_offset += end
        for raw in data[:end].splitlines():
            try:
                rec = json.loads(raw)
                ts = float(rec["ts"])
            except (ValueError, KeyError, TypeError):
                continue
            self.predictions += 1
            self._seen(ts)
            if rec.get("label") is not None and rec.get("pred") is not None:
                self.truth.setdefault(str(rec.get("stream", "")), Series(200, 20)).add(ts, rec["pred"] == rec["label"])

    # ------------------------------------------------------------------ results
    def serving(self) -> dict[str, dict[str, Any]]:
        """modality -> the newest swap infer reported (what it serves now)."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.swaps:
            out[str(s["modality"])] = s
        return out

    def summary(self) -> dict[str, Any]:
        """Everything the Learning page charts, JSON-ready."""
        with self._lock:
            runs = list(self.runs)
            accepted = [r for r in runs if r.get("accepted")]
            return {
                "span": [self.first_ts, self.last_ts],
                "predictions": self.predictions,
                "accuracy": {s: series.points for s, series in self.truth.items()},
                "labelled_accuracy": {s: series.points for s, series in self.labelled.items()},
                "labels_per_class": dict(self.labels_per_class.most_common()),
                "label_sources": dict(self.label_sources),
                "labels_used": sum(self.labels_per_class.values()),
                "runs": runs[-500:],
                "runs_total": len(runs),
                "runs_accepted": len(accepted),
                "stop_reasons": dict(Counter(str(r.get("stop_reason")) for r in runs)),
                "retrain_compute_s": round(sum(float(r.get("compute_s") or 0.0) for r in runs), 3),
                "swaps": self.swaps[-1000:],
                "marks": self.marks[-1000:],
                "serving": self.serving(),
            }
