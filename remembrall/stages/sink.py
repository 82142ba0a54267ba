"""The sink stage: predictions out as JSON Lines (a file and/or a ZMQ PUB socket).

It is the end of the graph, so it is where end-to-end latency and sequence gaps (items lost
inside a crashed stage) are measured. The file is opened for append: a restarted sink keeps
what its previous life wrote.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from remembrall.monitoring import metrics as m
from remembrall.pipeline.messages import Message
from remembrall.pipeline.runtime import Stage
from remembrall.pipeline.stream_ends import StreamEnds

log = logging.getLogger(__name__)


def prediction_record(msg: Message) -> dict[str, Any]:
    """The JSON object written for one prediction (documented in the README)."""
    rec: dict[str, Any] = {
        "stream": msg.stream,
        "seq": msg.seq,
        "pts": msg.pts,
        "ts": round(msg.ts, 6),
        "id": msg.get("id"),
        "pred": msg.get("pred"),
        "top": msg.get("top", []),
        "entropy": msg.get("entropy"),
        "model_version": msg.get("model_version"),
    }
    if msg.get("label") is not None:
        rec["label"] = msg.get("label")
    return rec


def prediction_problem(msg: Message, streams: list[str]) -> str | None:
    """Why a ``prediction`` message cannot be written (a drop reason), or None when it can."""
    if msg.stream not in streams:
        return "unknown_stream"
    fields = msg.fields
    if msg.seq < 0 or not isinstance(fields.get("id"), str) or not isinstance(fields.get("top"), list) \
            or not isinstance(fields.get("model_version"), int) or "pred" not in fields:
        return "bad_prediction"
    return None


class SinkStage(Stage):
    type = "sink"

    def run(self) -> int:
        inp = self.socket("in")
        pub = self.socket("pub") if self.has("pub") else None
        path = Path(self.spec.out_dir) / self.cfg.sink.path
        path.parent.mkdir(parents=True, exist_ok=True)
        ends = StreamEnds(self.spec.streams, self.spec.finished_streams, self.cfg.supervisor.stage_idle_drain_s)
        last_seq: dict[str, int] = {}
        unflushed = 0
        # append: a restarted sink keeps what its previous life wrote
        with path.open("a", encoding="utf-8") as fh:
            while True:
                msg = self.recv(inp, 200)
                if msg is None:
                    if unflushed:
                        fh.flush()
                        unflushed = 0
                    if self.stopping or ends.all_ended():
                        break
                    continue
                if msg.kind not in ("eos", "prediction"):
                    m.DROPPED.labels(self.name, msg.stream, "unexpected_kind").inc()
                    continue
                if msg.kind == "prediction":
                    problem = prediction_problem(msg, self.spec.streams)
                    if problem is not None:
                        m.DROPPED.labels(self.name, msg.stream if problem != "unknown_stream" else "", problem).inc()
                        continue
                ends.seen(msg)
                if msg.kind == "eos":
                    if ends.all_ended():
                        break
                    continue
                prev = last_seq.get(msg.stream)
                if prev is not None and msg.seq > prev + 1:
                    m.DROPPED.labels(self.name, msg.stream, "lost").inc(msg.seq - prev - 1)
                last_seq[msg.stream] = max(msg.seq, prev if prev is not None else -1)
                rec = prediction_record(msg)
                line = json.dumps(rec, ensure_ascii=False)
                fh.write(line + "\n")
                unflushed += 1
                if unflushed >= self.cfg.sink.flush_every:
                    fh.flush()
                    unflushed = 0
                if pub is not None:
                    pub.send_string(line, flags=0)
                m.FRAMES.labels(self.name, msg.stream).inc()
                m.E2E_LATENCY.labels(msg.stream).observe(max(0.0, time.time() - msg.ts))
        log.info("%s: wrote predictions to %s", self.name, path)
        return 0
