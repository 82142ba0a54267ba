"""Property-based fuzzing (hypothesis) of what reads untrusted input: the wire decoder, the config
loader, the text line splitter and parser. Whatever comes in, the only way out is a value or the
module's own, documented error — never another exception."""

from __future__ import annotations

import msgpack
import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remembrall.config import Config, ConfigError, TextConfig, from_dict, load_config
from remembrall.io.text.lines import LineError, LineSplitter, Record, parse_line
from remembrall.pipeline.messages import MalformedMessage, Message, decode_message, encode_message

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
                | st.text(max_size=20))  # what msgpack can carry
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


@FUZZ
@given(st.lists(st.binary(max_size=256), min_size=0, max_size=5))
def test_random_frames_decode_or_are_malformed(parts: list[bytes]) -> None:
    try:
        msg = decode_message(parts)
    except MalformedMessage:
        return
    assert isinstance(msg, Message)


header_fields = st.fixed_dictionaries({}, optional={
    "v": json_scalars, "kind": st.sampled_from(["frame", "sample", "label", "eos", "nope"]) | json_scalars,
    "stream": json_scalars, "seq": json_scalars, "pts": json_scalars, "ts": json_scalars,
    "arrays": st.lists(st.fixed_dictionaries({}, optional={
        "dtype": st.sampled_from(["uint8", "float32", "object", "int64"]) | json_scalars,
        "shape": st.lists(st.integers(-2, 70000), max_size=6) | json_scalars}), max_size=3) | json_scalars,
    "fields": json_values,
})


@FUZZ
@given(header_fields, st.lists(st.binary(max_size=512), max_size=3))
def test_plausible_headers_with_wrong_buffers_are_malformed_not_crashes(header: dict, buffers: list[bytes]) -> None:
    parts = [msgpack.packb(header, use_bin_type=True), *buffers]
    try:
        msg = decode_message(parts)
    except MalformedMessage:
        return
    for arr in msg.arrays:  # what does decode is a real, bounded numpy array
        assert isinstance(arr, np.ndarray) and arr.dtype != object


@FUZZ
@given(st.sampled_from(["frame", "sample", "label", "prediction"]), st.text(max_size=30), st.integers(0, 2**40),
       st.lists(st.sampled_from([np.uint8, np.float32, np.int64]), max_size=3))
def test_what_we_encode_decodes_to_itself(kind: str, stream: str, seq: int, dtypes: list) -> None:
    arrays = [np.arange(6, dtype=d).reshape(2, 3) for d in dtypes]
    msg = decode_message(encode_message(Message(kind, stream=stream, seq=seq, arrays=arrays)))
    assert (msg.kind, msg.stream, msg.seq) == (kind, stream, seq)
    assert all(np.array_equal(a, b) for a, b in zip(msg.arrays, arrays, strict=True))


config_like = st.dictionaries(
    st.sampled_from(["sources", "decode", "infer", "label", "buffer", "retrain", "memory", "zoo", "ui", "text",
                     "learn", "out", "log_level", "unknown"]),
    json_values | st.dictionaries(st.sampled_from(["width", "batch_size", "port", "rate", "capacity", "host",
                                                   "uri", "classes", "enabled", "x"]), json_values, max_size=4),
    max_size=5)


@FUZZ
@given(config_like)
def test_any_config_mapping_loads_or_is_a_config_error(data: dict) -> None:
    try:
        cfg = from_dict(Config, data)
    except ConfigError:
        return
    assert isinstance(cfg, Config)


@FUZZ
@given(st.text(max_size=300))
def test_any_yaml_text_loads_or_is_a_config_error(text: str) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(path)
        except ConfigError:
            return
        except yaml.YAMLError as exc:  # pragma: no cover - the loader must wrap these
            raise AssertionError(f"a YAML error escaped: {exc}") from None


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=8), st.integers(1, 64))
def test_line_splitting_keeps_every_byte_or_counts_the_cut(chunks: list[bytes], limit: int) -> None:
    splitter = LineSplitter(limit)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    for line, overflow, _end in lines:
        assert len(line) <= limit and b"\n" not in line
        assert overflow or len(line) < limit + 1
    assert splitter.pending <= sum(map(len, chunks))


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
       st.booleans(), st.booleans())
def test_any_line_parses_to_a_record_an_error_or_nothing(raw: bytes, overflow: bool, allow_eos: bool) -> None:
    out = parse_line(raw, overflow, TextConfig(), allow_eos=allow_eos)
    assert out is None or isinstance(out, (Record, LineError)) or type(out).__name__ == "_Eos"
    if isinstance(out, Record):
        assert isinstance(out.text, str) and out.text
