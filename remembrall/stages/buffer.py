"""The buffer stage: owns the replay memory on disk and feeds retrain.

Input ``labelled`` (PULL): labelled samples (PROTOCOL.md §2). Each goes into the replay memory
(one per modality: ``buffer.path`` for vision, ``…-text.npz`` beside it for text), which is saved
atomically every ``persist_every`` inserts or ``persist_interval_s`` seconds, and always before
``eos`` is forwarded or the process exits. Output ``labelled`` (PUSH): the same sample with
``split`` (``train``, ``holdout`` or ``skipped``) so retrain can merge labels newer than the file.

A corrupt or old-format buffer file is an error or, with ``buffer.on_corrupt: rebuild``, moved
aside with a warning (see :mod:`remembrall.learning.replay`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import zmq

from remembrall.learning.replay import ReplayMemory
from remembrall.monitoring import metrics as m
from remembrall.pipeline.drops import DropCounter
from remembrall.pipeline.messages import Message
from remembrall.pipeline.rundir import modality_path
from remembrall.pipeline.runtime import Stage
from remembrall.pipeline.stream_ends import StreamEnds
from remembrall.stages.samples import BadSample, check_sample

log = logging.getLogger(__name__)

#: How long after its last ack the buffer keeps repeating the newest acks (once a second).
ACK_REPEAT_FOR_S = 10.0
#: Labels that stopped coming this long ago are saved (and acknowledged) without waiting longer.
IDLE_SAVE_S = 0.25


def buffer_path(cfg: Any, run_dir: str | Path, modality: str = "vision") -> Path:
    """Where the replay memory of ``modality`` lives (relative paths are under the run dir)."""
    return modality_path(cfg.path, run_dir, modality)


class BufferStage(Stage):
    type = "buffer"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.bcfg = self.cfg.buffer
        self.memories: dict[str, ReplayMemory] = {}
        self.dirty: dict[str, int] = {}
        self.saved_at: dict[str, float] = {}
        self.ends = StreamEnds(spec.streams, spec.finished_streams, self.cfg.supervisor.stage_idle_drain_s)
        self.drops = DropCounter(self.name)
        #: sample ids added since their memory was last saved: acknowledged to the label stage
        #: once saved (at-least-once delivery of accepted labels, PROTOCOL.md §10)
        self.unsaved: dict[str, list[str]] = {}
        self.recent_acks: deque[str] = deque(maxlen=self.cfg.transport.window)
        self.acked_at = self.repeated_at = self.last_insert = 0.0
        for modality in ("vision", "text"):  # reload what a previous run (or a crash) left
            if buffer_path(self.bcfg, spec.run_dir, modality).exists():
                self._memory(modality)

    def _memory(self, modality: str) -> ReplayMemory:
        if modality not in self.memories:
            c = self.bcfg
            path = buffer_path(c, self.spec.run_dir, modality)
            mem = ReplayMemory.open(path, on_corrupt=c.on_corrupt, capacity=c.capacity, policy=c.policy,
                                    holdout_every=c.holdout_every, holdout_capacity=c.holdout_capacity, seed=c.seed)
            if len(mem) or mem.holdout_size:
                log.info("%s: reloaded %d+%d %s samples from %s", self.name, len(mem), mem.holdout_size,
                         modality, path)
            self.memories[modality] = mem
            self.dirty[modality] = 0
            self.saved_at[modality] = time.monotonic()
            m.BUFFER_SIZE.labels(self.name, "").set(len(mem))
        return self.memories[modality]

    def save(self, modality: str, force: bool = False) -> None:
        n = self.dirty.get(modality, 0)
        if not n:
            return
        now = time.monotonic()
        # also when labels paused: what waits to be acknowledged is saved now, not a whole interval later
        due = (n >= self.bcfg.persist_every or now - self.saved_at[modality] >= self.bcfg.persist_interval_s
               or (bool(self.unsaved.get(modality)) and now - self.last_insert >= IDLE_SAVE_S
                   and now - self.saved_at[modality] >= IDLE_SAVE_S))
        if force or due:
            self.saved_at[modality] = time.monotonic()  # a failed save waits as long to try again
            try:
                self.memories[modality].save(buffer_path(self.bcfg, self.spec.run_dir, modality))
            except OSError as exc:  # held in memory, unacknowledged: the label stage keeps them too
                self.write_failed("buffer", exc)
                return
            self.dirty[modality] = 0
            self.ack(self.unsaved.pop(modality, []))

    def ack(self, ids: list[str]) -> None:
        """Tell the label stage these samples are durable (saved, or refused for good)."""
        ids = [i for i in ids if isinstance(i, str)]
        if not ids or not self.has("acks") or self.orphaned:
            return
        self.recent_acks.extend(ids)
        self.acked_at = time.monotonic()
        self.send(self.socket("acks", linger_ms=0), Message("ack", fields={"ids": ids}), block=False)

    def repeat_acks(self) -> None:
        """Acks travel PUB/SUB: one sent while the label stage (re)connects is lost. Repeat the
        newest for a while after each, so a restarted peer learns them without a time-out."""
        now = time.monotonic()
        if self.recent_acks and now - self.acked_at < ACK_REPEAT_FOR_S and now - self.repeated_at >= 1.0:
            self.repeated_at = now
            self.send(self.socket("acks", linger_ms=0), Message("ack", fields={"ids": list(self.recent_acks)}),
                      block=False)

    def handle(self, msg: Message, out: zmq.Socket) -> None:
        try:
            view = check_sample(msg, need_label=True)
        except BadSample as exc:
            self.drops.drop(exc.reason, msg.stream, str(exc))
            self.ack([msg.get("id")])  # sending it again cannot help
            return
        mem = self._memory(view.modality)
        try:
            split = mem.add(view.id, view.embedding, view.label, msg.stream, msg.ts)
        except ValueError as exc:
            self.drops.drop("bad_sample", msg.stream, f"{view.id}: {exc}")
            self.ack([view.id])
            return
        if split == "duplicate":
            self.drops.drop("duplicate", msg.stream, f"{view.id} is already in the buffer")
            if view.id not in self.unsaved.get(view.modality, []):  # saved already
                self.ack([view.id])
            return
        self.unsaved.setdefault(view.modality, []).append(view.id)
        self.last_insert = time.monotonic()
        self.dirty[view.modality] += 1
        m.FRAMES.labels(self.name, msg.stream).inc()
        m.BUFFER_SIZE.labels(self.name, "").set(len(mem))
        self.save(view.modality)
        msg.fields["split"] = split
        self.journal.write("label", id=view.id, stream=msg.stream, modality=view.modality, label=view.label,
                           pred=msg.get("pred"), model_version=msg.get("model_version"),
                           source=msg.get("label_source"), split=split)
        forward = Message("sample", stream=msg.stream, seq=msg.seq, pts=msg.pts, ts=msg.ts,
                          fields=msg.fields, arrays=msg.arrays[:2])
        self.send(out, forward)
        if self.has("memory") and not self.send(self.socket("memory", linger_ms=0), forward, block=False):
            # infer is far behind: the label still trains the next head from the buffer
            self.drops.drop("memory_backpressure", msg.stream, f"{view.id} did not reach the episodic memory")

    def on_control(self, msg: Message) -> None:
        """``forget`` (relayed by retrain): remove a stream's samples and save at once."""
        stream = msg.get("forget_stream")
        if msg.kind != "forget" or not isinstance(stream, str):
            return
        for modality, mem in self.memories.items():
            n = mem.forget(stream)
            if n:
                self.dirty[modality] += n
                self.save(modality, force=True)
                m.BUFFER_SIZE.labels(self.name, "").set(len(mem))
            log.info("%s: forgot %d %s samples of stream %s", self.name, n, modality, stream)

    def run(self) -> int:
        inp = self.socket("labelled")
        out = self._out()
        ctrl = self.socket("control") if self.has("control") else None
        if self.has("acks"):  # bound now: the label stage's subscription is in place by the first ack
            self.socket("acks", linger_ms=0)
        poller = zmq.Poller()
        for sock in (inp, ctrl):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        try:
            while not self.stopping and not self.ends.all_ended():
                events = dict(poller.poll(100))
                if ctrl is not None and ctrl in events:
                    msg = self.recv_ready(ctrl)
                    if msg is not None:
                        self.on_control(msg)
                if inp in events:
                    msg = self.recv_ready(inp)
                    if msg is not None:
                        self.ends.seen(msg)
                        if msg.kind != "eos":
                            self.handle(msg, out)
                for modality in self.memories:
                    self.save(modality)
                if not self.orphaned:
                    self.repeat_acks()
        finally:
            for modality in self.memories:
                self.save(modality, force=True)
        for stream in sorted(self.ends.streams):
            self.send(out, Message("eos", stream=stream), timeout_ms=30_000)
        log.info("%s: buffer holds %s", self.name,
                 {k: (len(v), v.holdout_size) for k, v in self.memories.items()})
        return 0

    def _out(self) -> zmq.Socket:
        """The output role has the input's name, ``labelled`` (graph.py): open it by its output endpoint."""
        return self.socket("labelled_out", endpoint=self.spec.outputs["labelled"])
