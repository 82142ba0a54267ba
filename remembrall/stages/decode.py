"""The decode stage: one process per video source, frames out as zero-copy ``frame`` messages.

Live sources never block: when infer's queue is full the newest frame is dropped and counted
(``reason="backpressure"``) so the stream stays live. File sources block instead, so a file run
loses no frame and is reproducible. A file run that is restarted after a crash resumes after the
last frame it had handed on (progress is checkpointed every second) instead of replaying it all.
"""

from __future__ import annotations

import logging
import time

from remembrall.io.errors import SourceError
from remembrall.io.video import open_source, redact
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message
from remembrall.stages.source import EXIT_BAD_SOURCE, SourceStage, SourceStats

log = logging.getLogger(__name__)


class DecodeStage(SourceStage):
    type = "decode"

    def run(self) -> int:
        src = self.source_config()
        dec = self.cfg.decode
        self.socket("out")
        source_stats = SourceStats(self.name, self.stream)
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
        skip_to = -1 if source.live else self.resume_after()
        if skip_to >= 0:
            log.info("%s: restarted; resuming after frame %d", self.name, skip_to)
        latency = m.LATENCY.labels(self.name, self.stream)
        last_saved, last_index = time.monotonic(), skip_to
        log.info("%s: reading %s (%s)", self.name, redact(src.uri), "live" if source.live else "file")
        error = None
        try:
            t0 = time.perf_counter()
            for frame in source:
                if self.stopping:
                    break
                if frame.index <= skip_to:
                    t0 = time.perf_counter()
                    continue
                fields = {}
                if frame.label is not None:
                    fields["label"] = frame.label
                if frame.id is not None:
                    fields["id"] = frame.id
                msg = Message("frame", stream=self.stream, seq=frame.index, pts=frame.pts, fields=fields,
                              arrays=[frame.image])
                latency.observe(time.perf_counter() - t0)
                self.emit(msg, source.live)
                last_index = frame.index
                now = time.monotonic()
                if not source.live and now - last_saved >= 1.0:
                    self.save_progress(last_index)
                    last_saved = now
                t0 = time.perf_counter()
        except SourceError as exc:
            log.error("%s: source %s failed: %s", self.name, redact(src.uri), exc)
            error = str(exc)
        finally:
            source.close()
        if not source.live:
            self.save_progress(last_index)
            source_stats.connected(False)
        self.send_eos(error)
        log.info("%s: end of stream %s after frame %d", self.name, self.stream, last_index)
        return EXIT_BAD_SOURCE if error else 0
