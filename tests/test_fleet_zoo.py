"""A zoo shared by a fleet: specialists published by one pipeline, imported by another when they
fit, refused (counted, said why) when they do not; through a shared folder and a real Redis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from remembrall.config import load_config
from remembrall.learning.fleet import SharedSpecialist, encode_shared
from remembrall.learning.zoo import SpecialistZoo
from remembrall.models.heads import ClassifierHead, HeadMeta
from remembrall.models.registry import ModelRegistry
from remembrall.stages.fleet_zoo import FleetZoo
from tests.broker_servers import Redis

DIM = 16


def _cfg(share: str, origin: str, fleet: str = "city"):
    return load_config(None, {"zoo.share": share, "zoo.origin": origin, "zoo.fleet": fleet, "zoo.share_every_s": 0.1})


class Camera:
    """One pipeline's side: its zoo, its registry and its FleetZoo."""

    def __init__(self, tmp: Path, name: str, share: str, classes: list[str] | None, dim: int = DIM,
                 fleet: str = "city") -> None:
        self.zoo = SpecialistZoo(tmp / name / "zoo", "vision", dim)
        self.registry = ModelRegistry(tmp / name / "models")
        self.classes = classes
        self.events: list[tuple[str, dict]] = []
        self.fleet = FleetZoo(_cfg(share, name, fleet), f"retrain-{name}", str(tmp / name),
                              lambda event, **f: self.events.append((event, f)))
        self.fleet._checked = -1e9

    def learn(self, scene: np.ndarray, classes: list[str]) -> HeadMeta:
        head = ClassifierHead(self.zoo.dim, classes)
        meta = HeadMeta(classes, self.zoo.dim, version=self.registry.next_version)
        self.registry.next_version += 1
        self.zoo.add(head, meta, scene, ["cam"], labels_seen=40)
        self.fleet.publish(self.zoo, head, meta, "vision", 40)
        return meta

    def sync(self) -> int:
        self.fleet._checked = -1e9
        return self.fleet.sync({"vision": (self.zoo, self.registry, self.classes)})


def _scene(seed: int, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(32, dim)).astype(np.float32) + 3 * np.eye(dim, dtype=np.float32)[seed % dim]


@pytest.fixture(params=["folder", "redis"])
def share(request, tmp_path: Path):
    if request.param == "folder":
        yield str(tmp_path / "shared")
        return
    server = Redis()
    server.start()
    yield server.url("fleet:zoo")
    server.close()


def test_a_specialist_learned_by_one_camera_is_recalled_by_another(share: str, tmp_path: Path) -> None:
    a = Camera(tmp_path, "cam-a", share, ["car", "person"])
    b = Camera(tmp_path, "cam-b", share, ["car", "person", "bike"])
    b.learn(_scene(1), ["car", "person"])  # b's own first version
    meta = a.learn(_scene(2), ["car", "person"])
    assert a.sync() == 1 and b.sync() == 1 and b.sync() == 0  # each the other's, once
    assert [e.origin for e in a.zoo.entries] == ["", "cam-b"]  # never its own back
    entry = b.zoo.from_origin("cam-a", meta.version)
    assert entry is not None and entry.version == 2 and b.registry.next_version == 3
    assert b.zoo.match(_scene(2)[:16])[0][0] == entry.version  # the scene finds it
    head, got = b.zoo.open_head(entry.version)
    assert got.version == 2 and got.extra["origin"] == "cam-a" and head.classes == ["car", "person"]
    assert b.events == [("fleet_import", {"modality": "vision", "version": 2, "origin": "cam-a", "origin_version": 1})]
    # a restarted b reads the whole share again: nothing is imported twice
    b2 = Camera(tmp_path, "cam-b", share, ["car", "person", "bike"])
    assert b2.sync() == 0 and len(b2.zoo) == 2


def test_what_does_not_fit_is_refused_counted_and_said(share: str, tmp_path: Path, caplog) -> None:
    other_fleet = Camera(tmp_path, "harbour-1", share, None, fleet="harbour")
    other_dim = Camera(tmp_path, "cam-wide", share, None, dim=DIM * 2)
    other_classes = Camera(tmp_path, "cam-zoo", share, None)
    other_fleet.learn(_scene(3), ["car", "person"])
    other_dim.learn(_scene(4, DIM * 2), ["car", "person"])
    other_classes.learn(_scene(5), ["zebra", "car"])
    other_classes.fleet.share.publish("garbage", b"not a specialist at all")
    me = Camera(tmp_path, "cam-me", share, ["car", "person"])
    with caplog.at_level("WARNING"):
        assert me.sync() == 0
    text = caplog.text
    assert "from fleet 'harbour', this pipeline is in fleet 'city'" in text
    assert f"{DIM * 2}-d embeddings, this pipeline's encoder gives {DIM}-d" in text
    assert "classes this pipeline does not know: ['zebra']" in text
    assert "garbage" in text and me.fleet.refusals == 4 and len(me.zoo) == 0


def test_entries_wait_for_a_zoo_and_a_share_that_is_down_is_retried(tmp_path: Path) -> None:
    server = Redis()
    server.start()
    try:
        a = Camera(tmp_path, "cam-a", server.url("fleet:zoo"), None)
        a.learn(_scene(6), ["car", "person"])
        b_fleet = FleetZoo(_cfg(server.url("fleet:zoo"), "cam-b"), "retrain", str(tmp_path / "b"), lambda *a, **k: None)
        b_fleet._checked = -1e9
        registry = ModelRegistry(tmp_path / "b" / "models")
        assert b_fleet.sync({"vision": (None, registry, None)}) == 0  # no head yet: it waits
        assert len(b_fleet.waiting) == 1
        server.stop()
        b_fleet._checked = -1e9
        assert b_fleet.sync({"vision": (None, registry, None)}) == 0  # unavailable: logged, no raise
        server.start()
        zoo = SpecialistZoo(tmp_path / "b" / "zoo", "vision", DIM)
        b_fleet._checked = -1e9
        assert b_fleet.sync({"vision": (zoo, registry, ["car", "person"])}) == 1
    finally:
        server.close()


def test_the_router_serves_a_fleet_specialist_only_after_local_labels_agree(tmp_path: Path) -> None:
    """Infer's router: an imported entry needs zoo.fleet_check_labels local labels, and to be
    no worse than the serving head on them."""
    import torch

    from remembrall.models.serving import HeadServer
    from remembrall.stages.recall import ZooRouter

    cfg = load_config(None, {"zoo.path": str(tmp_path / "zoo"), "zoo.fleet_check_labels": 4})
    zoo = SpecialistZoo(tmp_path / "zoo", "vision", DIM)
    good = ClassifierHead(DIM, ["a", "b"])
    with torch.no_grad():  # class a on dimension 0, class b on dimension 1
        good.net.weight.zero_()
        good.net.bias.zero_()
        good.net.weight[0, 0] = good.net.weight[1, 1] = 5.0
    zoo.add(good, HeadMeta(["a", "b"], DIM, version=7), _scene(0), [], key=_scene(0)[:8], origin="cam-a",
            origin_version=3)
    heads = HeadServer(torch.device("cpu"), {"vision": DIM})
    router = ZooRouter(cfg, str(tmp_path), {"vision": DIM}, heads, "infer")
    x = np.zeros((2, DIM), np.float32)
    x[0, 0] = x[1, 1] = 1.0
    router.items["vision"] = 100
    assert not router._no_worse_on_new_labels("vision", 7, None)  # no local label yet
    for _ in range(2):
        router.on_label("vision", x[0], "a")
        router.on_label("vision", x[1], "b")
    router.items["vision"] = 101
    assert router._no_worse_on_new_labels("vision", 7, None)  # right on all 4 local labels
    for _ in range(6):
        router.on_label("vision", x[0], "b")  # this camera calls it otherwise: 2 of the newest 8 right
    assert not router._no_worse_on_new_labels("vision", 7, None)


def test_a_bad_share_url_stops_the_run_before_any_stage(tmp_path: Path) -> None:
    from remembrall.config import ConfigError
    from remembrall.pipeline.graph import build_graph

    cfg = load_config(None, {"zoo.share": "redis://127.0.0.1/0"})
    with pytest.raises(ConfigError, match="zoo.share: .*no stream"):
        build_graph(cfg, tmp_path / "run", tmp_path / "out")


def test_shared_entries_round_trip_and_corrupt_ones_are_refused() -> None:
    from remembrall.learning.fleet import SharedEntryError, decode_shared

    head = ClassifierHead(DIM, ["x", "y"])
    shared = SharedSpecialist.of(head, HeadMeta(["x", "y"], DIM, version=2), _scene(1)[:8], fleet="f",
                                 origin="o", modality="vision")
    data = encode_shared(shared)
    assert decode_shared(data).open_head()[0].classes == ["x", "y"]
    with pytest.raises(SharedEntryError):
        decode_shared(data[: len(data) // 2])
