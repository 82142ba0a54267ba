"""When a stage has seen the end of its input: every stream it expects sent end-of-stream, or,
for a stage restarted after its producers finished (they never send it again), its input stayed
idle for ``supervisor.stage_idle_drain_s``. Every stage decides this the same way."""

from __future__ import annotations

import time

from remembrall.pipeline.messages import Message


class StreamEnds:
    """Which streams ended; when a stage may finish (all ended, asked to stop, or idle after a
    restart whose producers already finished)."""

    def __init__(self, streams: list[str], finished: list[str], idle_drain_s: float) -> None:
        self.streams = set(streams)
        self.ended = set(finished)
        self.restarted_late = bool(finished)
        self.idle_drain_s = idle_drain_s
        self.last_input = time.monotonic()

    def seen(self, msg: Message) -> None:
        self.last_input = time.monotonic()
        if msg.stream:
            self.streams.add(msg.stream)
        if msg.kind == "eos":
            self.ended.add(msg.stream)

    def all_ended(self) -> bool:
        if self.streams and self.streams <= self.ended:
            return True
        idle = time.monotonic() - self.last_input
        return self.restarted_late and idle > self.idle_drain_s
