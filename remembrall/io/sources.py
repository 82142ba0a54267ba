"""What kind of stream a source URI is (video or text), decided in one place for the graph and
for ``fit-base``."""

from __future__ import annotations

import json
from pathlib import Path

from remembrall.config import SourceConfig

_TEXT_SCHEMES = ("zmq+", "http+listen://", "follow://")
_TEXT_SUFFIXES = (".txt", ".log", ".text", ".ndjson")


def detect_modality(src: SourceConfig) -> str:
    """``vision`` or ``text`` for a source, from its config or by looking at the URI/file."""
    if src.modality != "auto":
        return "vision" if src.modality == "video" else src.modality
    uri = src.uri
    if uri == "-" or uri.startswith(_TEXT_SCHEMES):
        return "text"
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    if path.suffix.lower() in _TEXT_SUFFIXES:
        return "text"
    if path.is_dir():
        return "text"
    if path.suffix.lower() == ".jsonl" and path.is_file():
        # a manifest names images; a text stream carries "text"
        with path.open("rb") as fh:
            for raw in fh:
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    first = json.loads(raw[:1 << 20])
                except ValueError:
                    return "text"
                return "vision" if isinstance(first, dict) and "image" in first else "text"
        return "text"
    return "vision"
