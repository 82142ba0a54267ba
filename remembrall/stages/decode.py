"""The decode stage: one process per video source, frames out as zero-copy ``frame`` messages.

Live sources never block: when infer's queue is full the newest frame is dropped and counted
(``reason="backpressure"``) so the stream stays live. File sources block instead, so a file run
loses no frame and is reproducible. A file run that is restarted after a crash resumes after the
last frame it had handed on (progress is checkpointed every second) instead of replaying it all.
"""

from __future__ import annotations

import logging

from remembrall.io.errors import SourceError
from remembrall.io.video import VideoFrame, open_source, redact
from remembrall.pipeline.messages import Message
from remembrall.pipeline.runtime import EXIT_BAD_SOURCE
from remembrall.priority import set_cpu_priority
from remembrall.stages.source import MetricsSourceStats, SourceStage

log = logging.getLogger(__name__)


class DecodeStage(SourceStage):
    type = "decode"

    def run(self) -> int:
        src = self.source_config()
        dec = self.cfg.decode
        if dec.cpu_priority != "normal":
            log.info("%s: decoding at %s CPU priority", self.name, set_cpu_priority(dec.cpu_priority))
        self.socket("out")
        source_stats = MetricsSourceStats(self.name, self.stream)
        try:
            source = open_source(
                src, dec.width, dec.height, threads=dec.threads, stats=source_stats,
                should_stop=lambda: self.stopping, max_decode_errors=dec.max_decode_errors,
            )
        except SourceError as exc:
            log.error("%s: cannot read source %s: %s", self.name, redact(src.uri), exc)
            self.send_eos(error=str(exc))
            return EXIT_BAD_SOURCE
        if not source.live:
            source_stats.connected(True)  # a file is "connected" while it delivers; live sources report themselves
        log.info("%s: reading %s (%s)", self.name, redact(src.uri), "live" if source.live else "file")
        try:
            last_index, _, failure = self.pump(source, self._frame_message, live=source.live,
                                               resumable=not source.live, failures=(SourceError,))
        finally:
            source.close()
        if not source.live:
            source_stats.connected(False)
        error = str(failure) if failure else None
        if error:
            log.error("%s: source %s failed: %s", self.name, redact(src.uri), error)
        self.send_eos(error)
        log.info("%s: end of stream %s after frame %d", self.name, self.stream, last_index)
        return EXIT_BAD_SOURCE if error else 0

    def _frame_message(self, frame: VideoFrame) -> Message:
        fields = {}
        if frame.label is not None:
            fields["label"] = frame.label
        if frame.id is not None:
            fields["id"] = frame.id
        return Message("frame", stream=self.stream, seq=frame.index, pts=frame.pts, fields=fields,
                       arrays=[frame.image])
