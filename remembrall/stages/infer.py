"""The infer stage: batched embedding + classification for every stream, with hot-swapped heads.

Input ``in`` (PULL, fan-in from every source stage): ``frame`` and ``text`` messages and one
``eos`` per stream. Outputs: ``predictions`` (PUSH to the sink), optionally ``samples`` (PUSH to
the select stage: the embedding, class probabilities and the frame or text, so learning never
recomputes what inference already did), and ``load`` (PUB: backlog and busy share, for the
retraining arbiter). Control input ``model_ready`` (SUB): new heads, applied between batches.
The learning-loop messages are specified in remembrall/learning/PROTOCOL.md.

Frames and texts share this one stage through the modality adapters of
:mod:`remembrall.models.modality` (the vision backbone for frames, the MiniLM encoder for
texts); heads, entropy, samples and predictions are the same for both.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from remembrall.heap import release_free_heap
from remembrall.models.backbone import resolve_device
from remembrall.models.modality import Modality, base_head, kind_modality, open_modality
from remembrall.models.serving import HeadServer, SwapRequest
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message
from remembrall.pipeline.runtime import Stage
from remembrall.pipeline.stream_ends import StreamEnds
from remembrall.stages.preview import PreviewPublisher
from remembrall.stages.recall import MemoryKeeper, ZooRouter
from remembrall.stages.samples import BadSample, check_sample

log = logging.getLogger(__name__)

ACCURACY_WINDOW = 500
#: Longest infer keeps reading its input past the first refused message before it runs a batch.
REFUSED_DRAIN_S = 0.01


#: Fields of an input item that its prediction carries on to the sink (PROTOCOL.md §10).
DELIVERY_FIELDS = ("once", "redelivered")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of ``probs``."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)


def encoder_bytes(encoder: Any) -> int:
    """Bytes an encoder's weights take: its parameters and buffers (PyTorch), or its ONNX file."""
    net = getattr(encoder, "net", None) or getattr(encoder, "model", None)
    if isinstance(net, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))
    path = getattr(encoder, "path", None)
    return Path(path).stat().st_size if path is not None and Path(path).exists() else 0


class InferStage(Stage):
    type = "infer"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        icfg = self.cfg.infer
        # ONNX Runtime's backbone runs on the CPU provider: the heads live beside its embeddings
        self.device = torch.device("cpu") if icfg.backend == "onnxruntime" else resolve_device(icfg.device)
        if icfg.threads > 0:
            torch.set_num_threads(icfg.threads)
        names = list(spec.params.get("modalities", ["vision"]))
        self.modalities: dict[str, Modality] = {name: open_modality(name, self.cfg) for name in names}
        dims = {k: mod.dim for k, mod in self.modalities.items()}
        self.heads = HeadServer(self.device, dims, resident=self.cfg.zoo.resident)
        self._load_base_heads()
        self._warm_up()
        learn = self.cfg.learn
        self.memory = (MemoryKeeper(self.cfg, spec.run_dir, dims, self.device, self.name)
                       if learn and self.cfg.memory.enabled else None)
        self.router = ZooRouter(self.cfg, spec.run_dir, dims, self.heads, self.name) if learn and self.cfg.zoo.enabled else None
        self._consolidated: set[tuple[str, int]] = set()
        self.queue: deque[tuple[Message, Any]] = deque()  # (message, its payload)
        self.ends = StreamEnds(spec.streams, spec.finished_streams, self.cfg.supervisor.stage_idle_drain_s)
        self.topk = icfg.topk
        self._correct: dict[str, deque[bool]] = {}
        self._sent_status = 0.0
        self._busy_s = 0.0
        self._busy_since = time.monotonic()
        self._announced: set[tuple[str, str, int]] = set()
        # the oracle labeler reads labels from the stream: samples need no pixels then
        self._sample_images = self.cfg.label.labeler != "oracle"

    # ------------------------------------------------------------------ setup
    def _warm_up(self) -> None:
        """One full batch through the vision encoder before the first frame: the first real batch
        pays no kernel set-up. What the warm-up's activations leave in the heap is given back to
        the OS at once, so RSS starts from what is live (see remembrall/heap.py)."""
        vision = self.modalities.get("vision")
        if vision is None:
            return
        size = self.cfg.infer.image_size
        h, w = self.cfg.decode.height or size, self.cfg.decode.width or size
        t0 = time.monotonic()
        vision.embed([np.zeros((h, w, 3), np.uint8)] * self.cfg.infer.batch_size)
        log.info("%s: warmed up on a batch of %d in %.2f s", self.name, self.cfg.infer.batch_size,
                 time.monotonic() - t0)
        release_free_heap()

    def _load_base_heads(self) -> None:
        for modality in self.modalities:
            base = base_head(self.cfg, modality)
            if base is None:
                log.info("%s: no base %s head: cold start, predictions begin with the first trained head",
                         self.name, modality)
                continue
            head, meta, _ = base
            self.heads.set_base(modality, head, meta)
        for modality in self.modalities:
            m.MODEL_VERSION.labels(self.name, "").set(self.heads.version(modality))
        m.SWAP_SECONDS.labels(self.name, "")  # exported (empty) before the first swap

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        inp = self.socket("in")
        preds = self.socket("predictions")
        samples = self.socket("samples") if self.has("samples") else None
        ctrl = self.socket("model_ready") if self.has("model_ready") else None
        status = self.socket("load") if self.has("load") else None
        self._memory_in = self.socket("memory") if self.has("memory") else None
        self.preview = (PreviewPublisher(self.socket("preview", hwm=4, linger_ms=0), self.cfg.ui.live_fps)
                        if self.has("preview") else None)
        self._resume_current_model()
        self._device_gauges()
        poller = zmq.Poller()
        poller.register(inp, zmq.POLLIN)
        for sock in (ctrl, self._memory_in):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        log.info("%s: serving %s on %s", self.name, ", ".join(self.modalities), self.device)
        try:
            while True:
                batch = self._next_batch(poller, inp, ctrl)
                self._apply_swaps()
                if self.preview is not None:
                    self.preview.poll()
                if self.router is not None:
                    self.router.refresh()
                if batch:
                    t0 = time.monotonic()
                    self._process(batch, preds, samples)
                    self._busy_s += time.monotonic() - t0
                if status is not None:
                    self._publish_status(status)
                if self._finished():
                    break
        finally:
            self.heads.close()
            if self.memory is not None:
                self.memory.save_all()  # also when orphaned: local and atomic
        for stream in sorted(self.ends.streams):
            eos = Message("eos", stream=stream)
            self.send(preds, eos, timeout_ms=30_000)
            if samples is not None:
                self.send(samples, eos, timeout_ms=30_000)
        log.info("%s: all streams ended", self.name)
        return 0

    def _finished(self) -> bool:
        if self.queue:
            return False
        return self.stopping or self.ends.all_ended()

    def _pull(self, poller: zmq.Poller, inp: zmq.Socket, ctrl: zmq.Socket | None, timeout_ms: float) -> None:
        events = dict(poller.poll(max(0, int(timeout_ms))))
        if self._memory_in is not None and self._memory_in in events:
            self._take_labels(self._memory_in)
        if ctrl is not None and ctrl in events:
            while ctrl.poll(0, zmq.POLLIN):
                msg = self.recv_ready(ctrl)
                if msg is not None:
                    self._control(msg)
        if inp in events:
            cap = self.cfg.infer.queue
            refused, until = 0, time.monotonic() + REFUSED_DRAIN_S
            while len(self.queue) < cap:
                # a flood of refused messages (garbage): the I/O thread refills the socket's short
                # queue behind us; wait a moment for it rather than a whole batch's turn
                if not inp.poll(0, zmq.POLLIN) and (not refused or time.monotonic() >= until
                                                    or not inp.poll(1, zmq.POLLIN)):
                    break
                msg = self.recv_ready(inp)
                if msg is None:
                    refused += 1
                    continue
                if msg.kind == "eos":
                    self.ends.seen(msg)
                    if msg.get("error"):
                        log.error("%s: stream %s ended with an error: %s", self.name, msg.stream, msg.get("error"))
                elif kind_modality(msg.kind) in self.modalities:
                    item = self.modalities[kind_modality(msg.kind)].item(msg.arrays, msg.fields)
                    if item is None:
                        refused += 1
                        m.DROPPED.labels(self.name, msg.stream, "malformed_payload").inc()
                        log.warning("%s: dropped a %s message with an invalid payload", self.name, msg.kind)
                        continue
                    self.ends.seen(msg)
                    self.queue.append((msg, item))
                else:
                    refused += 1
                    m.DROPPED.labels(self.name, msg.stream, "unexpected_kind").inc()

    def _next_batch(self, poller: zmq.Poller, inp: zmq.Socket, ctrl: zmq.Socket | None) -> list[Message]:
        size = self.cfg.infer.batch_size
        max_wait = self.cfg.infer.max_wait_ms / 1000
        deadline = None
        while len(self.queue) < size and not self.stopping:
            if self.queue:
                deadline = deadline or time.monotonic() + max_wait
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.ends.all_ended():
                    break
                self._pull(poller, inp, ctrl, remaining * 1000)
            else:
                self._pull(poller, inp, ctrl, 100)
                if not self.queue:
                    break
        if self.stopping:  # take whatever already arrived, then stop
            self._pull(poller, inp, ctrl, 0)
        batch = [self.queue.popleft() for _ in range(min(size, len(self.queue)))]
        depth = Counter(msg.stream for msg, _ in self.queue)
        for stream in self.ends.streams:
            m.QUEUE_DEPTH.labels(self.name, stream).set(depth.get(stream, 0))
        return batch

    # ------------------------------------------------------------------ memory
    def _take_labels(self, sock: zmq.Socket) -> None:
        """Write every accepted label that arrived into the episodic memory: the next batch uses it."""
        for _ in range(1024):
            if not sock.poll(0, zmq.POLLIN):
                return
            msg = self.recv_ready(sock)
            if msg is None:
                continue
            try:
                view = check_sample(msg, need_label=True)
            except BadSample as exc:
                m.DROPPED.labels(self.name, msg.stream, exc.reason).inc()
                continue
            if view.modality not in self.modalities or view.embedding.size != self.modalities[view.modality].dim:
                m.DROPPED.labels(self.name, msg.stream, "bad_sample").inc()
                continue
            if self.memory is not None:
                try:
                    self.memory.write(view.modality, view.embedding, view.label, self.heads.serving(view.modality),
                                      msg.stream, msg.ts)
                except ValueError as exc:
                    m.DROPPED.labels(self.name, msg.stream, "bad_sample").inc()
                    log.warning("%s: a label the memory refused: %s", self.name, exc)
            if self.router is not None:
                self.router.on_label(view.modality, view.embedding, view.label)

    def _apply_swaps(self) -> None:
        for req, seconds in self.heads.apply_pending():
            m.SWAP_SECONDS.labels(self.name, "").observe(seconds)
            if req.activate:
                self.journal.write("swap", modality=req.modality, role=req.role, version=req.version,
                                   pause_ms=round(seconds * 1000, 3))
            m.MODEL_VERSION.labels(self.name, "").set(self.heads.version(req.modality))
            served = self.heads.serving(req.modality)
            key = (req.modality, req.version)
            if key in self._consolidated and self.memory is not None and served is not None \
                    and req.role == "specialized" and served.meta.version == req.version:
                self._consolidated.discard(key)  # prune only once the consolidated head serves
                self.memory.prune(req.modality, served)

    def _device_gauges(self) -> None:
        parts = {"backbone": sum(encoder_bytes(mod.encoder) for mod in self.modalities.values()),
                 "heads": 0, "memory": 0, "zoo_index": 0}
        for modality in self.modalities:
            heads = self.heads.device_bytes(modality)
            memory = self.memory.memories[modality].device_bytes() if self.memory is not None else 0
            m.DEVICE_MEMORY_BYTES.labels(self.name, modality).set(heads + memory)
            parts["heads"] += heads
            parts["memory"] += self.memory.memories[modality].nbytes() if self.memory is not None else 0
        if self.router is not None:
            parts["zoo_index"] = self.router.index_bytes()
        for part, nbytes in parts.items():
            m.MODEL_BYTES.labels(self.name, part).set(nbytes)

    # ------------------------------------------------------------------ control
    def _control(self, msg: Message) -> None:
        """Handle ``model_ready`` (see remembrall/learning/PROTOCOL.md §3), ``rollback`` and ``forget``."""
        if msg.kind == "model_ready":
            self._announce(msg.fields)
        elif msg.kind == "rollback":
            modality = msg.get("modality", "vision")
            if modality in self.modalities and self.heads.rollback(modality):
                m.MODEL_VERSION.labels(self.name, "").set(self.heads.version(modality))
        elif msg.kind == "forget" and isinstance(msg.get("forget_stream"), str):
            n = self.memory.forget(msg.get("forget_stream")) if self.memory is not None else 0
            log.info("%s: forgot %d memories of stream %s", self.name, n, msg.get("forget_stream"))

    def _announce(self, fields: dict[str, Any]) -> None:
        """Queue the specialized (and Reptile-updated base) head an announcement names."""
        wanted = [("specialized", fields.get("path"), fields.get("version")),
                  ("base", fields.get("base_path"), fields.get("base_version"))]
        modality = fields.get("modality", "auto")
        if modality != "auto" and modality not in self.modalities:
            return
        for role, path, version in wanted:
            if path is None and role == "base":
                continue
            if not isinstance(path, str) or not isinstance(version, int) or isinstance(version, bool):
                m.DROPPED.labels(self.name, "", "malformed_control").inc()
                log.warning("%s: ignored a model announcement without a valid %s path/version", self.name, role)
                return
            key = (role, path, version)
            if key in self._announced:
                continue  # retrain re-publishes the current model periodically
            self._announced.add(key)
            if role == "specialized" and fields.get("consolidated") and modality != "auto":
                self._consolidated.add((modality, version))
            if not Path(path).is_absolute() and self.spec.run_dir:
                path = str(Path(self.spec.run_dir) / path)
            self.heads.request_swap(SwapRequest(modality, role, path, version))

    def _resume_current_model(self) -> None:
        """A (re)started infer serves the models retrain last announced (models/current-{modality}.json)."""
        for modality in self.modalities:
            current = Path(self.spec.run_dir) / "models" / f"current-{modality}.json"
            if not current.is_file():
                continue
            try:
                fields = json.loads(current.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("%s: ignoring unreadable %s: %s", self.name, current, exc)
                continue
            if isinstance(fields, dict):
                log.info("%s: resuming the last announced %s model v%s", self.name, modality, fields.get("version"))
                self._announce({**fields, "modality": modality})

    def _publish_status(self, sock: zmq.Socket) -> None:
        now = time.monotonic()
        if now - self._sent_status < 0.25:
            return
        self._sent_status = now
        busy = self._busy_s / max(1e-6, now - self._busy_since)
        self._busy_s, self._busy_since = 0.0, now
        self._device_gauges()  # with the load report (4 Hz), not every batch
        fields: dict[str, Any] = {"event": "infer_load", "backlog": len(self.queue), "busy": round(min(1.0, busy), 4),
                                  "serving": {k: self.heads.version(k) for k in self.modalities}}
        if self.memory is not None:
            fields["memory"] = self.memory.fill()
        if self.router is not None:
            fields["recalls"] = [[k, v] for k, v in self.router.take_recalls()]
        msg = Message("control", stream="", fields=fields)
        self.send(sock, msg, block=False)

    # ------------------------------------------------------------------ work
    def _process(self, batch: list[tuple[Message, Any]], preds: zmq.Socket, samples: zmq.Socket | None) -> None:
        groups: dict[tuple[str, Hashable], list[tuple[Message, Any]]] = {}
        for msg, item in batch:
            modality = kind_modality(msg.kind)
            groups.setdefault((modality, self.modalities[modality].batch_key(item)), []).append((msg, item))
        for (modality, _), group in groups.items():
            t0 = time.perf_counter()
            mod = self.modalities[modality]
            msgs = [msg for msg, _ in group]
            emb = mod.embed([item for _, item in group])
            served = self.heads.serving(modality)
            emb_np = emb.cpu().numpy().astype(np.float32)
            head_np = None
            classes: list[str] = []
            if served is not None:
                with torch.no_grad():
                    head_np = torch.softmax(served.head(emb).float(), dim=1).cpu().numpy().astype(np.float32)
                classes = served.meta.classes
            probs_np, classes = (self.memory.blend(modality, emb_np, head_np, classes) if self.memory is not None
                                 else (head_np, classes))
            if probs_np is not None:
                ent = entropy(torch.from_numpy(probs_np)).numpy()
                k = min(self.topk, probs_np.shape[1])
                top_i = np.argsort(-probs_np, axis=1, kind="stable")[:, :k]
                top_p = np.take_along_axis(probs_np, top_i, axis=1)
            if self.router is not None:
                self.router.on_batch(modality, emb_np)
            per_item = (time.perf_counter() - t0) / len(msgs)
            for i, msg in enumerate(msgs):
                item_id = msg.get("id") or f"{msg.stream}:{msg.seq}"
                fields: dict[str, Any] = {"id": item_id, "model_version": -1, "modality": modality}
                if probs_np is not None:
                    fields["top"] = [[classes[j], round(float(p), 5)] for p, j in zip(top_p[i], top_i[i], strict=True)]
                    fields["pred"] = classes[int(top_i[i][0])]
                    fields["entropy"] = round(float(ent[i]), 5)
                    fields["model_version"] = served.meta.version if served is not None else 0
                else:
                    fields.update(top=[], pred=None, entropy=None)
                for key in DELIVERY_FIELDS:  # for the sink: write once; mark a broker's redelivery
                    if msg.get(key) is not None:
                        fields[key] = msg.get(key)
                label = msg.get("label")
                if label is not None:
                    fields["label"] = label
                    self._score(msg.stream, fields["pred"] == label)
                pred = Message("prediction", stream=msg.stream, seq=msg.seq, pts=msg.pts, ts=msg.ts, fields=fields)
                self.send(preds, pred)
                if self.preview is not None:
                    self.preview.offer(pred, group[i][1])
                if samples is not None:
                    sample_fields = dict(fields)  # "top" rides along: a person labelling sees the guesses
                    extra_arrays, extra_fields = mod.sample(group[i][1], with_pixels=self._sample_images)
                    arrays = [emb_np[i], head_np[i] if head_np is not None else np.zeros(0, np.float32), *extra_arrays]
                    sample_fields.update(extra_fields)
                    if served is not None:
                        sample_fields["classes_version"] = served.meta.version
                    sample = Message("sample", stream=msg.stream, seq=msg.seq, pts=msg.pts, ts=msg.ts,
                                     fields=sample_fields, arrays=arrays)
                    if not self.send(samples, sample, block=False):
                        m.DROPPED.labels(self.name, msg.stream, "samples_backpressure").inc()
                m.FRAMES.labels(self.name, msg.stream).inc()
                m.LATENCY.labels(self.name, msg.stream).observe(per_item)

    def _score(self, stream: str, correct: bool) -> None:
        window = self._correct.setdefault(stream, deque(maxlen=ACCURACY_WINDOW))
        window.append(bool(correct))
        m.ONLINE_ACCURACY.labels(self.name, stream).set(sum(window) / len(window))
