"""The retrain stage: few-shot retraining under a compute share, validation, hot-swap, base update.

Inputs: ``labelled`` (PULL) labelled samples from buffer (PROTOCOL.md §2), ``infer_load`` (SUB)
infer's backlog reports (§5), ``control`` (PULL) ``rollback`` commands (§4). Output:
``model_ready`` (PUB) announcements (§3), re-published every ``retrain.republish_s``.

A run starts when enough new labels arrived (cadence) or the scene drifted (mean-embedding
cosine distance since the last run), or on start-up when the buffer holds labels newer than the
serving head (a crash mid-training loses only that run: the buffer file is intact and training
resumes from it). It trains from a snapshot of the buffer file plus the labels forwarded since
the last save, one slice per lease from the :class:`ComputeArbiter`. Only a head whose held-out
accuracy is not worse than the serving head's is written (``models/head-v{N}.pt``, atomically),
re-read and checked, announced, and recorded in ``models/current.json`` for an infer that
restarts; then the base head takes a Reptile step toward it (``models/base-v{N}.pt``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from remembrall.io.sources import read_at_full_speed
from remembrall.learning.arbiter import ComputeArbiter
from remembrall.learning.episodic import EpisodicMemory, MemoryFileError
from remembrall.learning.replay import ReplayError, ReplayMemory
from remembrall.learning.reptile import BaseUpdater
from remembrall.learning.trainer import SceneMonitor, TrainingRun, TrainSettings
from remembrall.learning.training_set import RecentLabels, TrainingSet, training_set
from remembrall.learning.vectors import unit_rows
from remembrall.learning.zoo import SpecialistZoo, ZooError
from remembrall.models.heads import CheckpointError, ClassifierHead, HeadMeta, load_head
from remembrall.models.modality import base_head
from remembrall.models.registry import ModelRegistry
from remembrall.monitoring import metrics as m
from remembrall.pipeline.drops import DropCounter
from remembrall.pipeline.messages import Message
from remembrall.pipeline.rundir import modality_path
from remembrall.pipeline.runtime import Stage
from remembrall.pipeline.stream_ends import StreamEnds
from remembrall.priority import set_cpu_priority
from remembrall.stages.buffer import buffer_path
from remembrall.stages.fleet_zoo import FleetZoo
from remembrall.stages.remote_trainer import RemoteRun, RemoteTrainer
from remembrall.stages.samples import BadSample, check_sample

log = logging.getLogger(__name__)


#: Seconds after its PUB socket is bound before retrain takes control verbs it relays on it.
RELAY_AFTER_S = 1.0


@dataclass
class ModalityState:
    """Everything retrain tracks for one modality (vision or text)."""

    modality: str
    registry: ModelRegistry
    serving: ClassifierHead | None = None
    serving_meta: HeadMeta | None = None
    base: ClassifierHead | None = None
    base_meta: HeadMeta | None = None
    base_path: str | None = None
    updater: BaseUpdater = field(default_factory=BaseUpdater)
    monitor: SceneMonitor = field(default_factory=lambda: SceneMonitor(64))
    scene_at_last_run: np.ndarray | None = None
    labels_total: int = 0
    new_labels: int = 0
    resume: bool = False
    retry_at: float = 0.0
    recent: RecentLabels = field(default_factory=RecentLabels)
    run: TrainingRun | RemoteRun | None = None
    run_seen: int = 0
    run_started: float = 0.0
    #: the serving head's file when it is not the registry's (a specialist recalled from the zoo)
    serving_path: str | None = None
    zoo: SpecialistZoo | None = None
    streams: set[str] = field(default_factory=set)  # streams whose labels the training data holds
    run_scene: np.ndarray | None = None  # the newest labelled embeddings when the run started
    run_streams: list[str] = field(default_factory=list)
    run_consolidates: bool = False
    memory_fill: tuple[int, int] = (0, 0)  # infer's episodic memory: items, capacity
    last_label_at: float = field(default_factory=time.monotonic)
    sleep_requested: bool = False
    slept_at_labels: int = -1  # labels_total when the last consolidation started


class RetrainStage(Stage):
    type = "retrain"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.rcfg = self.cfg.retrain
        self.bcfg = self.cfg.buffer
        if self.rcfg.threads > 0:
            torch.set_num_threads(self.rcfg.threads)  # leave the other cores to inference
        self.device = self.rcfg.device
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.run_dir = Path(spec.run_dir or ".")
        self.models_dir = self.run_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.arbiter = ComputeArbiter(self.rcfg.share, self.rcfg.share_window_s, self.rcfg.max_backlog)
        self.settings = TrainSettings.from_config(self.rcfg)
        self.states: dict[str, ModalityState] = {}
        self.ends = StreamEnds(spec.streams, spec.finished_streams, self.cfg.supervisor.stage_idle_drain_s)
        self.drops = DropCounter(self.name)
        self.published: list[Message] = []  # what was announced (tests and logs read it)
        self.rejected_runs = 0
        self._denied_since: float | None = None
        self._last_publish = 0.0
        self._pub: zmq.Socket | None = None
        #: the fleet's shared zoo (``zoo.share``): what this pipeline learns goes out, the fleet's comes in
        self.fleet = (FleetZoo(self.cfg, self.name, spec.out_dir or str(self.run_dir), self.journal.write)
                      if self.cfg.zoo.enabled and self.cfg.zoo.share else None)
        #: ``retrain.remote``: the steps of each run go to a remembrall serve server
        self.remote = (RemoteTrainer(self.cfg, self.ctx, self.name, spec.out_dir or str(self.run_dir))
                       if self.rcfg.remote else None)
        for modality in ("vision", "text"):
            if buffer_path(self.bcfg, self.run_dir, modality).exists() or self._registry(modality).versions():
                self._state(modality)

    # ------------------------------------------------------------------ models
    def _registry(self, modality: str) -> ModelRegistry:
        return ModelRegistry(self.models_dir, modality, self.rcfg.keep_versions)

    def _state(self, modality: str) -> ModalityState:
        if modality in self.states:
            return self.states[modality]
        st = ModalityState(modality, self._registry(modality), updater=BaseUpdater(
            self.rcfg.reptile_eps_min, self.rcfg.reptile_eps_max, self.rcfg.reptile_ewma))
        self.states[modality] = st
        for outcome in ("accepted", "rejected"):  # exported at zero from the start
            m.CONSOLIDATIONS.labels(self.name, modality, outcome)
        # base: the newest Reptile-updated base, else what infer starts from
        newest = st.registry.newest_base()
        if newest is not None:
            st.base, st.base_meta, path = newest
            st.base_path = str(path)
            st.updater.load_state(st.base_meta.extra.get("reptile", {}))
        else:
            st.base, st.base_meta, st.base_path = base_head(self.cfg, modality) or (None, None, None)
        # specialized: what current.json names, else the newest loadable checkpoint
        serving = st.registry.open_serving()
        if serving is not None:
            st.serving, st.serving_meta = serving
        # labels in the buffer newer than the serving head: a run was lost (crash) or never made
        path = buffer_path(self.bcfg, self.run_dir, modality)
        if path.exists():
            try:
                mem = ReplayMemory.load(path)
                st.labels_total = mem.seen
                trained = int(st.serving_meta.extra.get("trained_seen", 0)) if st.serving_meta else 0
                st.resume = mem.seen > trained and len(mem) >= 1
            except ReplayError as exc:
                log.error("%s: %s (buffer will rebuild or fail it)", self.name, exc)
        if st.serving is not None:
            log.info("%s: resuming %s head v%d", self.name, modality, st.serving_meta.version)
        if self.cfg.zoo.enabled:
            st.zoo = self._zoo(modality)
        return st

    def _zoo(self, modality: str) -> SpecialistZoo | None:
        """The zoo of ``modality``, sized by the serving or base head; None until there is one."""
        z = self.cfg.zoo
        root = Path(z.path) if Path(z.path).is_absolute() else self.run_dir / z.path
        st = self.states[modality]
        head = st.serving or st.base
        if head is None:
            return None  # opened with the first trained head
        zoo = SpecialistZoo(root, modality, head.in_dim, z.prototypes, z.capacity)
        # a specialist imported from the fleet holds a version no registry file does
        st.registry.next_version = max(st.registry.next_version, max(zoo.versions(), default=0) + 1)
        return zoo

    def _memory_items(self, st: ModalityState, dim: int) -> tuple[np.ndarray, list[str]]:
        """What infer's episodic memory holds (its last atomic save), for a consolidation run."""
        path = modality_path(self.cfg.memory.path, self.run_dir, st.modality)
        if not path.exists():
            return np.zeros((0, dim), np.float32), []
        try:
            mem = EpisodicMemory(dim, capacity=self.cfg.memory.capacity).load(path)
        except MemoryFileError as exc:
            log.error("%s: not consolidating from the memory: %s", self.name, exc)
            return np.zeros((0, dim), np.float32), []
        return mem.stored(raw=True)

    # ------------------------------------------------------------------ announcements
    def _announcement(self, st: ModalityState, rollback: bool = False) -> Message | None:
        if st.serving is None or st.serving_meta is None:
            return None
        version = st.serving_meta.version
        path = st.serving_path or str(st.registry.path(version).resolve())
        fields: dict[str, Any] = {
            "version": version, "path": path,
            "classes": list(st.serving_meta.classes), "val_accuracy": st.serving_meta.val_accuracy,
            "rollback": rollback, "modality": st.modality,
        }
        if st.base_path and st.base_meta is not None:
            fields["base_path"] = str(Path(st.base_path).resolve())
            fields["base_version"] = int(st.base_meta.version)
        return Message("model_ready", stream="", fields=fields)

    def _publish(self, msg: Message, record: bool = True) -> None:
        # an orphan still writes an accepted head and current.json (local, atomic): the next
        # run serves it; only the announcement to an infer that is gone is skipped
        if self._pub is not None and not self.orphaned:
            self.send(self._pub, msg, block=False)
        if record:
            self.published.append(msg)

    def _republish(self) -> None:
        now = time.monotonic()
        if now - self._last_publish < self.rcfg.republish_s:
            return
        self._last_publish = now
        for st in self.states.values():
            msg = self._announcement(st)
            if msg is not None:
                self._publish(msg, record=False)

    # ------------------------------------------------------------------ inputs
    def on_labelled(self, msg: Message) -> None:
        try:
            view = check_sample(msg, need_label=True)
        except BadSample as exc:
            self.drops.drop(exc.reason, msg.stream, str(exc))
            return
        st = self._state(view.modality)
        st.monitor.add(view.embedding)
        st.recent.add(view.id, view.embedding, view.label, msg.get("split", "train"), msg.stream)
        st.labels_total += 1
        st.new_labels += 1
        st.streams.add(msg.stream)
        st.last_label_at = time.monotonic()
        m.FRAMES.labels(self.name, msg.stream).inc()

    def on_control(self, msg: Message) -> None:
        """``rollback``, ``sleep``, ``recall`` and ``forget`` (``remembrall ctl``)."""
        handlers = {"rollback": self._rollback, "sleep": self._sleep_command, "recall": self._recall_command,
                    "forget": self._forget_command}
        handler = handlers.get(msg.kind)
        if handler is None:
            self.drops.drop("unexpected_kind", msg.stream, f"kind {msg.kind!r} on the control input")
            return
        handler(msg)

    def _modalities(self, msg: Message) -> list[ModalityState]:
        wanted = msg.get("modality")
        return [st for k, st in self.states.items() if wanted in (None, "", k)]

    def _sleep_command(self, msg: Message) -> None:
        for st in self._modalities(msg):
            st.sleep_requested = True
            log.info("%s: consolidation of the %s memory requested", self.name, st.modality)

    def _recall_command(self, msg: Message) -> None:
        version = msg.get("version")
        for st in self._modalities(msg):
            if st.zoo is not None and isinstance(version, int) and st.zoo.get(version) is not None:
                self._serve_from_zoo(st, version, announce=True)
                return
        log.warning("%s: recall asked for v%s, which no zoo holds", self.name, version)

    def _forget_command(self, msg: Message) -> None:
        """Privacy: drop a stream's labels everywhere and the specialists trained only on it."""
        stream = msg.get("forget_stream")
        if not isinstance(stream, str) or not stream:
            return
        for st in self.states.values():
            if st.run is not None:
                st.run.stop("forget")
                st.run = None  # it was training on that stream's labels
            st.recent.forget_stream(stream)
            st.streams.discard(stream)
            removed = st.zoo.remove(st.zoo.trained_only_on(stream)) if st.zoo is not None else []
            if st.serving_meta is not None and st.serving_meta.extra.get("streams") == [stream]:
                removed.append(st.serving_meta.version)
                st.serving, st.serving_meta, st.serving_path = None, None, None
                st.registry.write_current(None)
            for version, path in st.registry.versions().items():
                try:
                    streams = load_head(path)[1].extra.get("streams")
                except CheckpointError:
                    continue
                if streams == [stream]:
                    path.unlink(missing_ok=True)
                    removed.append(version)
            st.registry.history = [v for v in st.registry.history if st.registry.path(v).exists()]
            log.warning("%s: forgot stream %s: %s specialists removed %s", self.name, stream, st.modality,
                        sorted(set(removed)))
            if st.serving is None:
                self._publish(Message("rollback", stream="", fields={"modality": st.modality, "version": 0,
                                                                     "to_version": 0}))
        # infer (memory) and buffer (replay) hear it on the announcement channel
        self._publish(Message("forget", stream="", fields={"forget_stream": stream}))

    def _serve_from_zoo(self, st: ModalityState, version: int, announce: bool) -> None:
        """Serve a zoo specialist (infer recalled it, or ``ctl recall``): training continues from it."""
        if st.zoo is None or (st.serving_meta is not None and st.serving_meta.version == version):
            return
        try:
            head, meta = st.zoo.open_head(version)
        except ZooError as exc:
            self.drops.drop("zoo_entry_refused", "", f"cannot recall v{version}: {exc}")
            return
        if st.run is not None:
            st.run.stop("recalled")
            st.run = None  # its baseline was the head being replaced
        entry = st.zoo.get(version)
        st.serving, st.serving_meta = head, meta
        st.serving_path = str((st.zoo.dir / entry.file).resolve()) if entry else None
        st.zoo.note_recall(version)
        announcement = self._announcement(st)
        st.registry.write_current(announcement.fields if announcement else None)
        if announce and announcement is not None:
            self._publish(announcement)
        log.info("%s: %s specialist v%d recalled from the zoo; retraining continues from it", self.name,
                 st.modality, version)
        self.journal.write("recall", modality=st.modality, version=version)

    def _rollback(self, msg: Message) -> None:
        modality = msg.get("modality", "vision")
        st = self.states.get(modality)
        if st is None or not st.registry.history:
            log.warning("%s: rollback asked, but no %s version to roll back from", self.name, modality)
            return
        if st.run is not None:
            st.run.stop("rollback")
            st.run = None  # its baseline was the head being rolled back
        target = msg.get("to_version")
        current, serving = st.registry.rollback(target if isinstance(target, int) else None)
        st.serving, st.serving_meta = serving if serving is not None else (None, None)
        st.serving_path = None
        announce = self._announcement(st, rollback=True)
        st.registry.write_current(announce.fields if announce else None)
        to = st.serving_meta.version if st.serving_meta else 0
        log.warning("%s: rolled %s back from v%d to %s", self.name, modality, current,
                    f"v{to}" if st.serving_meta else "the base head")
        self.journal.write("rollback", modality=modality, from_version=current, version=to)
        m.MODEL_VERSION.labels(self.name, "").set(to)
        fields = dict(announce.fields) if announce else {"modality": modality, "version": 0}
        fields["to_version"] = to
        self._publish(Message("rollback", stream="", fields=fields))

    # ------------------------------------------------------------------ training
    def _should_sleep(self, st: ModalityState) -> bool:
        """Consolidate the episodic memory: on command, when it is full enough, or on a quiet stream."""
        c = self.cfg.memory
        if not c.enabled:
            return False
        if st.sleep_requested:
            return True
        items, capacity = st.memory_fill
        new = st.labels_total - st.slept_at_labels  # labels since the last consolidation began
        if items < c.sleep_min_items or new <= 0:
            return False
        if capacity and items >= c.sleep_fill * capacity and new >= self.rcfg.every_labels:
            return True  # (a memory the head cannot absorb stays full: not a run per label)
        return c.sleep_quiet_s > 0 and time.monotonic() - st.last_label_at >= c.sleep_quiet_s

    def _should_start(self, st: ModalityState, draining: bool) -> bool:
        r = self.rcfg
        if st.run is not None or time.monotonic() < st.retry_at:
            return False
        if not draining and self._should_sleep(st) and st.labels_total >= 1:
            return True
        if st.labels_total < r.min_labels:
            return False
        if st.resume or st.new_labels >= r.every_labels:
            return True
        if draining:
            return st.new_labels > 0
        drift = st.monitor.drift_from(st.scene_at_last_run)
        if drift >= r.drift_trigger and st.new_labels >= max(4, r.every_labels // 4):
            self.journal.write("drift", modality=st.modality, drift=round(float(drift), 4))
            return True
        return False

    def _training_set(self, st: ModalityState) -> TrainingSet | None:
        path = buffer_path(self.bcfg, self.run_dir, st.modality)
        memory = None
        if path.exists():
            try:
                memory = ReplayMemory.load(path)
            except ReplayError as exc:
                log.error("%s: cannot train from the buffer: %s", self.name, exc)
                return None
        return training_set(memory, st.recent, st.labels_total)

    def _start(self, st: ModalityState) -> None:
        data = self._training_set(st)
        if data is None:
            st.retry_at = time.monotonic() + 2.0
            st.sleep_requested = False
            return
        xs, ys, xv, yv, seen = data.xs, data.ys, data.xv, data.yv, data.seen
        consolidate = self._should_sleep(st)
        if consolidate and len(ys):
            # sleep: the memory (what surprised the served model) joins the replay, so the head
            # learns what the memory had to correct; infer prunes it once this head serves
            mx, my = self._memory_items(st, xs.shape[1])
            if len(my) and len(yv):  # held-out labels sit in the memory too: keep them out of training
                keep = (unit_rows(mx) @ unit_rows(xv).T).max(axis=1) < 0.9999
                mx, my = mx[keep], [y for y, k in zip(my, keep, strict=True) if k]
            if len(my):
                xs, ys = np.concatenate([xs, mx]), list(ys) + list(my)
            st.sleep_requested, st.slept_at_labels = False, st.labels_total
            log.info("%s: consolidating %d %s memories into the head (with %d replay samples)", self.name,
                     len(my), st.modality, len(ys) - len(my))
        if not ys or len(yv) < self.rcfg.min_holdout:
            log.info("%s: %d training and %d held-out %s samples: waiting for more before retraining",
                     self.name, len(ys), len(yv), st.modality)
            st.retry_at = time.monotonic() + 2.0
            return
        start = st.serving if st.serving is not None else st.base
        if start is not None and start.in_dim != xs.shape[1]:
            log.error("%s: the %s head takes %d-d embeddings but samples are %d-d; not retraining",
                      self.name, st.modality, start.in_dim, xs.shape[1])
            st.retry_at = time.monotonic() + 30.0
            return
        ref = st.monitor.mean()
        drift = lambda: st.monitor.drift_from(ref)  # noqa: E731 - the run asks it after every slice
        st.run = (self.remote.run(st.modality, start, xs, ys, xv, yv, self.settings, drift, self.device)
                  if self.remote is not None
                  else TrainingRun(start, xs, ys, xv, yv, self.settings, drift=drift, device=self.device))
        st.run_seen, st.run_started = seen, time.monotonic()
        st.run_consolidates = consolidate
        st.run_scene = np.stack(st.monitor.recent) if len(st.monitor) else None
        st.run_streams = sorted(st.streams)
        st.scene_at_last_run = ref
        st.new_labels, st.resume = 0, False
        m.RETRAIN_RUNS.labels(self.name, "").inc()
        log.info("%s: training run started for %s v%d: %d train / %d held-out samples, %d classes, "
                 "serving accuracy %.3f", self.name, st.modality, st.registry.next_version, len(ys), len(yv),
                 len(st.run.classes), st.run.baseline_accuracy)

    def _step(self, st: ModalityState, draining: bool) -> bool:
        """Run one slice if the arbiter allows; True when compute was used."""
        run = st.run
        assert run is not None
        if isinstance(run, RemoteRun) and run.local is None:  # its steps run on the server
            run.step_slice(draining)
            return False
        if not draining and not self.arbiter.acquire():
            now = time.monotonic()
            if self.arbiter.last_denial == "backlog":
                self._denied_since = self._denied_since or now
                if now - self._denied_since >= self.rcfg.preempt_s:
                    run.stop("preempted")
            return False
        self._denied_since = None
        try:
            run.step_slice()
        finally:
            if not draining:
                self.arbiter.release()
        return True

    def _finish(self, st: ModalityState) -> None:
        run = st.run
        assert run is not None
        st.run = None
        res = run.result()
        m.RETRAIN_SECONDS.labels(self.name, "").observe(res.compute_seconds)
        last = res.history[-1]["val_accuracy"] if res.history else float("nan")
        summary = (f"{res.steps} steps, stop: {res.stop_reason}, held-out accuracy: best {res.val_accuracy:.3f}, "
                   f"last {last:.3f}, serving {res.baseline_accuracy:.3f}; {res.compute_seconds:.2f} s compute")
        if st.run_consolidates:
            m.CONSOLIDATIONS.labels(self.name, st.modality, "accepted" if res.accepted else "rejected").inc()
        self.journal.write("run", modality=st.modality, accepted=res.accepted, stop_reason=res.stop_reason,
                           steps=res.steps, compute_s=round(res.compute_seconds, 4),
                           val_accuracy=round(res.val_accuracy, 4), baseline_accuracy=round(res.baseline_accuracy, 4),
                           started=round(time.time() - (time.monotonic() - st.run_started), 3),
                           labels=st.run_seen, consolidation=st.run_consolidates,
                           version=st.registry.next_version if res.accepted else None)
        if not res.accepted:
            self.rejected_runs += 1
            log.warning("%s: %s run rejected (%s); the serving head stays", self.name, st.modality, summary)
            return
        parent = st.serving_meta.version if st.serving_meta else (st.base_meta.version if st.base_meta else None)
        meta = HeadMeta(classes=res.classes, in_dim=res.head.in_dim, parent_version=parent,
                        kind="specialized", val_accuracy=res.val_accuracy, created=time.time(),
                        extra={"stop_reason": res.stop_reason, "steps": res.steps, "modality": st.modality,
                               "baseline_accuracy": res.baseline_accuracy, "trained_seen": st.run_seen,
                               "streams": st.run_streams, "consolidated": st.run_consolidates})
        try:
            head, meta = st.registry.publish(res.head, meta)  # read back as infer will load it
        except CheckpointError as exc:
            log.error("%s: %s; it is not announced", self.name, exc)
            self.rejected_runs += 1
            return
        version = meta.version
        before = st.serving, st.serving_meta, st.serving_path
        st.serving, st.serving_meta, st.serving_path = head, meta, None
        try:
            if self.rcfg.reptile:
                self._update_base(st, head, version)
            self._add_to_zoo(st, head, meta)
            announce = self._announcement(st)
            assert announce is not None
            if st.run_consolidates:
                announce.fields["consolidated"] = True  # infer prunes its memory once this head serves
            st.registry.write_current(announce.fields)
        except OSError as exc:  # a full disk: what serves now stays; the next run tries again
            st.serving, st.serving_meta, st.serving_path = before
            self.rejected_runs += 1
            self.write_failed("checkpoint", exc)
            return
        self._publish(announce)
        self._last_publish = time.monotonic()
        m.MODEL_VERSION.labels(self.name, "").set(version)
        log.info("%s: %s head v%d accepted and announced (%s)", self.name, st.modality, version, summary)
        st.registry.prune()

    def _add_to_zoo(self, st: ModalityState, head: ClassifierHead, meta: HeadMeta) -> None:
        if not self.cfg.zoo.enabled or st.run_scene is None:
            return
        if st.zoo is None:
            st.zoo = self._zoo(st.modality)
        if st.zoo is None:
            return
        try:
            st.zoo.add(head, meta, st.run_scene, st.run_streams, labels_seen=st.run_seen)
        except (OSError, ZooError) as exc:
            log.error("%s: specialist v%d not kept in the zoo: %s", self.name, meta.version, exc)
            return
        m.ZOO_SIZE.labels(self.name, st.modality).set(len(st.zoo))
        if self.fleet is not None:
            self.fleet.publish(st.zoo, head, meta, st.modality, st.run_seen)

    def _sync_fleet(self) -> None:
        """Import the fleet's new specialists into each modality's zoo (opened once there is a head)."""
        assert self.fleet is not None
        zoos = {}
        for modality, st in self.states.items():
            if st.zoo is None:
                st.zoo = self._zoo(modality)
            meta = st.serving_meta or st.base_meta
            zoos[modality] = (st.zoo, st.registry, list(meta.classes) if meta is not None else None)
        if self.fleet.sync(zoos):
            for modality, st in self.states.items():
                if st.zoo is not None:
                    m.ZOO_SIZE.labels(self.name, modality).set(len(st.zoo))

    def on_infer_load(self, fields: dict[str, Any]) -> None:
        """Infer's load report: backlog for the arbiter, memory fill for sleep, zoo recalls to follow."""
        if isinstance(fields.get("backlog"), int):
            self.arbiter.report_load(fields["backlog"])
        memory = fields.get("memory")
        if isinstance(memory, dict):
            for modality, fill in memory.items():
                if modality in self.states and isinstance(fill, list) and len(fill) == 2:
                    self.states[modality].memory_fill = (int(fill[0]), int(fill[1]))
        for item in fields.get("recalls") or []:
            if isinstance(item, list) and len(item) == 2 and item[0] in self.states and isinstance(item[1], int):
                self._serve_from_zoo(self.states[item[0]], item[1], announce=False)

    def _update_base(self, st: ModalityState, spec: ClassifierHead, version: int) -> None:
        try:
            new_base, eps = st.updater.update(st.base, spec, st.monitor.mean())
        except ValueError as exc:
            log.error("%s: no base update: %s", self.name, exc)
            return
        meta = HeadMeta(classes=new_base.classes, in_dim=new_base.in_dim, version=version,
                        parent_version=st.base_meta.version if st.base_meta else None, kind="base",
                        created=time.time(), extra={"reptile": st.updater.state(), "eps": eps,
                                                    "modality": st.modality})
        try:
            path = st.registry.save_base(new_base, meta)
        except (OSError, ValueError) as exc:
            log.error("%s: cannot write base v%d: %s", self.name, version, exc)
            return
        st.base, st.base_meta, st.base_path = new_base, meta, str(path)
        log.info("%s: base head moved toward v%d with step %.3f", self.name, version, eps)

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        if self.device == "cpu":  # training takes CPU time inference does not want, never inference's
            policy = self.rcfg.cpu_priority
            if policy == "auto":  # SCHED_IDLE would starve training while a file keeps every core busy
                policy = "low" if any(read_at_full_speed(src) for src in self.cfg.sources) else "idle"
            log.info("%s: training on the CPU at %s priority", self.name, set_cpu_priority(policy))
        # exported at zero from the start: rate()/increase() then see the first run too
        m.RETRAIN_RUNS.labels(self.name, "")
        m.RETRAIN_SECONDS.labels(self.name, "")
        inp = self.socket("labelled")
        # control sockets: nothing worth waiting for at exit (a SUB whose peer is gone would
        # otherwise hold the context open for the whole linger period with its subscription)
        self._pub = self.socket("model_ready", linger_ms=0)
        # control verbs retrain relays on that PUB (forget) wait until its subscribers (infer, the
        # buffer) have reconnected to it: a restarted retrain would publish them to nobody
        relay_from = time.monotonic() + RELAY_AFTER_S
        load = self.socket("infer_load", linger_ms=0) if self.has("infer_load") else None
        ctrl = self.socket("control") if self.has("control") else None
        poller = zmq.Poller()
        for sock in (inp, load, ctrl, self.remote.link.socket if self.remote is not None else None):
            if sock is not None:  # (a remote run's result wakes the loop too)
                poller.register(sock, zmq.POLLIN)
        draining = False
        while True:
            # a run whose steps are on the server is nothing to do here: wait, do not spin
            busy = any(st.run is not None and not (isinstance(st.run, RemoteRun) and st.run.local is None)
                       for st in self.states.values())
            # idle: wait for input; training: wait only as long as the arbiter says a lease is away
            wait_s = min(0.05, self.arbiter.seconds_until_possible()) if busy and not draining else 0.1
            events = dict(poller.poll(0 if busy and draining else int(wait_s * 1000)))
            for sock in (load, ctrl, inp):
                if sock is None or sock not in events or (sock is ctrl and time.monotonic() < relay_from):
                    continue
                for _ in range(256):  # drain what is there, but keep training in between
                    if not sock.poll(0, zmq.POLLIN):
                        break
                    msg = self.recv_ready(sock)
                    if msg is None:
                        continue
                    if sock is load:
                        if msg.get("event") == "infer_load":
                            self.on_infer_load(msg.fields)
                    elif sock is ctrl:
                        self.on_control(msg)
                    else:
                        self.ends.seen(msg)
                        if msg.kind != "eos":
                            self.on_labelled(msg)
            draining = draining or self.stopping or self.ends.all_ended()
            for st in list(self.states.values()):
                if st.run is None and not self.stopping and self._should_start(st, draining):
                    self._start(st)
                if st.run is not None:
                    if self.stopping:
                        st.run.stop("stopped")
                    else:
                        self._step(st, draining)
                    if st.run.done:
                        self._finish(st)
            if self.remote is not None:
                self.remote.poll()  # answers, pings: the server's state is on the dashboard while idle too
            m.GPU_SHARE.labels(self.name, "").set(self.arbiter.share())
            if self.fleet is not None and not busy:
                self._sync_fleet()
            self._republish()
            idle = all(st.run is None and not self._should_start(st, True) for st in self.states.values())
            if draining and (idle or self.stopping):
                break
        log.info("%s: done; %d heads announced, %d runs rejected", self.name, len(self.published),
                 self.rejected_runs)
        if self.fleet is not None:
            self.fleet.close()
        if self.remote is not None:
            self.remote.close()
        return 0
