"""``retrain.remote``: the training steps of a run go to a ``remembrall serve`` server (its GPU).

The retrain stage still decides when to train, builds the training and held-out sets, and
validates, keeps, announces and shares what comes back — only the optimizer steps move. A
:class:`RemoteRun` has :class:`~remembrall.learning.trainer.TrainingRun`'s interface, so the stage
treats both alike. The job (PROTOCOL.md §11) names every embedding by a content hash and carries in
full only those the server does not already hold from the last job (a run's training set is
mostly the previous run's), with the labels as indices into a class list, the starting head as
checkpoint bytes and the run's settings; scene drift, which the
early-stopping score weighs, follows while the run is out. The answer is the best head as
checkpoint bytes (read with ``weights_only``: no code from the wire) with the run's figures.

The edge keeps serving whatever happens there: a job unacknowledged for ``remote.timeout_s`` is
sent again, and again at once when the server restarted; after ``retrain.remote_fallback_s``
without the server the run trains here instead (0: wait for it).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import zmq

from remembrall.config import Config
from remembrall.learning.trainer import (
    TrainingRun,
    TrainResult,
    TrainSettings,
    accuracy,
    grow_head,
    run_classes,
)
from remembrall.models.heads import CheckpointError, ClassifierHead, HeadMeta, head_bytes, head_from_bytes
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message
from remembrall.pipeline.remote import ServerLink, encode_once

log = logging.getLogger(__name__)

DRIFT_EVERY_S = 1.0
#: Bounds a server puts on a job's settings (an allowed client is still not trusted with its CPU).
MAX_STEPS, MAX_BATCH = 100_000, 65_536


class JobError(ValueError):
    """A training job or result that cannot be used; the message says what is wrong."""


# ---------------------------------------------------------------------------- the wire
def row_hashes(x: np.ndarray) -> np.ndarray:
    """A 64-bit content hash per embedding row: the rows a server already holds are not sent again."""
    rows = np.ascontiguousarray(x, np.float32)
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") for r in rows],
                    np.uint64)


def job_message(run_id: str, modality: str, start: ClassifierHead | None, xs: np.ndarray, ys: list[str],
                xv: np.ndarray, yv: list[str], settings: TrainSettings, hashes: np.ndarray,
                known: set[int] | frozenset[int] = frozenset()) -> Message:
    """A training job (PROTOCOL.md §11): every row by its hash, and only the rows the server does
    not hold (``known``: the rows of this modality's last job it acknowledged) in full; labels as
    int32 indices into ``classes``; the starting head as checkpoint bytes."""
    classes = sorted(set(ys) | set(yv))
    index = {c: i for i, c in enumerate(classes)}
    rows = np.concatenate([np.asarray(xs, np.float32), np.asarray(xv, np.float32).reshape(len(yv), xs.shape[1])])
    new, seen = [], set()
    for i, h in enumerate(hashes.tolist()):
        if h not in known and h not in seen:
            new.append(i)
            seen.add(h)
    blob = head_bytes(start, HeadMeta(list(start.classes), start.in_dim)) if start is not None else b""
    return Message("control", fields={"op": "train", "run": run_id, "modality": modality, "classes": classes,
                                      "settings": asdict(settings), "train_rows": len(ys), "dim": int(xs.shape[1])},
                   arrays=[rows[new], hashes[new], hashes, np.array([index[y] for y in [*ys, *yv]], np.int32),
                           np.frombuffer(blob, np.uint8)])


@dataclass
class Job:
    """A parsed training job, and the rows the server keeps for the next one of its modality."""

    start: ClassifierHead | None
    xs: np.ndarray
    ys: list[str]
    xv: np.ndarray
    yv: list[str]
    settings: TrainSettings
    rows: dict[int, np.ndarray]


class MissingRows(JobError):
    """The job names rows the server does not hold (it restarted, or forgot them): send them all."""


def parse_job(msg: Message, held: dict[int, np.ndarray] | None = None) -> Job:
    """The server's side: check every part of a job, fill in the rows it holds (raises
    :class:`JobError`; :class:`MissingRows` when it lacks rows the job does not carry)."""
    classes, raw, n_train, dim = (msg.get(k) for k in ("classes", "settings", "train_rows", "dim"))
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or not classes:
        raise JobError("classes must be a non-empty list of names")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n_train, dim)) or dim > 65536:
        raise JobError("train_rows and dim must be positive integers")
    if len(msg.arrays) != 5:
        raise JobError(f"expected 5 arrays (new rows, their hashes, row hashes, labels, head), got {len(msg.arrays)}")
    new, new_hashes, hashes, labels, blob = msg.arrays
    if new.dtype != np.float32 or new.ndim != 2 or new.shape[1] != dim or new_hashes.dtype != np.uint64 \
            or new_hashes.shape != (len(new),):
        raise JobError(f"new rows must be K×{dim} float32 with K uint64 hashes, got {new.dtype} {new.shape}")
    if hashes.dtype != np.uint64 or hashes.ndim != 1 or not n_train <= len(hashes) or labels.dtype != np.int32 \
            or labels.shape != hashes.shape or not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
        raise JobError("row hashes and labels must be one uint64 and one int32 class index per row")
    if not np.isfinite(new).all():
        raise JobError("embeddings are not finite")
    pool = dict(held or {})
    pool.update(zip(new_hashes.tolist(), new, strict=True))
    missing = [h for h in hashes.tolist() if h not in pool]
    if missing:
        raise MissingRows(f"{len(missing)} of {len(hashes)} rows are not held here")
    rows = np.stack([pool[h] for h in hashes.tolist()])
    names = [classes[i] for i in labels]
    settings = _settings(raw)
    start = None
    if len(blob):
        try:
            start, _ = head_from_bytes(bytes(blob), "the job's starting head")
        except CheckpointError as exc:
            raise JobError(str(exc)) from None
        if start.in_dim != dim:
            raise JobError(f"the starting head takes {start.in_dim}-d embeddings, the job's are {dim}-d")
    return Job(start, rows[:n_train], names[:n_train], rows[n_train:], names[n_train:], settings,
               {h: pool[h] for h in hashes.tolist()})


def _settings(raw: object) -> TrainSettings:
    """A job's settings, checked and bounded."""
    known = {f.name for f in fields(TrainSettings)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise JobError(f"settings must be a map of {sorted(known)}")
    try:
        settings = TrainSettings(**raw)
    except TypeError as exc:
        raise JobError(f"settings: {exc}") from None
    for key, value in asdict(settings).items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (isinstance(value, bool) if key == "early_stopping" else number):
            raise JobError(f"settings.{key}: {value!r} is not a finite number")
    settings.max_steps = min(int(settings.max_steps), MAX_STEPS)
    settings.batch_size = max(1, min(int(settings.batch_size), MAX_BATCH))
    settings.steps_per_slice = max(1, min(int(settings.steps_per_slice), 1000))
    return settings


def result_message(run_id: str, res: TrainResult) -> Message:
    """The server's answer: the run's figures and its best head as checkpoint bytes."""
    blob = head_bytes(res.head, HeadMeta(list(res.classes), res.head.in_dim))
    return Message("control", fields={
        "op": "trained", "run": run_id, "classes": list(res.classes), "val_accuracy": res.val_accuracy,
        "baseline_accuracy": res.baseline_accuracy, "accepted": res.accepted, "steps": res.steps,
        "stop_reason": res.stop_reason, "compute_seconds": res.compute_seconds, "history": res.history[-200:]},
        arrays=[np.frombuffer(blob, np.uint8)])


# ---------------------------------------------------------------------------- the edge
class RemoteTrainer:
    """The retrain stage's link to its server, and the runs it has out there."""

    def __init__(self, cfg: Config, ctx: zmq.Context, stage: str, out_dir: str = ".") -> None:
        self.cfg, self.stage = cfg, stage
        self.link = ServerLink(ctx, cfg.retrain.remote, cfg.remote, stage, out_dir, "retrain", "training server",
                               cfg.transport.max_message_bytes)
        self.link.on_restart = self._server_restarted
        self.runs: dict[str, RemoteRun] = {}
        #: per modality, the rows the server holds (those of the last job it acknowledged)
        self.known: dict[str, set[int]] = {}

    def run(self, modality: str, start: ClassifierHead | None, xs: np.ndarray, ys: list[str], xv: np.ndarray,
            yv: list[str], settings: TrainSettings, drift: Callable[[], float], device: str) -> RemoteRun:
        run = RemoteRun(self, modality, start, xs, ys, xv, yv, settings, drift, device)
        self.runs[run.id] = run
        return run

    def poll(self) -> None:
        for msg in self.link.receive():
            run = self.runs.get(msg.get("run")) if msg.kind == "control" else None
            if run is not None:
                run.on_message(msg)
        self.link.keep_alive(len(self.runs))
        m.REMOTE_PENDING.labels(self.stage).set(sum(1 for r in self.runs.values() if r.out))

    def forget(self, run: RemoteRun) -> None:
        self.runs.pop(run.id, None)

    def _server_restarted(self) -> None:
        self.known.clear()  # its rows went with it
        for run in self.runs.values():
            if run.out and run.sent_at is not None:
                run.sent_at, run.acked = None, False
                m.REMOTE_RESENT.labels(self.stage, "restarted").inc()

    def close(self) -> None:
        for run in list(self.runs.values()):
            run.stop("stopped")
        m.REMOTE_PENDING.labels(self.stage).set(0)
        self.link.close()


class RemoteRun:
    """A training run whose steps run on the server (or here, once it was gone too long)."""

    def __init__(self, trainer: RemoteTrainer, modality: str, start: ClassifierHead | None, xs: np.ndarray,
                 ys: list[str], xv: np.ndarray, yv: list[str], settings: TrainSettings, drift: Callable[[], float],
                 device: str) -> None:
        self.trainer, self.modality, self.start = trainer, modality, start
        self.settings, self.drift, self.device = settings, drift, device
        self.data = (xs, list(ys), xv, list(yv))
        self.classes = run_classes(start, ys, yv)
        self.baseline_accuracy = accuracy(start, xv, list(yv)) if start is not None else 0.0
        self.id = uuid.uuid4().hex
        self.hashes = row_hashes(np.concatenate([xs, np.asarray(xv, np.float32).reshape(len(yv), xs.shape[1])]))
        self.sent_at: float | None = None
        self.acked = False
        self.stop_reason = ""
        self.local: TrainingRun | None = None
        self._result: TrainResult | None = None
        self._drift_at = 0.0

    @property
    def out(self) -> bool:
        """The server has (or should have) it: not finished, not trained here."""
        return self.local is None and not self.done

    @property
    def done(self) -> bool:
        return self.local.done if self.local is not None else bool(self.stop_reason)

    def stop(self, reason: str) -> None:
        if self.local is not None:
            self.local.stop(reason)
            return
        if not self.stop_reason:
            self.stop_reason = reason
            if self.sent_at is not None:
                self.trainer.link.send(encode_once(Message("control", fields={"op": "cancel", "run": self.id})))
            self.trainer.forget(self)

    def step_slice(self, draining: bool = False) -> bool:
        """Exchange with the server (or take a local slice); True while the run goes on. While the
        pipeline drains, a server silent for ``remote.timeout_s`` is not waited for any longer."""
        if self.local is not None:
            return self.local.step_slice()
        trainer = self.trainer
        trainer.poll()
        if self.done:
            return False
        now = time.monotonic()
        link = trainer.link
        if not self.acked and (self.sent_at is None or now - self.sent_at >= trainer.cfg.remote.timeout_s):
            if self.sent_at is not None:
                m.REMOTE_RESENT.labels(trainer.stage, "timeout").inc()
            self.sent_at = now if link.send(self._wire()) else None
        elif self.acked and now - self._drift_at >= DRIFT_EVERY_S:
            self._drift_at = now
            link.send(encode_once(Message("control", fields={"op": "drift", "run": self.id,
                                                             "value": float(self.drift())})))
        fallback = trainer.cfg.retrain.remote_fallback_s or math.inf
        if draining:
            fallback = min(fallback, trainer.cfg.remote.timeout_s)
        if link.down_for >= fallback:
            self._train_here(f"the training server has not answered for {link.down_for:.0f} s")
        return not self.done

    def on_message(self, msg: Message) -> None:
        op = msg.get("op")
        if op == "train_queued":
            self.acked = True
            self.trainer.known[self.modality] = set(self.hashes.tolist())
        elif op == "train_failed" and msg.get("missing"):  # it lost rows we thought it held: all again
            self.trainer.known.pop(self.modality, None)
            self.sent_at = None
            m.REMOTE_RESENT.labels(self.trainer.stage, "missing_rows").inc()
        elif op == "train_failed":
            self._train_here(f"the training server could not take the run: {msg.get('error')}")
        elif op == "trained" and not self.done:
            try:
                self._result = self._read_result(msg)
            except JobError as exc:
                self._train_here(f"the training server's result is unusable: {exc}")
                return
            self.stop_reason = self._result.stop_reason or "finished"
            self.trainer.forget(self)

    def result(self) -> TrainResult:
        if self.local is not None:
            return self.local.result()
        self.stop("finished")
        if self._result is not None:
            return self._result
        # stopped before the server answered (the stage stops, a rollback, a forget): nothing to keep
        head = grow_head(copy.deepcopy(self.start) if self.start is not None else None, self.classes,
                         self.data[0].shape[1])
        return TrainResult(head, list(self.classes), 0.0, self.baseline_accuracy, False, 0, self.stop_reason, 0.0)

    def _wire(self) -> list[bytes]:
        """The job, carrying in full only the rows the server does not hold."""
        xs, ys, xv, yv = self.data
        known = self.trainer.known.get(self.modality, set())
        return encode_once(job_message(self.id, self.modality, self.start, xs, ys, xv, yv, self.settings,
                                       self.hashes, known))

    def _read_result(self, msg: Message) -> TrainResult:
        if len(msg.arrays) != 1 or msg.arrays[0].dtype != np.uint8:
            raise JobError("no head in the result")
        try:
            head, _ = head_from_bytes(bytes(msg.arrays[0]), "the training server's head")
        except CheckpointError as exc:
            raise JobError(str(exc)) from None
        if head.classes != self.classes or head.in_dim != self.data[0].shape[1]:
            raise JobError(f"its head has classes {head.classes[:5]}… and {head.in_dim}-d input, the run "
                           f"{self.classes[:5]}… and {self.data[0].shape[1]}-d")
        f = msg.fields

        def number(key: str) -> float:
            v = f.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise JobError(f"{key} is not a number")
            return float(v)

        history = [h for h in f.get("history") or [] if isinstance(h, dict)]
        # accepted is decided here, on this pipeline's held-out set, never taken from the wire
        val = accuracy(head, self.data[2], self.data[3]) if self.data[3] else 0.0
        trained = int(number("steps")) > 0
        return TrainResult(head, list(self.classes), val, self.baseline_accuracy,
                           bool(self.data[3]) and trained and val >= self.baseline_accuracy, int(number("steps")),
                           str(f.get("stop_reason") or "finished")[:64], number("compute_seconds"), history)

    def _train_here(self, why: str) -> None:
        if self.local is not None:
            return
        log.warning("%s: %s; training this run here", self.trainer.stage, why)
        if self.sent_at is not None:
            self.trainer.link.send(encode_once(Message("control", fields={"op": "cancel", "run": self.id})))
        self.trainer.forget(self)
        xs, ys, xv, yv = self.data
        self.local = TrainingRun(self.start, xs, ys, xv, yv, self.settings, drift=self.drift, device=self.device)

