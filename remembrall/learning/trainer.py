"""Few-shot retraining of the specialized head, in pre-emptible slices, with early stopping.

A run trains a :class:`~remembrall.models.heads.ClassifierHead` on the replay memory's
embeddings, a few optimizer steps per :meth:`TrainingRun.step_slice` so an arbiter can take the
compute back between slices. After each slice it scores itself (DESIGN §5)::

    S_t = w1 · ΔA_t / ΔA_max  −  w2 · D_t / D_max

``ΔA_t`` is the held-out accuracy gained since the run began, ``D_t`` the scene drift since it
began (cosine distance between the mean recent embedding now and at the start). After a warm-up
the run stops when ``S_t ≤ τ`` for ``patience`` slices (training no longer pays for itself: the
scene moved on faster than accuracy improves), when ``S_t`` stops improving (plateau), at
``max_steps``, or when pre-empted. The best trained head seen is kept (ties go to the later one),
and it is *accepted* only if its held-out accuracy is not worse than the serving head's on the
same slice (and there is a held-out slice at all).

Labels naming classes the serving head lacks grow the head (rows aligned by class name; a stream
with no base head for its classes starts from the backbone alone: a fresh head).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> centres = rng.normal(size=(2, 16)) * 3
>>> x = np.concatenate([centres[i] + rng.normal(size=(40, 16)) for i in (0, 1)]).astype(np.float32)
>>> y = ["ant"] * 40 + ["bee"] * 40
>>> run = TrainingRun(None, x[::2], y[::2], x[1::2], y[1::2], TrainSettings(max_steps=60, seed=0))
>>> while run.step_slice():
...     pass
>>> res = run.result(); res.accepted, res.val_accuracy > 0.9, res.classes
(True, True, ['ant', 'bee'])
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from remembrall.config import RetrainConfig
from remembrall.models.heads import ClassifierHead


@dataclass
class TrainSettings:
    """Knobs of one retraining run (defaults match ``retrain`` in the config)."""

    lr: float = 0.003
    weight_decay: float = 1e-4
    batch_size: int = 64
    steps_per_slice: int = 5
    max_steps: int = 300
    warmup_steps: int = 20
    w1: float = 1.0
    w2: float = 1.0
    tau: float = 0.0
    delta_acc_max: float = 0.2
    drift_max: float = 0.3
    patience: int = 3
    min_improvement: float = 0.005
    #: False = train ``max_steps`` every run (a fixed-budget, Ekya-style baseline).
    early_stopping: bool = True
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: RetrainConfig) -> TrainSettings:
        """The run's knobs from the ``retrain`` section (the rest of it is the stage's cadence)."""
        return cls(lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                   steps_per_slice=cfg.steps_per_slice, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
                   w1=cfg.w1, w2=cfg.w2, tau=cfg.tau, delta_acc_max=cfg.delta_acc_max, drift_max=cfg.drift_max,
                   patience=cfg.patience, min_improvement=cfg.min_improvement,
                   early_stopping=cfg.early_stopping, seed=cfg.seed)


@dataclass
class TrainResult:
    head: ClassifierHead
    classes: list[str]
    val_accuracy: float
    baseline_accuracy: float
    accepted: bool
    steps: int
    stop_reason: str
    compute_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class SceneMonitor:
    """Recent L2-normalised embeddings; the scene is their mean direction."""

    def __init__(self, window: int = 64) -> None:
        self.recent: deque[np.ndarray] = deque(maxlen=window)

    def add(self, embedding: np.ndarray) -> None:
        x = np.asarray(embedding, np.float32).reshape(-1)
        n = float(np.linalg.norm(x))
        if n > 0 and np.isfinite(n):
            self.recent.append(x / n)

    def __len__(self) -> int:
        return len(self.recent)

    def mean(self) -> np.ndarray | None:
        if not self.recent:
            return None
        m = np.mean(np.stack(self.recent), axis=0)
        n = float(np.linalg.norm(m))
        return m / n if n > 0 else None

    def drift_from(self, reference: np.ndarray | None) -> float:
        """Cosine distance between the scene now and ``reference`` (0 when either is unknown)."""
        now = self.mean()
        if now is None or reference is None:
            return 0.0
        return float(np.clip(1.0 - float(now @ reference), 0.0, 2.0))


def grow_head(head: ClassifierHead | None, classes: list[str], in_dim: int) -> ClassifierHead:
    """A head over ``classes`` that keeps ``head``'s weights for the classes they share (by name).

    New classes start with zero weights and a bias below the existing ones, so adding a class does
    not change any prediction until training gives it evidence.
    """
    new = ClassifierHead(in_dim, classes, hidden=head.hidden if head is not None else 0)
    if head is None:
        return new
    if head.in_dim != in_dim:
        raise ValueError(f"head takes {head.in_dim}-d embeddings, the data is {in_dim}-d")
    if head.classes == classes:
        new.load_state_dict(head.state_dict())
        return new
    old_last = head.net if not head.hidden else head.net[2]
    new_last = new.net if not new.hidden else new.net[2]
    with torch.no_grad():
        if head.hidden:
            new.net[0].load_state_dict(head.net[0].state_dict())
        new_last.weight.zero_()
        floor = float(old_last.bias.min()) - 1.0
        new_last.bias.fill_(floor)
        for j, name in enumerate(classes):
            if name in head.classes:
                i = head.classes.index(name)
                new_last.weight[j] = old_last.weight[i]
                new_last.bias[j] = old_last.bias[i]
    return new


@torch.no_grad()
def accuracy(head: ClassifierHead | None, x: np.ndarray, labels: list[str]) -> float:
    """Top-1 accuracy by class *name*; labels the head does not know count as errors."""
    if head is None or len(labels) == 0:
        return 0.0
    head.eval()
    device = next(head.parameters()).device
    pred = head(torch.as_tensor(x, dtype=torch.float32, device=device)).argmax(1).cpu().numpy()
    names = np.array(head.classes, dtype=object)[pred]
    return float(np.mean([p == t for p, t in zip(names, labels, strict=True)]))


def run_classes(serving: ClassifierHead | None, y_train: list[str], y_val: list[str]) -> list[str]:
    """The classes a run's head has: the serving head's, then new ones in name order."""
    known = list(serving.classes) if serving is not None else []
    return known + sorted((set(y_train) | set(y_val)) - set(known))


class TrainingRun:
    """One retraining run; call :meth:`step_slice` while it returns True (and a lease is held)."""

    def __init__(
        self,
        serving: ClassifierHead | None,
        x_train: np.ndarray,
        y_train: list[str],
        x_val: np.ndarray,
        y_val: list[str],
        settings: TrainSettings | None = None,
        drift: Callable[[], float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.s = settings or TrainSettings()
        if len(y_train) == 0:
            raise ValueError("nothing to train on: the replay memory has no training samples")
        if x_train.ndim != 2 or x_train.shape[0] != len(y_train):
            raise ValueError("x_train must be N×D with one label per row")
        self.device = torch.device(device)
        dim = x_train.shape[1]
        self.classes = run_classes(serving, y_train, y_val)
        self.serving = serving
        self.baseline_accuracy = accuracy(serving, x_val, y_val) if serving is not None else 0.0
        self.head = grow_head(copy.deepcopy(serving) if serving is not None else None, self.classes, dim)
        self.head.to(self.device)
        index = {c: i for i, c in enumerate(self.classes)}
        self.x = torch.as_tensor(x_train, dtype=torch.float32, device=self.device)
        self.y = torch.as_tensor([index[c] for c in y_train], dtype=torch.long, device=self.device)
        self.x_val, self.y_val = x_val, list(y_val)
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=self.s.lr, weight_decay=self.s.weight_decay)
        self.gen = torch.Generator().manual_seed(self.s.seed)
        self.drift = drift or (lambda: 0.0)
        self.steps = 0
        self.start_accuracy = self._val_acc()
        self.best_accuracy = self.start_accuracy
        self.best_state = copy.deepcopy(self.head.state_dict())
        self.best_step = 0  # 0 = the starting head; a result is only useful if trained
        self.best_score = -float("inf")
        self.low_slices = 0
        self.flat_slices = 0
        self.stop_reason = ""
        self.compute_seconds = 0.0
        self.history: list[dict[str, float]] = []

    def _val_acc(self) -> float:
        if not self.y_val:
            return 0.0
        return accuracy(self.head, self.x_val, self.y_val)

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def stop(self, reason: str) -> None:
        """End the run early (e.g. ``"preempted"``); the best head so far is still validated."""
        if not self.stop_reason:
            self.stop_reason = reason

    def score(self, val_acc: float, drift: float) -> float:
        """``S_t = w1·ΔA_t/ΔA_max − w2·D_t/D_max``."""
        s = self.s
        return s.w1 * (val_acc - self.start_accuracy) / s.delta_acc_max - s.w2 * drift / s.drift_max

    def step_slice(self) -> bool:
        """Run up to ``steps_per_slice`` optimizer steps, evaluate, decide; True = keep going."""
        if self.done:
            return False
        t0 = time.perf_counter()
        self.head.train()
        n = self.x.shape[0]
        for _ in range(min(self.s.steps_per_slice, self.s.max_steps - self.steps)):
            idx = torch.randint(0, n, (min(self.s.batch_size, n),), generator=self.gen).to(self.device)
            loss = F.cross_entropy(self.head(self.x[idx]), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.steps += 1
        acc = self._val_acc()
        drift = float(self.drift())
        score = self.score(acc, drift)
        self.compute_seconds += time.perf_counter() - t0
        self.history.append({"step": self.steps, "val_accuracy": acc, "drift": drift, "score": score,
                             "loss": float(loss.detach())})
        if acc >= self.best_accuracy:  # ties go to the later (trained on more) state
            self.best_accuracy, self.best_step = acc, self.steps
            self.best_state = copy.deepcopy(self.head.state_dict())
        if self.steps >= self.s.max_steps:
            self.stop("max_steps")
        elif self.s.early_stopping and self.steps >= self.s.warmup_steps:
            self.low_slices = self.low_slices + 1 if score <= self.s.tau else 0
            if score > self.best_score + self.s.min_improvement * self.s.w1 / self.s.delta_acc_max:
                self.best_score, self.flat_slices = score, 0
            else:
                self.flat_slices += 1
            if self.low_slices >= self.s.patience:
                self.stop("score")
            elif self.flat_slices >= self.s.patience:
                self.stop("plateau")
        else:
            self.best_score = max(self.best_score, score)
        return not self.done

    def result(self) -> TrainResult:
        """The best head of the run and whether it may replace the serving one."""
        self.stop("finished")
        head = copy.deepcopy(self.head)
        head.load_state_dict(self.best_state)
        head.cpu().eval()
        accepted = bool(self.y_val) and self.best_step > 0 and self.best_accuracy >= self.baseline_accuracy
        return TrainResult(head, list(self.classes), self.best_accuracy, self.baseline_accuracy, accepted,
                           self.steps, self.stop_reason, self.compute_seconds, list(self.history))


def fit_head(
    x: np.ndarray,
    labels: list[str],
    classes: list[str] | None = None,
    steps: int = 500,
    lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
) -> ClassifierHead:
    """Train a head from scratch on labelled embeddings (``fit-base``: the user's own classes)."""
    classes = classes or sorted(set(labels))
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels name classes not in the class list: {unknown[:5]}")
    run = TrainingRun(None, x, labels, x[:0], [], TrainSettings(
        lr=lr, batch_size=batch_size, max_steps=steps, warmup_steps=steps, steps_per_slice=50, seed=seed))
    run.classes = list(classes)
    run.head = grow_head(None, run.classes, x.shape[1])
    index = {c: i for i, c in enumerate(classes)}
    run.y = torch.as_tensor([index[c] for c in labels], dtype=torch.long)
    run.opt = torch.optim.AdamW(run.head.parameters(), lr=lr, weight_decay=run.s.weight_decay)
    while run.step_slice():
        pass
    run.head.eval()
    return run.head
