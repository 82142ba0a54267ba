"""The wire format and endpoint strings: what a stage accepts and what it refuses."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from remembrall.io.endpoints import EndpointError, open_socket, parse_endpoint
from remembrall.pipeline.messages import MalformedMessage, Message, decode_message, encode_message


def test_roundtrip_keeps_arrays_and_fields():
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((2, 2, 3), np.uint8)]
    msg = Message("sample", stream="s", seq=7, pts=1.5, fields={"label": "cat", "entropy": 0.5}, arrays=arrays)
    back = decode_message(encode_message(msg))
    assert (back.kind, back.stream, back.seq, back.pts) == ("sample", "s", 7, 1.5)
    assert back.fields == {"label": "cat", "entropy": 0.5}
    np.testing.assert_array_equal(back.arrays[0], arrays[0])
    assert back.arrays[1].shape == (2, 2, 3)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"\xc1garbage"], "bad_header"),
        ([msgpack.packb([1, 2, 3])], "bad_header"),
        ([msgpack.packb({"v": 2, "kind": "frame"})], "bad_version"),
        ([msgpack.packb({"v": 1, "kind": "exec"})], "bad_kind"),
        ([msgpack.packb({"v": 1, "kind": "frame", "seq": -1})], "bad_header"),
        ([msgpack.packb({"v": 1, "kind": "frame", "arrays": [{"dtype": "uint8", "shape": [4]}]})], "bad_parts"),
        ([msgpack.packb({"v": 1, "kind": "frame", "arrays": [{"dtype": "O", "shape": [1]}]}), b"x"], "bad_dtype"),
        ([msgpack.packb({"v": 1, "kind": "frame", "arrays": [{"dtype": "uint8", "shape": [2, -1]}]}), b"xx"], "bad_shape"),
        ([msgpack.packb({"v": 1, "kind": "frame", "arrays": [{"dtype": "uint8", "shape": [4]}]}), b"xyz"], "bad_size"),
        ([msgpack.packb({"v": 1, "kind": "frame", "arrays": [{"dtype": "uint8", "shape": [1 << 20, 1 << 20]}]}), b""], "bad_size"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(parts, reason):
    with pytest.raises(MalformedMessage) as info:
        decode_message(parts)
    assert info.value.reason == reason


def test_header_cannot_smuggle_binary_or_ext_types():
    header = msgpack.packb({"v": 1, "kind": "frame", "blob": msgpack.ExtType(1, b"x")})
    with pytest.raises(MalformedMessage):
        decode_message([header])


@pytest.mark.parametrize("text", ["nonsense", "push:foo://x", "shout+bind:ipc:///x", "push+sideways:tcp://127.0.0.1:1"])
def test_bad_endpoints_are_refused(text):
    with pytest.raises(EndpointError):
        parse_endpoint(text)


def test_non_loopback_tcp_bind_needs_opt_in():
    ctx = zmq.Context()
    try:
        with pytest.raises(EndpointError, match="allow_remote"):
            open_socket(ctx, "pull+bind:tcp://0.0.0.0:0")
        sock = open_socket(ctx, "pull+bind:tcp://127.0.0.1:0")
        sock.close(0)
    finally:
        ctx.term()


def test_oversized_message_never_reaches_the_receiver(tmp_path):
    ctx = zmq.Context()
    addr = f"ipc://{tmp_path}/s"
    pull = open_socket(ctx, f"pull+bind:{addr}", max_message_bytes=1000, linger_ms=0)
    push = open_socket(ctx, f"push+connect:{addr}", linger_ms=0)
    try:
        push.send(b"x" * 5000)
        assert not pull.poll(500)
        push2 = open_socket(ctx, f"push+connect:{addr}", linger_ms=0)
        push2.send_multipart(encode_message(Message("eos", stream="s")))
        assert pull.poll(2000)
        assert decode_message(pull.recv_multipart()).kind == "eos"
        push2.close()
    finally:
        push.close()
        pull.close()
        ctx.term()
