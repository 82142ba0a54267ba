"""The text source stage: one process per text stream, each record out as a ``text`` message.

Text enters the same graph as frames at "decode": this stage reads and validates lines (see
:mod:`remembrall.io.text`) and hands each record to infer, which embeds it with MiniLM
instead of running the vision backbone. Bad lines are counted into
``remembrall_frames_dropped_total{reason=invalid_utf8|malformed_json|bad_record|oversized|binary}``
with their position in the log. Finite sources block on backpressure (nothing lost, and a
restarted file run resumes after the last record it handed on); live ones drop the newest
record (``reason="backpressure"``) unless ``text.backpressure`` says otherwise. A followed file
keeps its own byte offset in the run directory, so a restart resumes mid-file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from remembrall.io.text import (
    DirectorySource,
    MqttSource,
    RedisStreamSource,
    TextFileSource,
    TextItem,
    TextSourceError,
    open_text_source,
)
from remembrall.io.text.lines import TextStats
from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message
from remembrall.pipeline.runtime import EXIT_BAD_SOURCE
from remembrall.stages.source import MetricsSourceStats, SourceStage

log = logging.getLogger(__name__)


class TextDecodeStage(SourceStage):
    type = "text_decode"

    def run(self) -> int:
        src = self.source_config()
        tcfg = self.cfg.text
        self.socket("out")
        stream = self.stream
        stats = TextStats(tcfg.log_errors, on_drop=lambda reason: m.DROPPED.labels(self.name, stream, reason).inc())
        connected = m.SOURCE_CONNECTED.labels(self.name, stream)
        try:
            source = open_text_source(
                src, tcfg, stats, lambda: self.stopping, allow_remote=self.cfg.transport.allow_remote,
                state_dir=os.path.join(self.spec.run_dir, "text-state") if self.spec.run_dir else None,
                on_connection=self._broker_connection(stream),
            )
        except TextSourceError as exc:
            log.error("%s: cannot read text source %s: %s", self.name, src.uri, exc)
            self.send_eos(error=str(exc))
            return EXIT_BAD_SOURCE
        live = source.live if tcfg.backpressure == "auto" else tcfg.backpressure == "drop"
        if live and isinstance(source, RedisStreamSource):  # a dropped entry would stay pending for ever
            log.warning("%s: text.backpressure=drop ignored: %s delivers at least once", self.name, src.uri)
            live = False
        # A finite file or directory snapshot reads the same records again after a crash: skip
        # those already handed on. A followed file resumes by its own byte offset; anything else
        # (stdin, sockets, brokers) cannot be re-read: a restarted life numbers after the last.
        resumable = isinstance(source, (TextFileSource, DirectorySource)) and not source.follows
        if not isinstance(source, (MqttSource, RedisStreamSource)):
            connected.set(1)  # broker sources report their connection themselves
        log.info("%s: reading %s (%s, %s on backpressure)", self.name, src.uri,
                 "follow" if source.follows else "until end of input", "drop" if live else "block")
        try:
            _, sent, failure = self.pump(source, self._text_message, live=live, resumable=resumable,
                                         failures=(TextSourceError, OSError), on_acked=source.acknowledge)
        finally:
            source.close()
            connected.set(0)
        error = str(failure) if failure else None
        if error:
            log.error("%s: text source %s failed: %s", self.name, src.uri, error)
        summary = stats.as_dict()
        log.info("%s: end of stream %s: %d records sent, %d lines read, %d blank, %d truncated, dropped %s",
                 self.name, stream, sent, summary["lines"], summary["empty"], summary["truncated"],
                 summary["dropped"] or "none")
        self.send_eos(error)
        return EXIT_BAD_SOURCE if error else 0

    def _broker_connection(self, stream: str) -> Callable[[bool], None]:
        """A broker source's connection as metrics: up or down, and each return after a loss."""
        metrics = MetricsSourceStats(self.name, stream)
        state = {"up": False, "ever": False}

        def report(up: bool) -> None:
            if up and not state["up"] and state["ever"]:
                metrics.reconnect()
            state["up"], state["ever"] = up, state["ever"] or up
            metrics.connected(up)

        return report

    def _text_message(self, item: TextItem) -> Message:
        fields: dict[str, object] = {"text": item.text, "id": item.id, "position": item.position}
        if item.label is not None:
            fields["label"] = item.label
        if item.ts != item.ingest_ts:
            fields["event_ts"] = item.ts
        if item.redelivered:
            fields["redelivered"] = True
        return Message("text", stream=self.stream, seq=item.index, ts=item.ingest_ts, fields=fields)
