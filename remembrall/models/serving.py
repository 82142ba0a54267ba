"""The heads the infer stage serves, and hot-swapping them without stalling the stream.

Per modality (vision, text) there is a *base* head (frozen for serving; updated only by the
Reptile/EWMA base update) and optionally a *specialized* head (what retraining produces).
Inference serves the specialized head when there is one, the base otherwise.

A new checkpoint is loaded, checked and moved to the device on a loader thread, off the hot
path; the serving loop only swaps a reference between two batches (:meth:`HeadServer.apply_pending`).
So a swap never drops a frame and delays none by more than one batch. The previous head is
kept so that a rollback is one message.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from remembrall.models.heads import CheckpointError, ClassifierHead, HeadMeta, load_head
from remembrall.priority import set_cpu_priority

log = logging.getLogger(__name__)


@dataclass
class ServedHead:
    head: ClassifierHead
    meta: HeadMeta
    path: str = ""


@dataclass
class SwapRequest:
    modality: str  # "vision" | "text" | "auto" (pick by the checkpoint's embedding dim)
    role: str  # "specialized" | "base"
    path: str
    version: int
    #: serve it once loaded; False only makes it resident (a zoo specialist routed to later)
    activate: bool = True


def _copy_to(head: torch.nn.Module, device: str) -> torch.nn.Module:
    return copy.deepcopy(head).to(device)


class HeadServer:
    """Base + specialized heads per modality, with off-path loading and between-batch swaps."""

    def __init__(self, device: torch.device, dims: dict[str, int], resident: int = 4) -> None:
        self.device = device
        #: specialized heads kept loaded on the device, per modality, least recently served first
        self.resident: dict[str, OrderedDict[int, ServedHead]] = {k: OrderedDict() for k in dims}
        self.resident_max = max(1, resident)
        self.dims = dict(dims)
        self.base: dict[str, ServedHead | None] = dict.fromkeys(dims)
        self.specialized: dict[str, ServedHead | None] = dict.fromkeys(dims)
        self.history: dict[str, list[ServedHead]] = {k: [] for k in dims}
        self._requests: queue.Queue[SwapRequest | None] = queue.Queue()
        self._ready: queue.Queue[tuple[SwapRequest, ServedHead]] = queue.Queue()
        self.rejected = 0
        self._thread = threading.Thread(target=self._load_loop, name="head-loader", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- serving side
    def set_base(self, modality: str, head: ClassifierHead | None, meta: HeadMeta | None) -> None:
        if head is None or meta is None:
            self.base[modality] = None
            return
        self._check_dim(modality, meta)
        self.base[modality] = ServedHead(head.to(self.device).eval(), meta)

    def serving(self, modality: str) -> ServedHead | None:
        return self.specialized.get(modality) or self.base.get(modality)

    def loaded_versions(self, modality: str, role: str) -> int | None:
        slot = self.specialized if role == "specialized" else self.base
        served = slot.get(modality)
        return served.meta.version if served else None

    def version(self, modality: str) -> int:
        served = self.serving(modality)
        return served.meta.version if served else -1

    def request_swap(self, req: SwapRequest) -> None:
        """Queue a checkpoint for loading; returns at once."""
        self._requests.put(req)

    def apply_pending(self) -> list[tuple[SwapRequest, float]]:
        """Swap in every head the loader finished; called between batches. Returns (req, seconds)."""
        done = []
        while True:
            try:
                req, served = self._ready.get_nowait()
            except queue.Empty:
                return done
            t0 = time.perf_counter()
            if req.role == "specialized":
                self._keep_resident(req.modality, served)
                if not req.activate:
                    continue
                self._serve_specialized(req.modality, served)
            else:
                self.base[req.modality] = served
            done.append((req, time.perf_counter() - t0))
            log.info("serving %s %s head v%d (%s)", req.modality, req.role, served.meta.version, req.path)

    def _serve_specialized(self, modality: str, served: ServedHead) -> None:
        previous = self.specialized.get(modality)
        if previous is not None and previous is not served:
            # rollback history waits in host memory: the device holds the resident heads only
            on_host = ServedHead(previous.head if self.device.type == "cpu" else _copy_to(previous.head, "cpu"),
                                 previous.meta, previous.path)
            self.history[modality].append(on_host)
            del self.history[modality][:-8]
        self.specialized[modality] = served
        self.resident[modality].move_to_end(served.meta.version)

    def _keep_resident(self, modality: str, served: ServedHead) -> None:
        cache = self.resident[modality]
        cache[served.meta.version] = served
        cache.move_to_end(served.meta.version)
        serving = self.specialized.get(modality)
        while len(cache) > self.resident_max:
            oldest = next(iter(cache))
            if serving is not None and cache[oldest] is serving:
                cache.move_to_end(oldest)
                oldest = next(iter(cache))
            del cache[oldest]

    def activate(self, modality: str, version: int) -> bool:
        """Serve a resident specialized head at once (a zoo recall); False when not resident."""
        served = self.resident.get(modality, {}).get(version)
        if served is None:
            return False
        if self.specialized.get(modality) is not served:
            self._serve_specialized(modality, served)
            log.info("serving %s specialized head v%d (recalled, resident)", modality, version)
        return True

    def resident_versions(self, modality: str) -> list[int]:
        return list(self.resident.get(modality, {}))

    def device_bytes(self, modality: str) -> int:
        """Bytes of head parameters this server holds on its device for ``modality``."""
        heads = {id(h): h for h in (*self.resident.get(modality, {}).values(), self.base.get(modality),
                                    self.specialized.get(modality)) if h}
        return sum(p.numel() * p.element_size() for h in heads.values() for p in h.head.parameters())

    def rollback(self, modality: str) -> bool:
        """Go back to the previous specialized head (or to the base if there is none)."""
        hist = self.history.get(modality) or []
        if hist:
            back = hist.pop()
            self.specialized[modality] = ServedHead(back.head.to(self.device), back.meta, back.path)
        elif self.specialized.get(modality) is not None:
            self.specialized[modality] = None
        else:
            return False
        log.warning("rolled back %s to v%d", modality, self.version(modality))
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the loader thread and wait for it (a process exiting under a running loader can abort)."""
        self._requests.put(None)
        self._thread.join(timeout_s)

    # ---------------------------------------------------------------- loader thread
    def _check_dim(self, modality: str, meta: HeadMeta) -> None:
        if modality not in self.dims:
            raise CheckpointError(f"no {modality!r} encoder in this pipeline")
        if meta.in_dim != self.dims[modality]:
            raise CheckpointError(
                f"head expects {meta.in_dim}-d embeddings but the {modality} encoder gives {self.dims[modality]}"
            )

    def _load_loop(self) -> None:
        # loading and checking a head must not take a core from inference in the middle of a batch
        set_cpu_priority("low")
        while True:
            req = self._requests.get()
            if req is None:
                return
            try:
                head, meta = load_head(req.path)
                if req.modality == "auto":
                    matches = [k for k, dim in self.dims.items() if dim == meta.in_dim]
                    if not matches:
                        raise CheckpointError(f"no encoder here gives {meta.in_dim}-d embeddings")
                    req.modality = matches[0]
                self._check_dim(req.modality, meta)
                head = head.to(self.device).eval()
                with torch.no_grad():  # touch the weights once so the first batch pays nothing
                    head(torch.zeros(1, meta.in_dim, device=self.device))
                self._ready.put((req, ServedHead(head, meta, req.path)))
            except CheckpointError as exc:
                self.rejected += 1
                log.error("not swapping in %s: %s", req.path, exc)
            except Exception:  # a loader bug must not kill serving
                self.rejected += 1
                log.exception("loading %s failed", req.path)
