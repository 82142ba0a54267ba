"""The whole configuration: one typed field per section, so every setting the code reads is a
key a YAML file and ``--set`` can reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from remembrall.config.base import section
from remembrall.config.learning import (
    BufferConfig,
    LabelConfig,
    MemoryConfig,
    RemoteConfig,
    RetrainConfig,
    SelectConfig,
    ZooConfig,
)
from remembrall.config.sections import (
    DecodeConfig,
    InferConfig,
    MetricsConfig,
    ServeConfig,
    SinkConfig,
    SourceConfig,
    SupervisorConfig,
    TransportConfig,
    UIConfig,
)
from remembrall.config.text import TextConfig


@dataclass
class Config:
    sources: list[SourceConfig] = section(lambda: [SourceConfig()])
    decode: DecodeConfig = section(DecodeConfig)
    infer: InferConfig = section(InferConfig)
    sink: SinkConfig = section(SinkConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    ui: UIConfig = section(UIConfig)
    transport: TransportConfig = section(TransportConfig)
    supervisor: SupervisorConfig = section(SupervisorConfig)
    #: Run the learning loop (select → label → buffer → retrain → hot-swap).
    learn: bool = False
    select: SelectConfig = section(SelectConfig)
    label: LabelConfig = section(LabelConfig)
    buffer: BufferConfig = section(BufferConfig)
    retrain: RetrainConfig = section(RetrainConfig)
    #: Episodic memory and specialist zoo (learning runs only).
    memory: MemoryConfig = section(MemoryConfig)
    zoo: ZooConfig = section(ZooConfig)
    #: Text sources and the text encoder.
    text: TextConfig = section(TextConfig)
    #: Keys and name for ``label.remote`` / ``retrain.remote`` (a ``remembrall serve`` server).
    remote: RemoteConfig = section(RemoteConfig)
    #: ``remembrall serve``: labels and training for pipelines with ``label.remote`` / ``retrain.remote``.
    serve: ServeConfig = section(ServeConfig)
    run_dir: str | None = None
    out: str = "out"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
