"""Base-model update: Reptile-style interpolation toward the specialized head.

The specialized head chases the current scene; the base head should absorb what is durable
without being dragged around by a transient scene. After an accepted retraining run::

    θ_base ← θ_base + ε · (θ_spec − θ_base)

with a dynamic step ε: an EWMA of ``ε_min + (ε_max − ε_min) · sim``, where ``sim`` is the cosine
similarity of the current scene (mean embedding direction) to the base's history (an EWMA of the
scene means it has absorbed). A scene like the ones the base knows moves it a lot; an unusual
one barely. Heads with different class lists are aligned by class name: the base grows the
specialized head's new classes, and classes only the base knows are left untouched.

>>> import numpy as np, torch
>>> from remembrall.models.heads import ClassifierHead
>>> base, spec = ClassifierHead(4, ["a", "b"]), ClassifierHead(4, ["b", "c"])
>>> up = BaseUpdater(eps_min=0.1, eps_max=0.5, ewma=1.0)
>>> new, eps = up.update(base, spec, scene_mean=np.ones(4))
>>> new.classes, round(eps, 2)          # first scene: no history yet, the midpoint step
(['a', 'b', 'c'], 0.3)
>>> bool(torch.equal(new.net.weight[0], base.net.weight[0]))   # "a" untouched
True
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from remembrall.learning.trainer import grow_head
from remembrall.models.heads import ClassifierHead


def _last(head: ClassifierHead) -> torch.nn.Linear:
    return head.net[2] if head.hidden else head.net  # type: ignore[index,return-value]


class BaseUpdater:
    """Keeps the scene history of the base head and applies Reptile steps to it."""

    def __init__(self, eps_min: float = 0.05, eps_max: float = 0.5, ewma: float = 0.1) -> None:
        if not 0.0 <= eps_min <= eps_max <= 1.0:
            raise ValueError("need 0 <= eps_min <= eps_max <= 1")
        if not 0.0 < ewma <= 1.0:
            raise ValueError("ewma must be in (0, 1]")
        self.eps_min, self.eps_max, self.ewma = eps_min, eps_max, ewma
        self.history: np.ndarray | None = None
        self.eps = (eps_min + eps_max) / 2
        self.updates = 0

    def similarity(self, scene_mean: np.ndarray | None) -> float:
        """Cosine similarity of the scene to the base's history in [0, 1] (0.5 when unknown)."""
        if scene_mean is None or self.history is None:
            return 0.5
        a = np.asarray(scene_mean, np.float64).reshape(-1)
        b = self.history
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 or nb == 0:
            return 0.5
        return float(np.clip(a @ b / (na * nb), 0.0, 1.0))

    def step_size(self, scene_mean: np.ndarray | None) -> float:
        """The dynamic ε for this scene (updates the EWMA)."""
        target = self.eps_min + (self.eps_max - self.eps_min) * self.similarity(scene_mean)
        self.eps = (1 - self.ewma) * self.eps + self.ewma * target
        return self.eps

    @torch.no_grad()
    def update(
        self, base: ClassifierHead | None, spec: ClassifierHead, scene_mean: np.ndarray | None = None
    ) -> tuple[ClassifierHead, float]:
        """Return the new base head (a copy) and the ε used."""
        if base is None:  # no base yet: the first specialized head becomes it
            new = copy.deepcopy(spec)
            eps = 1.0
        else:
            if base.in_dim != spec.in_dim:
                raise ValueError(f"base head takes {base.in_dim}-d input, specialized {spec.in_dim}-d")
            if base.hidden != spec.hidden:
                raise ValueError(f"base head has hidden={base.hidden}, specialized hidden={spec.hidden}")
            eps = self.step_size(scene_mean)
            classes = list(base.classes) + [c for c in spec.classes if c not in base.classes]
            new = grow_head(copy.deepcopy(base), classes, base.in_dim)
            if base.hidden:
                for p_new, p_spec in zip(new.net[0].parameters(), spec.net[0].parameters(), strict=True):
                    p_new += eps * (p_spec - p_new)
            nl, sl = _last(new), _last(spec)
            for j, name in enumerate(spec.classes):
                i = classes.index(name)
                nl.weight[i] += eps * (sl.weight[j] - nl.weight[i])
                nl.bias[i] += eps * (sl.bias[j] - nl.bias[i])
        if scene_mean is not None:
            x = np.asarray(scene_mean, np.float64).reshape(-1)
            n = np.linalg.norm(x)
            if n > 0:
                x = x / n
                self.history = x if self.history is None else (1 - self.ewma) * self.history + self.ewma * x
        self.updates += 1
        new.eval()
        return new, float(eps)

    def state(self) -> dict[str, Any]:
        """JSON-able state (stored in the base checkpoint's metadata)."""
        return {"eps": self.eps, "updates": self.updates,
                "history": None if self.history is None else [float(v) for v in self.history]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.eps = float(state.get("eps", self.eps))
        self.updates = int(state.get("updates", 0))
        hist = state.get("history")
        self.history = None if hist is None else np.asarray(hist, np.float64)
