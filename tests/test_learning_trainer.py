"""Few-shot retraining with real gradient steps; early stopping; validation gate; Reptile base update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from remembrall.learning.reptile import BaseUpdater
from remembrall.learning.trainer import (
    SceneMonitor,
    TrainingRun,
    TrainSettings,
    accuracy,
    fit_head,
    grow_head,
)
from remembrall.models.heads import ClassifierHead

DIM = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(classes: list[str], n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(26, DIM)) * 2.0
    xs, ys = [], []
    for c in classes:
        k = ord(c) - ord("a")
        xs.append(centres[k] + shift + rng.normal(size=(n, DIM)))
        ys += [c] * n
    return np.concatenate(xs).astype(np.float32), ys


def _run_to_end(run: TrainingRun) -> None:
    while run.step_slice():
        pass


def test_warm_start_grows_a_new_class_and_is_accepted() -> None:
    x, y = _data(["a", "b"], 60, 0)
    serving = fit_head(x, y, steps=150)
    assert accuracy(serving, *_data(["a", "b"], 30, 1)) > 0.9
    xt, yt = _data(["a", "b", "c"], 40, 2)
    xv, yv = _data(["a", "b", "c"], 20, 3)
    grown = grow_head(serving, ["a", "b", "c"], DIM)
    assert torch.equal(grown(torch.as_tensor(x)).argmax(1), serving(torch.as_tensor(x)).argmax(1))
    run = TrainingRun(serving, xt, yt, xv, yv, TrainSettings(max_steps=200, seed=1))
    base_acc = run.baseline_accuracy
    assert base_acc < 0.7                                # serving head cannot say "c"
    _run_to_end(run)
    res = run.result()
    assert res.classes == ["a", "b", "c"] and res.accepted
    assert res.val_accuracy > 0.9 > base_acc
    assert res.steps <= 200 and res.stop_reason in ("plateau", "score", "max_steps")
    assert serving.classes == ["a", "b"]                 # the serving head was not modified


def test_plateau_stops_early_and_drift_stops_via_the_score() -> None:
    xt, yt = _data(["a", "b"], 50, 4)
    xv, yv = _data(["a", "b"], 20, 5)
    run = TrainingRun(None, xt, yt, xv, yv, TrainSettings(max_steps=1000, warmup_steps=10, patience=2))
    _run_to_end(run)
    assert run.stop_reason == "plateau" and run.steps < 200
    fixed = TrainingRun(None, xt, yt, xv, yv, TrainSettings(max_steps=300, warmup_steps=10, early_stopping=False))
    _run_to_end(fixed)
    assert fixed.stop_reason == "max_steps" and fixed.steps == 300
    # the scene keeps moving while accuracy cannot improve: S_t <= tau stops the run
    serving = fit_head(xt, yt, steps=200)
    drift = iter(np.linspace(0.0, 1.0, 1000))
    run = TrainingRun(serving, xt, yt, xv, yv, TrainSettings(max_steps=1000, warmup_steps=10, patience=2),
                      drift=lambda: float(next(drift)))
    _run_to_end(run)
    assert run.stop_reason == "score"
    assert run.history[-1]["score"] <= 0.0 and run.history[-1]["drift"] > 0


def test_worse_head_is_rejected_and_preemption_is_honoured() -> None:
    xt, yt = _data(["a", "b"], 50, 6)
    xv, yv = _data(["a", "b"], 20, 7)
    serving = fit_head(xt, yt, steps=150)
    flipped = ["b" if c == "a" else "a" for c in yt]     # a labeler gone wrong
    run = TrainingRun(serving, xt, flipped, xv, yv, TrainSettings(max_steps=100, lr=0.05))
    _run_to_end(run)
    res = run.result()
    assert not res.accepted and res.val_accuracy <= res.baseline_accuracy
    run = TrainingRun(serving, xt, yt, xv, yv, TrainSettings(max_steps=100))
    run.step_slice()
    run.stop("preempted")
    assert not run.step_slice() and run.result().stop_reason == "preempted"
    no_val = TrainingRun(None, xt, yt, xt[:0], [], TrainSettings(max_steps=10))
    _run_to_end(no_val)
    assert not no_val.result().accepted                  # nothing to validate on: never swapped in
    with pytest.raises(ValueError, match="nothing to train"):
        TrainingRun(None, xt[:0], [], xv, yv)


def test_scene_monitor_drift() -> None:
    mon = SceneMonitor(window=10)
    a, _ = _data(["a"], 10, 8)
    for v in a:
        mon.add(v)
    ref = mon.mean()
    assert mon.drift_from(ref) == pytest.approx(0.0, abs=1e-6)
    b, _ = _data(["z"], 10, 9)
    for v in b:
        mon.add(v)
    assert mon.drift_from(ref) > 0.3
    assert SceneMonitor().drift_from(ref) == 0.0


def test_reptile_step_grows_with_scene_similarity_and_aligns_classes() -> None:
    base = ClassifierHead(DIM, ["a", "b"])
    spec = ClassifierHead(DIM, ["b", "c"])
    scene, _ = _data(["a"], 20, 10)
    mean = scene.mean(0)
    up = BaseUpdater(eps_min=0.05, eps_max=0.5, ewma=1.0)
    new, eps0 = up.update(base, spec, mean)
    _, eps_same = up.update(new, spec, mean)                 # same scene as the history
    other, _ = _data(["q"], 20, 11)
    _, eps_other = up.update(new, spec, -other.mean(0))      # an unlike scene
    assert eps_same > eps0 > eps_other
    assert eps_same == pytest.approx(0.5, abs=1e-6)
    # the interpolation itself, row by class name
    up2 = BaseUpdater(eps_min=0.2, eps_max=0.2, ewma=1.0)
    new, eps = up2.update(base, spec, mean)
    nb, bb, sb = new.net.weight[1], base.net.weight[1], spec.net.weight[0]
    assert torch.allclose(nb, bb + 0.2 * (sb - bb), atol=1e-6)
    assert torch.equal(new.net.weight[0], base.net.weight[0])
    restored = BaseUpdater()
    restored.load_state(up.state())
    assert restored.eps == up.eps and np.allclose(restored.history, up.history)
    with pytest.raises(ValueError):
        up.update(ClassifierHead(DIM + 1, ["a"]), spec)
