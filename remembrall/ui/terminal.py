"""``remembrall run`` on a terminal: one live status line per stream under the scrolling logs
(rich's ``Live``): frames, fps, the model version serving it, labels taken, and the UI address.
Off a terminal nothing changes: JSON logs, no status line.

Stage processes write their logs to a pipe the supervisor reads (``Supervisor(stage_output=...)``);
:meth:`StatusLine.print_line` prints them above the status lines, so the two never tear.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.text import Text

from remembrall.ui.learning import LearningLog
from remembrall.ui.overview import MetricsView, total


class StatusLine:
    """The live lines, refreshed every ``period`` seconds from the run's metrics and journal."""

    def __init__(self, streams: dict[str, str], metrics: MetricsView, learning: LearningLog,
                 ui_url: str | None = None, period: float = 1.0, console: Console | None = None) -> None:
        self.streams, self.metrics, self.learning = streams, metrics, learning
        self.ui_url, self.period = ui_url, period
        self.console = console or Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=4, transient=True, redirect_stdout=False,
                         redirect_stderr=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-line", daemon=True)

    def logging_handler(self) -> logging.Handler:
        """A handler that prints the supervisor's own log records above the status lines."""
        return RichHandler(console=self.console, show_path=False, markup=False, rich_tracebacks=False)

    def print_line(self, line: bytes) -> None:
        """A stage's log line, printed above the status lines."""
        self.console.print(Text(line.decode("utf-8", "replace").rstrip("\n")), soft_wrap=True)

    def render(self) -> Group:
        snap, _, _ = self.metrics.snapshots()
        fps = self.metrics.rates("remembrall_frames_total", "stream", stage="sink")
        frames = total(snap, "remembrall_frames_total", "stream", stage="sink")
        labels = total(snap, "remembrall_frames_total", "stream", stage="buffer")
        assert isinstance(frames, dict) and isinstance(labels, dict)
        serving = self.learning.serving()
        lines = []
        for stream, modality in self.streams.items():
            version = serving.get(modality, {}).get("version", 0)
            line = Text.assemble(
                (f"{stream:<12}", "bold"), f" {int(frames.get(stream, 0)):>8} items ",
                (f"{fps.get(stream, 0.0):6.1f} fps", "cyan"), f"  model v{version}",
                f"  labels {int(labels.get(stream, 0))}")
            if self.ui_url:
                line.append(f"  UI {self.ui_url}", style="dim")
            lines.append(line)
        return Group(*lines)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.learning.refresh()
                self.live.update(self.render())
            except Exception as exc:  # noqa: BLE001 - a status line must never end the run
                self.console.print(Text(f"status line: {exc}", style="dim"))

    def start(self) -> StatusLine:
        self.live.start()
        self.live.update(self.render())
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.live.stop()

    def status(self) -> dict[str, Any]:
        return {}
