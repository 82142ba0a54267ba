"""Errors raised by input sources."""

from __future__ import annotations


class SourceError(Exception):
    """A source that cannot be opened or read at all (missing path, not a video, unknown scheme,
    server that never came back). The message says what is wrong and what to do about it."""
