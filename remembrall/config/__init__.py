"""Typed, validated pipeline configuration loaded from YAML (the bottom layer: imports nothing
else of the project).

Every section is a dataclass and a typed field of :class:`Config`; loading walks the YAML against
the type hints, so an unknown key, a wrong type or an out-of-range value is a :class:`ConfigError`
that names the file and the dotted key.
"""

from remembrall.config.base import ConfigError, section, setting
from remembrall.config.learning import (
    BufferConfig,
    LabelConfig,
    MemoryConfig,
    RemoteConfig,
    RetrainConfig,
    SelectConfig,
    ZooConfig,
)
from remembrall.config.loading import (
    config_from_plain,
    config_to_dict,
    from_dict,
    is_loopback_host,
    load_config,
    parse_overrides,
)
from remembrall.config.schema import Config
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

__all__ = [
    "RemoteConfig",
    "ServeConfig",
    "MemoryConfig",
    "ZooConfig",
    "BufferConfig", "Config", "ConfigError", "DecodeConfig", "InferConfig", "LabelConfig", "MetricsConfig",
    "RetrainConfig", "SelectConfig", "SinkConfig", "SourceConfig", "SupervisorConfig", "TextConfig",
    "TransportConfig", "UIConfig", "config_from_plain", "config_to_dict", "from_dict", "is_loopback_host",
    "load_config", "parse_overrides",
    "section", "setting",
]
