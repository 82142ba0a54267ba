"""The model registry on real checkpoint files: publish, serve after a restart, roll back, prune."""

from __future__ import annotations

import json
import os

import pytest

from remembrall.models.heads import CheckpointError, ClassifierHead, HeadMeta
from remembrall.models.registry import ModelRegistry


def _publish(reg: ModelRegistry, classes: tuple[str, ...] = ("a", "b")) -> HeadMeta:
    return reg.publish(ClassifierHead(4, list(classes)), HeadMeta(list(classes), 4, kind="specialized"))[1]


def test_a_restart_serves_what_current_names_and_skips_what_does_not_load(tmp_path) -> None:
    reg = ModelRegistry(tmp_path, "vision")
    versions = [_publish(reg).version for _ in range(3)]
    assert versions == [1, 2, 3] and reg.history == [1, 2, 3]
    reg.write_current({"version": 2, "path": str(reg.path(2)), "classes": ["a", "b"]})
    assert "classes" not in json.loads((tmp_path / "current-vision.json").read_text())
    again = ModelRegistry(tmp_path, "vision")
    assert again.next_version == 4
    head, meta = again.open_serving()
    assert meta.version == 2 and again.history == [1, 2]
    reg.path(2).write_bytes(b"not a checkpoint")       # the current one is corrupt: the newest that loads
    third = ModelRegistry(tmp_path, "vision")
    assert third.open_serving()[1].version == 3 and third.history == [1, 2, 3]


def test_modalities_keep_apart_and_a_failed_check_uses_no_version(tmp_path) -> None:
    vision, text = ModelRegistry(tmp_path, "vision"), ModelRegistry(tmp_path, "text")
    _publish(vision)
    assert _publish(text, ("x", "y")).version == 1 and text.path(1).name == "text-head-v1.pt"
    assert sorted(vision.versions()) == [1] and sorted(text.versions()) == [1]
    text.write_current({"version": 1, "modality": "text"})
    assert vision.read_current() is None and text.read_current() == 1
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        tmp_path.chmod(0o500)
        try:
            with pytest.raises(CheckpointError, match="v2 failed its check"):
                _publish(vision)
        finally:
            tmp_path.chmod(0o700)
        assert vision.next_version == 2 and vision.history == [1]
    with pytest.raises(ValueError):             # a head whose metadata does not describe it
        vision.publish(ClassifierHead(4, ["a", "b"]), HeadMeta(["a", "c"], 4))
    assert not vision.path(2).exists() and vision.next_version == 2


def test_rollback_to_a_version_past_a_broken_one_and_to_the_base(tmp_path) -> None:
    reg = ModelRegistry(tmp_path, "vision")
    for _ in range(4):
        _publish(reg)
    reg.path(3).unlink()                           # gone from disk: skipped on the way back
    left, (head, meta) = reg.rollback()
    assert left == 4 and meta.version == 2 and reg.history == [1, 2]
    _publish(reg)                                   # v5
    left, (head, meta) = reg.rollback(to_version=1)
    assert left == 5 and meta.version == 1 and reg.history == [1]
    assert reg.rollback() == (1, None) and reg.history == []   # back to the base head
    with pytest.raises(ValueError, match="no vision version"):
        reg.rollback()


def test_prune_keeps_the_newest_of_each_kind(tmp_path) -> None:
    reg = ModelRegistry(tmp_path, "vision", keep_versions=2)
    for _ in range(4):
        meta = _publish(reg)
        reg.save_base(ClassifierHead(4, ["a", "b"]), HeadMeta(["a", "b"], 4, version=meta.version, kind="base"))
    reg.prune()
    assert sorted(reg.versions()) == [3, 4] and sorted(reg.versions("base")) == [3, 4]
    assert reg.history == [3, 4] and reg.newest_base()[1].version == 4
