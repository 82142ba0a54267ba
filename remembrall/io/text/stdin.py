"""Standard input as a text source."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator

from remembrall.config import TextConfig
from remembrall.io.text.base import TextItem, TextSource, _never
from remembrall.io.text.lines import TextStats

log = logging.getLogger(__name__)


class StdinSource(TextSource):
    """Standard input (``-``) until EOF; reads with a timeout so a stop request is seen promptly."""

    def __init__(self, text_cfg: TextConfig, stats: TextStats, should_stop: Callable[[], bool] = _never,
                 *, live: bool = False, fd: int | None = None) -> None:
        super().__init__("stdin", text_cfg, stats, should_stop)
        self.live = live
        self.fd = sys.stdin.fileno() if fd is None else fd

    def _items(self) -> Iterator[TextItem]:
        yield from self._read_stream(self.fd, "stdin")
