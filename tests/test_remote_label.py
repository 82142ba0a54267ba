"""A label server shared by several pipelines over CURVE tcp on loopback: real ZeroMQ sockets,
real key files, a real ZAP handler; wrong keys refused and counted; a server that goes away and
comes back is caught up with; answers for a pipeline that was away wait for it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from remembrall.config import ConfigError, load_config
from remembrall.io.curve import CurveKeyError, generate_keys, load_keys
from remembrall.learning.labelers import Labelled, LabelRequest
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message
from remembrall.stages.fleet_server import FleetServer
from remembrall.stages.remote_labeler import RemoteLabeler
from tests.broker_servers import free_port
from tests.remote_servers import Server, value


def client(keys: Path, port: int, name: str, ctx: zmq.Context, secret: str | None = None,
           server_key: str = "teacher", **label: object) -> RemoteLabeler:
    cfg = load_config(None, {"learn": True, "label.labeler": "remote", "label.remote": f"tcp://127.0.0.1:{port}",
                             "remote.server_key": str(keys / f"{server_key}.key"),
                             "remote.client_key": str(keys / f"{secret or name}.key_secret"),
                             "remote.name": name, **{f"remote.{k}": v for k, v in label.items()}})
    return RemoteLabeler(cfg, ctx, f"label-{name}")


def request(sid: str, label: str) -> LabelRequest:
    """A selected sample as the label stage hands it to a labeler (slim payload, pixels apart)."""
    payload = Message("sample", stream="cam0", seq=1, fields={"id": sid, "label": label, "entropy": 0.5},
                      arrays=[np.ones(8, np.float32), np.full(3, 1 / 3, np.float32)])
    return LabelRequest(sid, image=np.zeros((8, 8, 3), np.uint8), label=label, payload=payload)


def collect(labeler: RemoteLabeler, want: int, timeout: float = 20.0) -> list[Labelled]:
    out: list[Labelled] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        labeler.socket.poll(50)
        out += labeler.poll()
    return out


def test_two_pipelines_share_one_server_and_each_gets_its_own_answers(keys: Path, tmp_path: Path) -> None:
    port = free_port()
    server = Server(keys, port, tmp_path)
    ctx = zmq.Context()
    a, b = client(keys, port, "cam-a", ctx), client(keys, port, "cam-b", ctx)
    try:
        for i in range(20):  # the same sample ids from both cameras: answers must not cross
            a.submit(request(f"cam0:{i}", f"a{i % 3}"))
            b.submit(request(f"cam0:{i}", f"b{i % 2}"))
        got_a, got_b = collect(a, 20), collect(b, 20)
        assert sorted((x.request.id, x.label) for x in got_a) == sorted((f"cam0:{i}", f"a{i % 3}") for i in range(20))
        assert sorted((x.request.id, x.label) for x in got_b) == sorted((f"cam0:{i}", f"b{i % 2}") for i in range(20))
        assert {x.source for x in got_a} == {"oracle"}  # the server's labeler is named in each answer
        assert not a.pending and not b.pending and a.up and b.up
        assert value(m.LABEL_SERVER_REQUESTS, "cam-a/label", "labelled") >= 20
    finally:
        a.close(), b.close()
        server.stop()
        ctx.term()


def test_wrong_keys_are_refused_and_counted(keys: Path, tmp_path: Path) -> None:
    port = free_port()
    server = Server(keys, port, tmp_path)
    ctx = zmq.Context()
    refused_before = value(m.CURVE_REFUSED, "unknown_key")
    handshake_before = value(m.CURVE_REFUSED, "handshake")
    stranger = client(keys, port, "cam-s", ctx, secret="stranger")  # its key is not allowed
    fooled = client(keys, port, "cam-a", ctx, server_key="impostor")  # expects another server's key
    try:
        stranger.submit(request("x:1", "cat"))
        fooled.submit(request("x:1", "cat"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (stranger.link.watch.failures and fooled.link.watch.failures
                                                   and value(m.CURVE_REFUSED, "handshake") > handshake_before):
            stranger.poll(), fooled.poll()
            time.sleep(0.05)
        assert stranger.link.watch.state.startswith("refused: the server does not allow this key")
        assert "wrong server key" in fooled.link.watch.state
        assert server.server.gate is not None and server.server.gate.refused >= 1
        assert value(m.CURVE_REFUSED, "unknown_key") > refused_before
        assert value(m.CURVE_REFUSED, "handshake") > handshake_before
        assert stranger.pending and fooled.pending and not stranger.up  # nothing answered, nothing lost
        assert server.server.clients == {}  # neither reached the server's queues
    finally:
        stranger.close(), fooled.close()
        server.stop()
        ctx.term()


def test_server_gone_then_back_catches_up(keys: Path, tmp_path: Path) -> None:
    port = free_port()
    ctx = zmq.Context()
    cam = client(keys, port, "cam-a", ctx, timeout_s=2.0)
    server = None
    try:
        for i in range(10):  # no server yet: everything waits at the edge
            cam.submit(request(f"s:{i}", "cat"))
        assert collect(cam, 1, timeout=1.0) == [] and len(cam.pending) == 10
        server = Server(keys, port, tmp_path)
        assert len(collect(cam, 10)) == 10 and not cam.pending
        server.stop()  # the server goes away with requests in flight
        server = None
        for i in range(10, 20):
            cam.submit(request(f"s:{i}", "dog"))
        time.sleep(0.3)
        cam.poll()
        assert len(cam.pending) == 10
        server = Server(keys, port, tmp_path)  # a new life: the edge sends again what it never answered
        got = collect(cam, 10, timeout=30)
        assert sorted(x.request.id for x in got) == sorted(f"s:{i}" for i in range(10, 20))
        assert {x.label for x in got} == {"dog"} and not cam.pending
    finally:
        cam.close()
        if server is not None:
            server.stop()
        ctx.term()


def test_a_full_queue_answers_busy_and_the_edge_retries(keys: Path, tmp_path: Path) -> None:
    port = free_port()
    server = Server(keys, port, tmp_path, queue=2)
    ctx = zmq.Context()
    cam = client(keys, port, "cam-a", ctx)
    try:
        for i in range(8):
            cam.submit(request(f"q:{i}", "cat"))
        got = collect(cam, 8, timeout=40)
        assert sorted(x.request.id for x in got) == sorted(f"q:{i}" for i in range(8))
        assert value(m.LABEL_SERVER_REQUESTS, "cam-a/label", "busy") > 0
    finally:
        cam.close()
        server.stop()
        ctx.term()


def exported_at_server(cam: RemoteLabeler, tmp: Path) -> dict:
    """The sample a server's external labeler exported for people (its JSON), once it is there."""
    exported = tmp / "server" / "external" / "samples"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not list(exported.glob("*.json")):
        cam.poll()
        time.sleep(0.05)
    return json.loads(next(exported.glob("*.json")).read_text())


def test_answers_wait_for_a_pipeline_that_was_away(keys: Path, tmp_path: Path) -> None:
    """A human at the server labels while the edge's label stage is restarting: the answer
    reaches its next life, which has no memory of the request and still gets a whole sample."""
    port = free_port()
    server = Server(keys, port, tmp_path, labeler="external")
    ctx = zmq.Context()
    cam = client(keys, port, "cam-a", ctx)
    try:
        cam.submit(request("cam0:7", "ignored"))
        meta = exported_at_server(cam, tmp_path)
        assert meta["id"] == "cam-a/label/cam0:7"  # fleet-unique at the server
        cam.close()  # the edge's label stage dies
        (tmp_path / "server" / "external" / "labels" / "a.json").write_text(json.dumps({"id": meta["id"], "label": "owl"}))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not server.server.clients[b"cam-a/label"].held:
            time.sleep(0.05)
        assert server.server.clients[b"cam-a/label"].held  # kept for it
        cam = client(keys, port, "cam-a", ctx)  # its next life
        got = collect(cam, 1)
        assert [(x.request.id, x.label, x.source) for x in got] == [("cam0:7", "owl", "external")]
        sample = got[0].request.payload
        assert sample.kind == "sample" and sample.arrays[0].shape == (8,) and sample.get("label") is None
    finally:
        cam.close()
        server.stop()
        ctx.term()


def test_garbage_from_an_allowed_peer_is_counted_not_fatal(keys: Path, tmp_path: Path) -> None:
    port = free_port()
    server = Server(keys, port, tmp_path)
    ctx = zmq.Context()
    cam = client(keys, port, "cam-b", ctx)
    try:
        before = value(m.LABEL_SERVER_REQUESTS, "cam-b/label", "malformed")
        nameless = value(m.LABEL_SERVER_REQUESTS, "", "malformed")
        cam.socket.send_multipart([b"no name frame"])  # not even a pipeline's name
        for junk in ([b"\xff\x00garbage"], [b"\x81\xa1v\x01", b"x"], [b""]):
            assert cam.link.send(junk)
        bad = Message("sample", fields={"id": "g:1"}, arrays=[np.zeros(4, np.float32)])  # all-zero embedding
        from remembrall.pipeline.remote import encode_once

        assert cam.link.send(encode_once(bad))
        cam.submit(request("g:2", "cat"))  # the server still serves
        assert [x.label for x in collect(cam, 1)] == ["cat"]
        assert value(m.LABEL_SERVER_REQUESTS, "cam-b/label", "malformed") >= before + 4
        assert value(m.LABEL_SERVER_REQUESTS, "", "malformed") >= nameless + 1
    finally:
        cam.close()
        server.stop()
        ctx.term()


def test_config_and_key_errors_say_what_to_do(keys: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="remote.server_key"):
        load_config(None, {"learn": True, "label.labeler": "remote", "label.remote": "tcp://10.0.0.1:5557"})
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        load_config(None, {"learn": True, "label.labeler": "remote"})
    with pytest.raises(ConfigError, match="serve.secret_key"):
        FleetServer(load_config(None, {"serve.bind": "tcp://127.0.0.1:0", "label.labeler": "oracle"}), tmp_path)
    with pytest.raises(CurveKeyError, match="NAME.key_secret"):
        load_keys(keys / "teacher.key", secret=True)
    (tmp_path / "bad.key").write_text("not a certificate")
    with pytest.raises(CurveKeyError, match="public key|certificate"):
        load_keys(tmp_path / "bad.key", secret=False)
    with pytest.raises(CurveKeyError, match="exists"):
        generate_keys(keys, "teacher")


def test_a_name_cannot_be_taken_over_with_another_allowed_key(keys: Path, tmp_path: Path) -> None:
    """cam-b holds an allowed key, but cam-a's name belongs to cam-a's key: nothing of cam-a's
    reaches cam-b, and cam-a is served again once cam-b lets go of the name."""
    port = free_port()
    server = Server(keys, port, tmp_path, labeler="external")
    ctx = zmq.Context()
    owner = client(keys, port, "cam-a", ctx)
    try:
        owner.submit(request("cam0:1", "x"))
        exported_at_server(owner, tmp_path)
        owner.close()  # away; a human answers meanwhile
        (tmp_path / "server" / "external" / "labels" / "a.json").write_text(
            json.dumps({"id": "cam-a/label/cam0:1", "label": "owl"}))
        impostor = client(keys, port, "cam-a", ctx, secret="cam-b")
        before = value(m.LABEL_SERVER_REQUESTS, "cam-a/label", "impostor")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and value(m.LABEL_SERVER_REQUESTS, "cam-a/label", "impostor") == before:
            assert impostor.poll() == []  # the held answer never goes to it
            time.sleep(0.05)
        assert value(m.LABEL_SERVER_REQUESTS, "cam-a/label", "impostor") > before
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not server.server.clients[b"cam-a/label"].held:
            assert impostor.poll() == []
            time.sleep(0.05)
        assert server.server.clients[b"cam-a/label"].held  # made while cam-a was away: kept for it
        time.sleep(0.3)
        assert impostor.poll() == []
        impostor.close()
        owner = client(keys, port, "cam-a", ctx)  # the name's own key: the answer is there
        assert [(x.request.id, x.label) for x in collect(owner, 1)] == [("cam0:1", "owl")]
    finally:
        owner.close()
        server.stop()
        ctx.term()
