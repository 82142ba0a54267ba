"""Continual learning on the stream: sampling, replay memory, labelers, training, base update.

Every module is usable in-process (no ZeroMQ): the stages in ``remembrall.stages`` wrap them, and
benchmarks drive them directly. The wire protocol between the stages is in ``PROTOCOL.md``.
"""
