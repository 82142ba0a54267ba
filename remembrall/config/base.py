"""What every config section is made of: bounded settings, and the error a user can act on."""

from __future__ import annotations

from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A configuration problem, phrased so the user knows which key to fix."""


def setting(default: Any, *, min: float | None = None, max: float | None = None, help: str = "") -> Any:
    """A config field with bounds (checked on load) and a one-line help text."""
    return field(default=default, metadata={"min": min, "max": max, "help": help})


def section(factory: Any) -> Any:
    """A nested section (or list) field: each config gets its own default instance."""
    return field(default_factory=factory)
