"""The select stage: which inferred items are worth a label (embedding-guided or uniform sampling).

Input ``samples`` (PULL): ``sample`` messages from infer (PROTOCOL.md §1) and one ``eos`` per
stream. Output ``selected`` (PUSH, blocking: a file run loses nothing): the chosen samples,
unchanged but for ``selected_by``. One sampler per modality (vision and text embeddings differ in
size and geometry). Samples not chosen are dropped here silently — that is the job — and counted
only as processed; malformed ones are counted as drops.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import zmq

from remembrall.learning.sampling import Sampler, make_sampler
from remembrall.monitoring import metrics as m
from remembrall.pipeline.drops import DropCounter
from remembrall.pipeline.messages import Message
from remembrall.pipeline.runtime import Stage
from remembrall.pipeline.stream_ends import StreamEnds
from remembrall.stages.samples import BadSample, check_sample

log = logging.getLogger(__name__)


class SelectStage(Stage):
    type = "select"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.scfg = self.cfg.select
        self.samplers: dict[str, Sampler] = {}
        self.held: dict[str, OrderedDict[str, Message]] = {}
        self.ends = StreamEnds(spec.streams, spec.finished_streams, self.cfg.supervisor.stage_idle_drain_s)
        self.drops = DropCounter(self.name)
        self.selected = 0

    def _sampler(self, modality: str) -> Sampler:
        if modality not in self.samplers:
            self.samplers[modality] = make_sampler(self.scfg)
            self.held[modality] = OrderedDict()
        return self.samplers[modality]

    def _emit(self, out: zmq.Socket, modality: str, keys: list[Any]) -> None:
        held = self.held[modality]
        for key in keys:
            msg = held.pop(key, None)
            if msg is None:
                continue
            msg.fields["selected_by"] = self.scfg.sampler
            self.send(out, msg)
            self.selected += 1
            m.SAMPLES_SELECTED.labels(self.name, msg.stream).inc()
        # everything older than the sampler's undecided tail was decided "no"
        while len(held) > self.samplers[modality].pending:
            held.popitem(last=False)

    def handle(self, msg: Message, out: zmq.Socket) -> None:
        try:
            view = check_sample(msg)
        except BadSample as exc:
            self.drops.drop(exc.reason, msg.stream, str(exc))
            return
        sampler = self._sampler(view.modality)
        self.held[view.modality][view.id] = msg
        try:
            keys = sampler.offer(view.embedding, view.entropy, view.id)
        except ValueError as exc:  # e.g. an embedding size that changed mid-stream
            self.held[view.modality].pop(view.id, None)
            self.drops.drop("bad_sample", msg.stream, f"{view.id}: {exc}")
            return
        m.FRAMES.labels(self.name, msg.stream).inc()
        self._emit(out, view.modality, keys)

    def run(self) -> int:
        inp = self.socket("samples")
        out = self.socket("selected")
        while not self.stopping and not self.ends.all_ended():
            msg = self.recv(inp, timeout_ms=100)
            if msg is None:
                continue
            self.ends.seen(msg)
            if msg.kind == "eos":
                continue
            self.handle(msg, out)
        for modality, sampler in self.samplers.items():
            self._emit(out, modality, sampler.flush())
        for stream in sorted(self.ends.streams):
            self.send(out, Message("eos", stream=stream), timeout_ms=30_000)
        log.info("%s: selected %d samples", self.name, self.selected)
        return 0
