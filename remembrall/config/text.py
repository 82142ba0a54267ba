"""The ``text`` config section: how text sources read and bound their input, how text is embedded.

Every limit here exists so that one bad producer (a 10 MB line, a binary file, a flood of
POSTs) costs bounded memory and a counted drop, never the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from remembrall.config.base import setting


@dataclass
class TextConfig:
    """Options of text ingestion (sources) and of the text encoder (MiniLM)."""

    #: ``auto``: a line whose first non-blank character is ``{`` is parsed as a JSON object,
    #: anything else is plain text; ``jsonl``: every line must be JSON; ``plain``: never parse.
    format: Literal["auto", "jsonl", "plain"] = "auto"
    #: A line longer than this (bytes, before decoding) is cut here (plain text, ``oversize:
    #: truncate``) or dropped (``reject``, and always for JSON, which cannot be cut). Memory per
    #: source stays bounded by this plus one read chunk whatever the producer sends.
    max_line_bytes: int = setting(1 << 20, min=64, max=1 << 30)
    oversize: Literal["truncate", "reject"] = "truncate"
    #: ``skip``: a line that is not valid UTF-8 is dropped and counted; ``replace``: it is
    #: decoded with U+FFFD replacement characters and still counted.
    invalid_utf8: Literal["skip", "replace"] = "skip"
    #: A line whose share of control characters (other than tab) exceeds this, or that holds a
    #: NUL byte, is binary garbage: dropped and counted.
    binary_threshold: float = setting(0.1, min=0.0, max=1.0)
    strip: bool = True
    #: Follow mode (``live: yes`` on a file): how often to look for new data, rotation and
    #: truncation; where to start reading a file seen for the first time.
    poll_interval_s: float = setting(0.1, min=0.005, max=10.0)
    follow_from: Literal["start", "end"] = "start"
    #: Persist the followed file's offset (in the run directory) so a restarted stage resumes
    #: where it stopped instead of re-reading or skipping; written atomically at most this often.
    checkpoint_interval_s: float = setting(1.0, min=0.05)
    #: Directory sources: glob of the files to read (hidden files and *.tmp/*.part are ignored),
    #: and in live mode how long a new file's size must stay unchanged before it is read.
    dir_glob: str = "*"
    dir_order: Literal["name", "mtime"] = "name"
    dir_settle_s: float = setting(0.5, min=0.0)
    #: ZeroMQ and HTTP sources: the largest message / request body accepted (bigger: ZMQ drops
    #: it before it reaches us, HTTP answers 413), and HTTP's bound on accepted-but-unread bytes
    #: (beyond it a POST gets 503 with Retry-After: backpressure reaches the client).
    max_request_bytes: int = setting(16 << 20, min=1024)
    max_pending_bytes: int = setting(64 << 20, min=1024)
    #: How many bad lines per source are logged with their position (all are counted).
    log_errors: int = setting(20, min=0)
    #: What the text stage does when the next stage is full: ``auto`` drops (counted, reason
    #: backpressure) for live sources and blocks for the others; ``block`` never drops (a
    #: followed log then just falls behind: the file is its own buffer); ``drop`` always drops.
    backpressure: Literal["auto", "block", "drop"] = "auto"
    #: Text encoder (all-MiniLM-L6-v2): truncation length in tokens and encoder batch size. The
    #: device and CPU threads are infer's (``infer.device``, ``infer.threads``).
    max_tokens: int = setting(128, min=8, max=512)
    batch_size: int = setting(64, min=1, max=4096)
